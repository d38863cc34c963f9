//! The contract every fixed-size on-disk structure meets.

use std::io::Cursor;

use binrw::meta::{ReadEndian, WriteEndian};
use binrw::{BinRead, BinWrite};

use super::{FormatError, Result};

/// A fixed-size on-disk structure declared with `binrw`.
///
/// `decode` checks the length and the signature and maps binrw's errors to
/// [`FormatError`] with absolute offsets; field-level rules (limits, valid
/// enum values) live in each type's own `validate`-style methods, and
/// checksums in each module's `verify_checksum`, because callers choose how
/// strict to be about checksums but never about layout.
pub trait Structure:
    Sized + for<'a> BinRead<Args<'a> = ()> + for<'a> BinWrite<Args<'a> = ()> + ReadEndian + WriteEndian
{
    /// Human-readable name used in errors ("VHD footer").
    const NAME: &'static str;
    /// Encoded size in bytes.
    const SIZE: usize;
    /// The signature, for error messages ("" when the structure has none).
    const MAGIC: &'static str;

    /// Decodes the structure from the start of `bytes`, which lie at absolute
    /// offset `offset` in the image (used only for error messages).
    fn decode(bytes: &[u8], offset: u64) -> Result<Self> {
        let bytes = super::slice_at(bytes, 0, Self::SIZE, Self::NAME, offset)?;
        let mut cursor = Cursor::new(bytes);
        Self::read(&mut cursor).map_err(|e| map_binrw_error(e, Self::NAME, Self::MAGIC, offset))
    }

    /// Encodes the structure into exactly [`Self::SIZE`] bytes.
    fn encode(&self) -> Vec<u8> {
        let mut cursor = Cursor::new(Vec::with_capacity(Self::SIZE));
        // Writing fixed-size fields to a Vec cannot fail.
        if let Err(e) = self.write(&mut cursor) {
            unreachable!("encoding {} into memory failed: {e}", Self::NAME);
        }
        let out = cursor.into_inner();
        debug_assert_eq!(out.len(), Self::SIZE, "{} encodes to its size", Self::NAME);
        out
    }
}

fn map_binrw_error(e: binrw::Error, name: &'static str, magic: &'static str, base: u64) -> FormatError {
    match e {
        binrw::Error::BadMagic { pos, .. } => {
            FormatError::BadSignature { structure: name, offset: base.saturating_add(pos), expected: magic }
        }
        binrw::Error::AssertFail { pos, message } => FormatError::corrupt(name, base.saturating_add(pos), message),
        binrw::Error::Io(io) => FormatError::corrupt(name, base, io.to_string()),
        binrw::Error::Backtrace(bt) => map_binrw_error(*bt.error, name, magic, base),
        other => FormatError::corrupt(name, base, other.to_string()),
    }
}
