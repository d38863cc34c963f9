//! GUIDs as both formats store them.
//!
//! VHDX stores GUIDs in Microsoft's mixed-endian layout (the first three fields
//! little-endian, the last eight bytes as they are); VHD stores its unique ids
//! as plain big-endian bytes. [`Guid`] keeps the canonical field order (the
//! order in which the GUID is written as text), and its binrw implementation
//! picks the layout from the endianness of the surrounding structure: little
//! means mixed-endian, big means the bytes as written. Comparing a VHDX
//! `parent_linkage` string with a DataWriteGuid therefore compares like with like.

use std::fmt;
use std::io::{Read, Seek, Write};
use std::str::FromStr;

use binrw::{BinRead, BinResult, BinWrite, Endian};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 128-bit identifier in canonical (textual) field order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Guid([u8; 16]);

impl Guid {
    /// The all-zero GUID, which both formats use for "none".
    pub const NIL: Guid = Guid([0; 16]);

    /// From bytes in canonical order (as the textual form reads).
    pub const fn from_canonical(bytes: [u8; 16]) -> Self {
        Guid(bytes)
    }

    /// From Microsoft's mixed-endian on-disk layout.
    pub fn from_mixed_endian(b: [u8; 16]) -> Self {
        Guid([b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]])
    }

    /// To Microsoft's mixed-endian on-disk layout.
    pub fn to_mixed_endian(self) -> [u8; 16] {
        let b = self.0;
        [b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]
    }

    /// Bytes in canonical order.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Whether this is the all-zero GUID.
    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }

    /// A fresh random (version 4) GUID from the operating system's CSPRNG
    /// (`getrandom`): VHDX identities, pack and index ids and the random part
    /// of backup ids all come from here, and encryption will rely on it.
    ///
    /// # Panics
    /// If the operating system cannot supply random bytes at all (no
    /// `getrandom(2)`, no `/dev/urandom`): an id that is not random would
    /// silently break uniqueness, which is worse than stopping.
    pub fn new_random() -> Self {
        let mut out = [0u8; 16];
        #[cfg(feature = "fuzzing")]
        let seeded = testing::fill(&mut out);
        #[cfg(not(feature = "fuzzing"))]
        let seeded = false;
        if !seeded {
            getrandom::fill(&mut out).expect("the operating system's random number generator failed");
        }
        out[6] = (out[6] & 0x0f) | 0x40;
        out[8] = (out[8] & 0x3f) | 0x80;
        Guid(out)
    }
}

impl fmt::Display for Guid {
    /// Lower-case `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

impl Serialize for Guid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Guid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Deterministic ids for deterministic tests (the `fuzzing` feature only):
/// a thread that calls [`testing::seed_thread`] draws its GUIDs, and so its
/// pack, index, lease and backup ids, from a seeded generator instead of
/// the operating system.
#[cfg(feature = "fuzzing")]
pub mod testing {
    use std::cell::Cell;

    thread_local! {
        static STATE: Cell<Option<u64>> = const { Cell::new(None) };
    }

    /// From now on this thread's GUIDs follow `seed`.
    pub fn seed_thread(seed: u64) {
        STATE.with(|s| s.set(Some(seed | 1)));
    }

    pub(super) fn fill(out: &mut [u8; 16]) -> bool {
        STATE.with(|s| {
            let Some(mut x) = s.get() else { return false };
            for half in out.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                half.copy_from_slice(&x.to_le_bytes());
            }
            s.set(Some(x));
            true
        })
    }
}

/// The text was not a GUID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a GUID: {0:?}")]
pub struct ParseGuidError(pub String);

impl FromStr for Guid {
    type Err = ParseGuidError;

    /// Accepts `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, optionally in braces, any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseGuidError(s.to_string());
        let t = s.trim();
        let t = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')).unwrap_or(t);
        let groups: Vec<&str> = t.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        if groups.len() != 5 || groups.iter().zip(lens).any(|(g, l)| g.len() != l) {
            return Err(err());
        }
        let hex: String = groups.concat();
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err());
        }
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            let pair = hex.get(i * 2..i * 2 + 2).ok_or_else(err)?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| err())?;
        }
        Ok(Guid(out))
    }
}

impl BinRead for Guid {
    type Args<'a> = ();

    fn read_options<R: Read + Seek>(reader: &mut R, endian: Endian, _: ()) -> BinResult<Self> {
        let mut b = [0u8; 16];
        reader.read_exact(&mut b)?;
        Ok(match endian {
            Endian::Little => Guid::from_mixed_endian(b),
            Endian::Big => Guid(b),
        })
    }
}

impl BinWrite for Guid {
    type Args<'a> = ();

    fn write_options<W: Write + Seek>(&self, writer: &mut W, endian: Endian, _: ()) -> BinResult<()> {
        let b = match endian {
            Endian::Little => self.to_mixed_endian(),
            Endian::Big => self.0,
        };
        writer.write_all(&b)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_endian_layout_matches_the_spec_example() {
        // The BAT region GUID as [MS-VHDX] writes it, and as it lies on disk.
        let text = "2DC27766-F623-4200-9D64-115E9BFD4A08";
        let on_disk = [0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08];
        let g: Guid = text.parse().unwrap();
        assert_eq!(g.to_mixed_endian(), on_disk);
        assert_eq!(Guid::from_mixed_endian(on_disk), g);
        assert_eq!(g.to_string(), text.to_lowercase());
    }

    #[test]
    fn parses_braced_and_rejects_junk() {
        let g: Guid = "{c82755bc-427f-1245-b72c-da70aaabe031}".parse().unwrap();
        assert_eq!(g.to_string(), "c82755bc-427f-1245-b72c-da70aaabe031");
        assert!("c82755bc-427f-1245-b72c-da70aaabe03".parse::<Guid>().is_err());
        assert!("zz2755bc-427f-1245-b72c-da70aaabe031".parse::<Guid>().is_err());
        assert!("".parse::<Guid>().is_err());
        assert!("{+3ed0ec3-24c8-49a6-a959-5e4bf1288bfb}".parse::<Guid>().is_err());
    }

    #[test]
    fn random_guids_differ_and_carry_version_4() {
        let a = Guid::new_random();
        let b = Guid::new_random();
        assert_ne!(a, b);
        assert_eq!(a.as_bytes()[6] >> 4, 4);
    }
}
