//! Typed ids: backups and restore points, chunks and packs.
//!
//! Both have the shape `YYYYMMDDTHHMMSS.ffffffZ-RRRRRRRR`: the UTC creation
//! time, then 8 random hex digits from the operating system's CSPRNG, so
//! ids sort by time and two processes never pick the same one. Parsing
//! accepts any id of safe characters (ASCII letters, digits, `.` and `-`, at
//! most 64), since ids are also file and object names: a manifest naming
//! `../x` as its parent is refused before anything opens it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::store::model::time::Moment;

/// The text is not an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid id: {0:?} (1 to 64 ASCII letters, digits, '.' or '-')")]
pub struct ParseIdError(pub String);

fn valid(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

fn generate(at: Moment) -> String {
    let random = &crate::format::Guid::new_random().to_string()[..8];
    format!("{}-{random}", at.compact())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// A fresh id for something created at `at`.
            pub fn generate(at: Moment) -> $name {
                $name(generate(at))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                if valid(s) { Ok($name(s.to_string())) } else { Err(ParseIdError(s.to_string())) }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A backup's id: one disk's manifest. See the module documentation.
    BackupId
);

id_type!(
    /// A restore point's id: one job that backed up several disks of a VM
    /// together (with tags and attachments). See the module documentation.
    PointId
);

/// A chunk's name: the BLAKE3 hash of its plain bytes, keyed in an
/// encrypted store (`Crypt::chunk_id`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `bytes` in a plain store (`Crypt::chunk_id` in any).
    pub fn of(bytes: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(bytes).as_bytes())
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

impl FromStr for ChunkId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex::<32>(s).map(ChunkId).ok_or_else(|| format!("not a chunk id: {s:?}"))
    }
}

impl Serialize for ChunkId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses exactly `N` bytes of lower- or upper-case hex.
pub(crate) fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A pack's random name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackId(pub [u8; 16]);

impl PackId {
    /// A fresh random id.
    pub fn new_random() -> PackId {
        PackId(*crate::format::Guid::new_random().as_bytes())
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 32 hex digits.
    pub fn from_hex(s: &str) -> Option<PackId> {
        parse_hex::<16>(s).map(PackId)
    }
}

impl fmt::Display for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackId({})", &self.to_hex()[..12])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_refuse_unsafe_text() {
        let a = BackupId::generate(Moment::from_unix(1_795_444_212, 5));
        let b = BackupId::generate(Moment::from_unix(1_795_444_213, 0));
        assert!(a < b);
        assert!(a.as_str().starts_with("20261123T143012.000005Z-"));
        assert_eq!(a.as_str().parse::<BackupId>().unwrap(), a);
        for bad in ["", "../x", "a/b", "a b", &"x".repeat(65)] {
            assert!(bad.parse::<BackupId>().is_err(), "{bad:?} accepted");
        }
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<BackupId>(&json).unwrap(), a);
        assert!(serde_json::from_str::<BackupId>("\"../../etc\"").is_err());
    }
}
