//! Index files and the global index: which pack holds each chunk.
//!
//! See docs/store-format.md ("Index files"). The global index is the
//! union of every committed index file, held as one sorted table (64 bytes
//! per entry, about 128 MiB per TiB of unique data at 512 KiB chunks) and
//! searched by binary search.

use std::collections::HashSet;

use crate::store::backend::Backend;
use crate::store::format::record::{MAX_CHUNK, MAX_RECORD, RECORD_HEADER};
use crate::store::model::id::ChunkId;
use crate::store::error::{Result, StoreError};
use crate::store::model::id::PackId;

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
pub fn decode_index(bytes: &[u8]) -> std::result::Result<Vec<IndexEntry>, (u64, String)> {
    if bytes.len() < 48 || &bytes[..8] != MAGIC {
        return Err((0, "not an index file".into()));
    }
    let count = u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default());
    let expected = count.checked_mul(ENTRY as u64).and_then(|n| n.checked_add(48));
    if expected != Some(bytes.len() as u64) {
        return Err((8, format!("{count} entries do not fit {} bytes", bytes.len())));
    }
    let body = &bytes[..bytes.len() - 32];
    if blake3::hash(body).as_bytes()[..] != bytes[bytes.len() - 32..] {
        return Err((bytes.len() as u64 - 32, "checksum mismatch".into()));
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
            return Err((at, format!("record length {} or chunk length {} out of range", l.length, l.plain_len)));
        }
        if out.last().is_some_and(|p: &IndexEntry| p.id > entry.id) {
            return Err((16 + (i * ENTRY) as u64, "entries out of order".into()));
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

/// The global index: every committed index file, merged.
#[derive(Debug, Default)]
pub struct Index {
    entries: Vec<IndexEntry>,
    files: Vec<String>,
    damaged: HashSet<(ChunkId, PackId)>,
    /// Packs a vacuum condemned: their copies are tried last, and never
    /// counted for deduplication (a backup stores such a chunk again).
    avoid: HashSet<PackId>,
}

impl Index {
    /// Loads every index file and the damaged-chunk markers.
    pub fn load(backend: &dyn Backend) -> Result<Index> {
        let files =
            crate::store::backend::list_keys(backend, "index").map_err(StoreError::io(backend.describe("index"), "list"))?;
        Index::load_files(backend, &files)
    }

    /// Loads every index file, avoiding the copies in `avoid` (condemned
    /// packs) and dropping entries for packs not in `present` (an index
    /// file can outlive a pack it names: one a backup wrote after a vacuum
    /// deleted its dead pack while the backup was paused).
    pub fn load_avoiding(backend: &dyn Backend, avoid: HashSet<PackId>, present: &HashSet<PackId>) -> Result<Index> {
        let mut index = Index::load(backend)?;
        index.entries.retain(|e| present.contains(&e.location.pack));
        index.avoid = avoid;
        Ok(index)
    }

    /// Loads the index files `files` (a file deleted since it was listed
    /// is skipped: vacuum deletes an index file only once a newer one holds
    /// what is still needed of it) and the damaged-chunk markers.
    pub fn load_files(backend: &dyn Backend, files: &[String]) -> Result<Index> {
        let mut entries = Vec::new();
        let mut loaded = Vec::with_capacity(files.len());
        for key in files {
            let bytes = match backend.read_all(key) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io(backend.describe(key), "read index")(e)),
            };
            let mut part = decode_index(&bytes)
                .map_err(|(offset, reason)| StoreError::corrupt(backend.describe(key), "index file", offset, reason))?;
            entries.append(&mut part);
            loaded.push(key.clone());
        }
        entries.sort_unstable_by_key(|e| (e.id, e.location.pack, e.location.offset));
        entries.dedup();
        let mut damaged = HashSet::new();
        for key in crate::store::backend::list_keys(backend, "damaged")
            .map_err(StoreError::io(backend.describe("damaged"), "list"))?
        {
            if let Some((c, p)) = parse_damaged(&key) {
                damaged.insert((c, p));
            }
        }
        Ok(Index { entries, files: loaded, damaged, avoid: HashSet::new() })
    }

    /// The index files this index was loaded from.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    fn all(&self, id: &ChunkId) -> impl Iterator<Item = &IndexEntry> {
        let start = self.entries.partition_point(|e| e.id < *id);
        self.entries[start..]
            .iter()
            .take_while(move |e| e.id == *id)
            .filter(move |e| !self.damaged.contains(&(e.id, e.location.pack)))
    }

    /// Every location of `id` that verify has not found damaged, copies in
    /// condemned packs last.
    pub fn locations(&self, id: &ChunkId) -> impl Iterator<Item = &Location> {
        let avoided = move |e: &&IndexEntry| self.avoid.contains(&e.location.pack);
        self.all(id).filter(move |e| !avoided(e)).chain(self.all(id).filter(avoided)).map(|e| &e.location)
    }

    /// Whether an undamaged copy of `id` outside condemned packs is
    /// stored: what dedup asks.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.all(id).any(|e| !self.avoid.contains(&e.location.pack))
    }

    /// Whether this copy was found damaged.
    pub fn is_damaged(&self, id: &ChunkId, pack: &PackId) -> bool {
        self.damaged.contains(&(*id, *pack))
    }

    /// Every entry, sorted by chunk id.
    pub fn entries(&self) -> &[IndexEntry] {
        &self.entries
    }

    /// Number of distinct chunks.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn chunk_count(&self) -> u64 {
        let mut n = 0;
        let mut last = None;
        for e in &self.entries {
            if last != Some(e.id) {
                n += 1;
                last = Some(e.id);
            }
        }
        n
    }
}

/// `damaged/<chunk id>.<pack id>`.
pub fn damaged_key(id: &ChunkId, pack: &PackId) -> String {
    crate::store::model::layout::damaged_key(&id.to_string(), &pack.to_string())
}

fn parse_damaged(key: &str) -> Option<(ChunkId, PackId)> {
    let (c, p) = key.strip_prefix("damaged/")?.split_once('.')?;
    Some((c.parse().ok()?, PackId::from_hex(p)?))
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
