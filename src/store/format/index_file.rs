//! Index files: which pack holds each chunk, as one committed file of a
//! backup's (or reindex's) new chunks. See docs/store-format.md ("Index
//! files"); the global index that merges them is `state::index`.

use crate::store::backend::Backend;
use crate::store::error::{Result, StoreError};
use crate::store::format::record::{MAX_CHUNK, MAX_RECORD, RECORD_HEADER};
use crate::store::model::id::{ChunkId, PackId};
use crate::store::model::malformed::Malformed;

const MAGIC: &[u8; 8] = b"VKINDEX1";
/// Bytes per index file entry.
pub const ENTRY: usize = 64;

/// Where a chunk's record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// The pack holding the record.
    pub pack: PackId,
    /// Offset of the record in the pack.
    pub offset: u64,
    /// Header and stored bytes.
    pub length: u32,
    /// The chunk's plain length.
    pub plain_len: u32,
}

/// One chunk at one location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// The chunk.
    pub id: ChunkId,
    /// Where its record is.
    pub location: Location,
}

/// Encodes an index file (sorting the entries).
pub fn encode_index(entries: &mut [IndexEntry]) -> Vec<u8> {
    entries.sort_unstable_by_key(|e| (e.id, e.location.pack, e.location.offset));
    let mut out = Vec::with_capacity(16 + entries.len() * ENTRY + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for e in entries.iter() {
        out.extend_from_slice(&e.id.0);
        out.extend_from_slice(&e.location.pack.0);
        out.extend_from_slice(&e.location.offset.to_le_bytes());
        out.extend_from_slice(&e.location.length.to_le_bytes());
        out.extend_from_slice(&e.location.plain_len.to_le_bytes());
    }
    let hash = blake3::hash(&out);
    out.extend_from_slice(hash.as_bytes());
    out
}

/// Decodes and checks an index file: signature, count against length,
/// checksum, order.
pub fn decode_index(bytes: &[u8]) -> std::result::Result<Vec<IndexEntry>, Malformed> {
    if bytes.len() < 48 || &bytes[..8] != MAGIC {
        return Err(bad(0, "not an index file"));
    }
    let count = u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default());
    let expected = count.checked_mul(ENTRY as u64).and_then(|n| n.checked_add(48));
    if expected != Some(bytes.len() as u64) {
        return Err(bad(8, format!("{count} entries do not fit {} bytes", bytes.len())));
    }
    let body = &bytes[..bytes.len() - 32];
    if blake3::hash(body).as_bytes()[..] != bytes[bytes.len() - 32..] {
        return Err(bad(bytes.len() as u64 - 32, "checksum mismatch"));
    }
    let mut out = Vec::with_capacity(count as usize);
    for (i, e) in body[16..].chunks_exact(ENTRY).enumerate() {
        let mut id = [0u8; 32];
        id.copy_from_slice(&e[..32]);
        let mut pack = [0u8; 16];
        pack.copy_from_slice(&e[32..48]);
        let entry = IndexEntry {
            id: ChunkId(id),
            location: Location {
                pack: PackId(pack),
                offset: u64::from_le_bytes(e[48..56].try_into().unwrap_or_default()),
                length: u32::from_le_bytes(e[56..60].try_into().unwrap_or_default()),
                plain_len: u32::from_le_bytes(e[60..64].try_into().unwrap_or_default()),
            },
        };
        // Lengths bound what a reader allocates for the record: check them
        // before anything trusts them.
        let l = &entry.location;
        if !(RECORD_HEADER as u32..=MAX_RECORD).contains(&l.length) || !(1..=MAX_CHUNK).contains(&l.plain_len) {
            let at = 16 + (i * ENTRY) as u64 + 56;
            return Err(bad(at, format!("record length {} or chunk length {} out of range", l.length, l.plain_len)));
        }
        if out.last().is_some_and(|p: &IndexEntry| p.id > entry.id) {
            return Err(bad(16 + (i * ENTRY) as u64, "entries out of order"));
        }
        out.push(entry);
    }
    Ok(out)
}

/// The key of a new index file.
pub fn new_index_key() -> String {
    crate::store::model::layout::index_key(&PackId::new_random().to_hex())
}

/// Writes `entries` as a new index file and commits it (flushed, renamed
/// into place, folder synced). Every pack it names must already be sealed.
pub fn write_index_file(backend: &dyn Backend, entries: &mut [IndexEntry]) -> Result<()> {
    let bytes = encode_index(entries);
    let key = new_index_key();
    let path = backend.describe(&key);
    let mut w = backend.create(&key).map_err(StoreError::io(&path, "create index"))?;
    w.write(&bytes).map_err(StoreError::io(&path, "write index"))?;
    w.commit().map_err(StoreError::io(&path, "commit index"))
}

/// A field of an index file at `offset` is wrong.
fn bad(offset: u64, reason: impl Into<String>) -> Malformed {
    Malformed::at("index file", offset, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_files_round_trip_and_refuse_damage() {
        let mut entries: Vec<IndexEntry> = (0..50u8)
            .map(|i| IndexEntry {
                id: ChunkId::of(&[i]),
                location: Location { pack: PackId([i; 16]), offset: u64::from(i) * 100, length: 77, plain_len: 512 },
            })
            .collect();
        let bytes = encode_index(&mut entries);
        assert_eq!(decode_index(&bytes).unwrap(), entries);
        for i in (0..bytes.len()).step_by(13) {
            let mut b = bytes.clone();
            b[i] ^= 4;
            assert!(decode_index(&b).is_err(), "flip at {i}");
        }
        assert!(decode_index(&bytes[..bytes.len() - 1]).is_err());
    }

    /// Review finding: a record length from an index file sized a read
    /// buffer unchecked (up to 4 GiB per reading thread). A checksummed file
    /// with out-of-range lengths is refused.
    #[test]
    fn lengths_out_of_range_are_refused() {
        let entry = |length, plain_len| IndexEntry {
            id: ChunkId::of(b"x"),
            location: Location { pack: PackId([1; 16]), offset: 24, length, plain_len },
        };
        for (length, plain_len) in [(u32::MAX, 512), (MAX_RECORD + 1, 512), (10, 512), (100, 0), (100, MAX_CHUNK + 1)] {
            let bytes = encode_index(&mut [entry(length, plain_len)]);
            assert!(decode_index(&bytes).is_err(), "length {length}, chunk {plain_len} accepted");
        }
        let bytes = encode_index(&mut [entry(MAX_RECORD, MAX_CHUNK)]);
        assert_eq!(decode_index(&bytes).unwrap().len(), 1);
    }
}
