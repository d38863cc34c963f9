//! Pure parsers: bytes in, typed structures (or a typed error) out.
//!
//! Nothing in this module opens a file. Every structure is a `binrw` type with
//! its endianness and signature on the type; checksum rules sit next to it.
//! Every length, count and offset taken from a file is checked against the
//! bytes available and the specification's limits before anything is
//! allocated for it, so a hostile header cannot make us allocate gigabytes.
//!
//! May import: its own folders and the parsing crates; nothing else of
//! vhdkit, so every layer above can use it.

pub mod bits;
mod error;
mod guid;
mod structure;
pub mod vhd;
pub mod vhdx;

pub use error::{FormatError, Result};
#[cfg(feature = "fuzzing")]
pub use guid::testing as guid_testing;
pub use guid::{Guid, ParseGuidError};
pub use structure::Structure;

/// Returns `bytes[start..start + len]`, or a `Truncated` error naming the
/// structure and the absolute offset (`base + start`).
pub(crate) fn slice_at<'a>(
    bytes: &'a [u8],
    start: usize,
    len: usize,
    structure: &'static str,
    base: u64,
) -> Result<&'a [u8]> {
    start.checked_add(len).and_then(|end| bytes.get(start..end)).ok_or(FormatError::Truncated {
        structure,
        offset: base.saturating_add(start as u64),
        needed: len as u64,
        available: bytes.len().saturating_sub(start) as u64,
    })
}

/// Decodes a UTF-16 string from `bytes`, stopping at the first NUL.
/// Unpaired surrogates become U+FFFD rather than an error: names are hints.
pub(crate) fn utf16_until_nul(bytes: &[u8], big_endian: bool) -> String {
    let units = bytes.chunks_exact(2).map(|c| {
        let pair = [c[0], c[1]];
        if big_endian { u16::from_be_bytes(pair) } else { u16::from_le_bytes(pair) }
    });
    let units: Vec<u16> = units.take_while(|&u| u != 0).collect();
    String::from_utf16_lossy(&units)
}
