//! Rebuilding the global index from the packs alone.
//!
//! Order: read every sealed pack's own index (and each record's header for
//! the plain length), commit one new index file, and only then delete the
//! old index files. A crash before the deletions leaves duplicates, which
//! the index merges.

use std::time::Instant;

use serde::Serialize;

use crate::store::backend::Traffic;
use crate::store::error::{Result, StoreError};
use crate::store::format::index_file::{IndexEntry, Location, write_index_file};
use crate::store::format::pack::read_pack_index;
use crate::store::format::record::{RECORD_HEADER, decode_header};
use crate::store::model::id::PackId;
use crate::store::state::handle::Handle;
use crate::store::state::lease::LeaseMode;

/// How to reindex.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ReindexOptions {
    /// Wait for running backups instead of failing with `StoreBusy`.
    pub wait: bool,
}

/// What reindex did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ReindexReport {
    /// Packs read.
    pub packs: u64,
    /// Chunk records indexed.
    pub chunks: u64,
    /// Packs whose own index could not be read (their chunks are not indexed).
    pub unreadable_packs: Vec<String>,
    /// Index files the new one replaced.
    pub replaced_index_files: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Requests made and bytes uploaded (`requests`, `bytes_uploaded` in JSON).
    #[serde(flatten)]
    pub traffic: Traffic,
}

/// [`Store::reindex`](crate::store::Store::reindex).
pub(crate) fn reindex(store: &Handle, options: &ReindexOptions) -> Result<ReindexReport> {
    store.require_writable()?;
    let started = Instant::now();
    let t0 = store.backend().traffic();
    let _lease = store.lease(LeaseMode::Maintenance, "reindex", options.wait)?;
    let backend = store.backend();
    let old = crate::store::backend::list_keys(backend, "index")
        .map_err(StoreError::io(backend.describe("index"), "list"))?;
    let mut entries = Vec::new();
    let mut unreadable = Vec::new();
    let mut packs = 0;
    for key in
        crate::store::backend::list_keys(backend, "packs").map_err(StoreError::io(backend.describe("packs"), "list"))?
    {
        let Some(pack) = PackId::from_key(&key) else { continue };
        let Ok(list) = read_pack_index(backend, pack, store.crypt()) else {
            unreadable.push(pack.to_hex());
            continue;
        };
        packs += 1;
        let mut head = [0u8; RECORD_HEADER];
        for e in list {
            if backend.read_at(&key, &mut head, e.offset).is_err() {
                continue;
            }
            let Ok(h) = decode_header(&head) else { continue };
            if h.id != e.id || RECORD_HEADER as u64 + u64::from(h.stored_len) != u64::from(e.length) {
                continue;
            }
            entries.push(IndexEntry {
                id: e.id,
                location: Location { pack, offset: e.offset, length: e.length, plain_len: h.plain_len },
            });
        }
    }
    let chunks = entries.len() as u64;
    write_index_file(backend, &mut entries)?;
    for k in &old {
        backend.delete(k).map_err(StoreError::io(backend.describe(k), "delete old index"))?;
    }
    let report = ReindexReport {
        packs,
        chunks,
        unreadable_packs: unreadable,
        replaced_index_files: old.len() as u64,
        seconds: started.elapsed().as_secs_f64(),
        traffic: store.backend().traffic().since(t0),
    };
    store.log_job("reindex", &serde_json::to_value(&report).unwrap_or_default());
    Ok(report)
}
