//! The global index: which pack holds each chunk.
//!
//! The codec of index files is `format::index_file`. The global index is the
//! union of every committed index file, held as one sorted table (64 bytes
//! per entry, about 128 MiB per TiB of unique data at 512 KiB chunks) and
//! searched by binary search.

use std::collections::HashSet;

use crate::store::backend::Backend;
use crate::store::format::index_file::{IndexEntry, Location, decode_index};
use crate::store::model::id::ChunkId;
use crate::store::error::{Result, StoreError};
use crate::store::model::id::PackId;

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
                .map_err(StoreError::malformed(backend.describe(key)))?;
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
