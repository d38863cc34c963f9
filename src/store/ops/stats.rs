//! Store statistics: what the backups hold against what the store keeps.

use std::collections::HashSet;

use serde::Serialize;

use crate::store::error::{Result, StoreError};
use crate::store::state::chain::{ChainCursor, Resolved};
use crate::store::state::handle::Handle;
use crate::store::state::index::Index;

/// The store's size and savings.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Committed backups (one per disk).
    pub backups: u64,
    /// Committed restore points.
    pub points: u64,
    /// Bytes of data the backups hold (non-zero chunks of every backup's
    /// full map, counted once per backup).
    pub logical_bytes: u64,
    /// Every byte the store occupies on disk (packs, indexes, manifests,
    /// logs, leftovers).
    pub stored_bytes: u64,
    /// Distinct chunks stored.
    pub chunks: u64,
    /// Plain bytes of the distinct chunks.
    pub unique_bytes: u64,
    /// Bytes of the distinct chunks' records in packs.
    pub chunk_bytes: u64,
    /// logical_bytes / unique_bytes.
    pub dedup_ratio: f64,
    /// unique_bytes / chunk_bytes.
    pub compression_ratio: f64,
}

/// [`Store::stats`](crate::store::Store::stats).
pub(crate) fn stats(store: &Handle) -> Result<Stats> {
    let _lease = store.read_lease("stats")?;
    let backend = store.backend();
    let index = Index::load(backend)?;
    let mut unique_bytes = 0u64;
    let mut chunk_bytes = 0u64;
    let mut seen = HashSet::new();
    for e in index.entries() {
        if seen.insert(e.id) {
            unique_bytes += u64::from(e.location.plain_len);
            chunk_bytes += u64::from(e.location.length);
        }
    }
    let catalog = crate::store::state::catalog::catalog(store)?.strict()?;
    let mut logical_bytes = 0u64;
    for b in &catalog.backups {
        let mut cursor = ChainCursor::open(backend, &b.id)?;
        let h = cursor.header().clone();
        let mut slot = 0u64;
        while let Some((r, n)) = cursor.next_run()? {
            if matches!(r, Resolved::Data(_)) {
                logical_bytes += (0..n).map(|i| h.slot_len(slot + i)).sum::<u64>();
            }
            slot += n;
        }
    }
    let stored_bytes =
        crate::store::backend::total_bytes(backend, "").map_err(StoreError::io(backend.describe(""), "measure"))?;
    let ratio = |a: u64, b: u64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    Ok(Stats {
        backups: catalog.backups.len() as u64,
        points: catalog.points.len() as u64,
        logical_bytes,
        stored_bytes,
        chunks: seen.len() as u64,
        unique_bytes,
        chunk_bytes,
        dedup_ratio: ratio(logical_bytes, unique_bytes),
        compression_ratio: ratio(unique_bytes, chunk_bytes),
    })
}
