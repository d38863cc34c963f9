//! Chunks: ids, and the record a chunk is stored as inside a pack.
//!
//! Pure encoding and decoding; see docs/store-format.md ("Chunks").

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes of a record header.
pub const RECORD_HEADER: usize = 52;
const MAGIC: &[u8; 4] = b"VKCH";
const VERSION: u8 = 1;
/// The largest chunk a store may use.
pub const MAX_CHUNK: u32 = 4 << 20;
/// The most stored bytes a record may hold: zstd's worst case for a
/// largest chunk, with room to spare.
pub const MAX_STORED: u32 = MAX_CHUNK + (MAX_CHUNK >> 7) + 1024;
/// The longest record: header and the most stored bytes.
pub const MAX_RECORD: u32 = RECORD_HEADER as u32 + MAX_STORED;

/// A chunk's name: the BLAKE3 hash of its plain bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `bytes`.
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

/// How a chunk's bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Stored as is.
    None,
    /// Compressed with zstd.
    Zstd,
}

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// How the stored bytes are encoded.
    pub compression: Compression,
    /// The chunk's length.
    pub plain_len: u32,
    /// Bytes after the header.
    pub stored_len: u32,
    /// The chunk the record claims to hold.
    pub id: ChunkId,
    /// CRC-32C of the header (this field as zero) and the stored bytes.
    pub crc: u32,
}

/// Encodes a record for `id` whose stored bytes are `stored`.
#[cfg(any(test, feature = "fuzzing"))]
pub fn encode_record(id: ChunkId, compression: Compression, plain_len: u32, stored: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&record_header(id, compression, plain_len, stored));
    out.extend_from_slice(stored);
}

/// The header of the record [`encode_record`] makes; the stored bytes follow
/// it. Writers that already hold the stored bytes write the two pieces
/// without copying the chunk into one buffer first.
pub fn record_header(id: ChunkId, compression: Compression, plain_len: u32, stored: &[u8]) -> [u8; RECORD_HEADER] {
    let mut h = [0u8; RECORD_HEADER];
    h[..4].copy_from_slice(MAGIC);
    h[4] = VERSION;
    h[5] = match compression {
        Compression::None => 0,
        Compression::Zstd => 1,
    };
    // h[6..8]: reserved, zero.
    h[8..12].copy_from_slice(&plain_len.to_le_bytes());
    h[12..16].copy_from_slice(&(stored.len() as u32).to_le_bytes());
    h[16..48].copy_from_slice(&id.0);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&h[..48]), stored);
    h[48..52].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// At this offset within the record.
    Bad {
        /// Byte offset within the record.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Bad { offset, reason } => write!(f, "{reason} (record byte {offset})"),
        }
    }
}

fn bad(offset: u64, reason: impl Into<String>) -> RecordError {
    RecordError::Bad { offset, reason: reason.into() }
}

/// Decodes a record header from its first [`RECORD_HEADER`] bytes.
pub fn decode_header(bytes: &[u8]) -> Result<RecordHeader, RecordError> {
    let h = bytes.get(..RECORD_HEADER).ok_or_else(|| bad(0, "record header cut short"))?;
    if &h[..4] != MAGIC {
        return Err(bad(0, "bad record signature"));
    }
    if h[4] != VERSION {
        return Err(bad(4, format!("record version {}", h[4])));
    }
    let compression = match h[5] {
        0 => Compression::None,
        1 => Compression::Zstd,
        other => return Err(bad(5, format!("unknown compression {other}"))),
    };
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let plain_len = u32_at(8);
    let stored_len = u32_at(12);
    if plain_len == 0 || plain_len > MAX_CHUNK {
        return Err(bad(8, format!("plain length {plain_len}")));
    }
    if stored_len > MAX_STORED {
        return Err(bad(12, format!("stored length {stored_len}")));
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(&h[16..48]);
    Ok(RecordHeader { compression, plain_len, stored_len, id: ChunkId(id), crc: u32_at(48) })
}

/// Checks a whole record (header and stored bytes) and returns the chunk's
/// plain bytes in `out` (resized to the plain length). `expected` is the id
/// the caller asked for.
pub fn decode_record(record: &[u8], expected: ChunkId, out: &mut Vec<u8>) -> Result<(), RecordError> {
    let h = decode_header(record)?;
    out.clear();
    out.resize(h.plain_len as usize, 0);
    decode_record_into(record, expected, out)
}

/// Checks a whole record like [`decode_record`], writing the plain bytes
/// straight into `dst`, which must be exactly as long as the chunk: a
/// restore decodes into its output buffer without an intermediate copy.
/// On error `dst` holds unspecified bytes.
pub fn decode_record_into(record: &[u8], expected: ChunkId, dst: &mut [u8]) -> Result<(), RecordError> {
    let h = decode_header(record)?;
    let stored = record
        .get(RECORD_HEADER..RECORD_HEADER + h.stored_len as usize)
        .ok_or_else(|| bad(RECORD_HEADER as u64, "stored bytes cut short"))?;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&record[..48]), stored);
    if crc != h.crc {
        return Err(bad(48, format!("CRC mismatch (stored {:#010x}, computed {crc:#010x})", h.crc)));
    }
    if h.id != expected {
        return Err(bad(16, format!("record holds chunk {} not {}", h.id, expected)));
    }
    if dst.len() != h.plain_len as usize {
        return Err(bad(8, format!("the chunk holds {} bytes, {} were expected", h.plain_len, dst.len())));
    }
    match h.compression {
        Compression::None => {
            if h.stored_len != h.plain_len {
                return Err(bad(12, "uncompressed record with differing lengths"));
            }
            // Hash where the bytes already are, then copy once.
            let actual = ChunkId::of(stored);
            if actual != expected {
                return Err(bad(RECORD_HEADER as u64, format!("contents hash to {actual}, not the chunk id")));
            }
            dst.copy_from_slice(stored);
            return Ok(());
        }
        Compression::Zstd => {
            let n = zstd::bulk::decompress_to_buffer(stored, dst)
                .map_err(|e| bad(RECORD_HEADER as u64, format!("zstd: {e}")))?;
            if n != h.plain_len as usize {
                return Err(bad(8, format!("decompressed to {n} bytes, not {}", h.plain_len)));
            }
        }
    }
    let actual = ChunkId::of(dst);
    if actual != expected {
        return Err(bad(RECORD_HEADER as u64, format!("contents hash to {actual}, not the chunk id")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_refuse_any_flipped_byte() {
        let plain: Vec<u8> = (0..5000u32).map(|i| (i % 7) as u8).collect();
        let id = ChunkId::of(&plain);
        let packed = zstd::bulk::compress(&plain, 1).unwrap();
        for (c, stored) in [(Compression::None, plain.clone()), (Compression::Zstd, packed)] {
            let mut rec = Vec::new();
            encode_record(id, c, plain.len() as u32, &stored, &mut rec);
            let mut out = Vec::new();
            decode_record(&rec, id, &mut out).unwrap();
            assert_eq!(out, plain);
            // Straight into a buffer of the chunk's length, and only that.
            let mut dst = vec![0u8; plain.len()];
            decode_record_into(&rec, id, &mut dst).unwrap();
            assert_eq!(dst, plain);
            assert!(decode_record_into(&rec, id, &mut dst[1..]).is_err());
            for i in (0..rec.len()).step_by(7) {
                rec[i] ^= 0x10;
                assert!(decode_record(&rec, id, &mut out).is_err(), "flip at {i} went unnoticed");
                assert!(decode_record_into(&rec, id, &mut dst).is_err(), "flip at {i} went unnoticed (into)");
                rec[i] ^= 0x10;
            }
        }
    }

    #[test]
    fn ids_round_trip_through_hex() {
        let id = ChunkId::of(b"abc");
        assert_eq!(id.to_hex().parse::<ChunkId>().unwrap(), id);
        assert_eq!(id.to_hex(), "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85");
    }
}
