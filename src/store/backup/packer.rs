//! Storing new chunks: the claim set that makes each chunk stored once per
//! job, and each worker's own pack.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::super::Store;
use super::super::chunk::{ChunkId, Compression, seal_payload};
use super::super::crypto::{Crypt, Keys};
use super::super::error::{Result, StoreError};
use super::super::index::{IndexEntry, Location};
use super::super::pack::PackWriter;

/// What keeps a backup's memory flat however large the disk.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// New chunks remembered within one job: repeats further apart than
    /// this many new chunks may be stored twice (vacuum keeps one copy).
    pub claimed: usize,
    /// Index entries written out to an index file once this many sealed
    /// ones have gathered.
    pub index_flush: usize,
}

impl Limits {
    /// 8 MiB of remembered ids; 4 MiB of pending index entries (32 GiB of
    /// new data at 512 KiB chunks).
    pub const DEFAULT: Limits = Limits { claimed: 1 << 18, index_flush: 1 << 16 };
}

/// What every worker of a job shares, across all of the job's disks and
/// its attachments: which new chunks the job has claimed (so each is
/// stored once, even when two disks hold it), and the index entries of
/// sealed packs not yet written to an index file.
pub(super) struct Claims {
    limit: usize,
    claimed: Mutex<HashSet<ChunkId>>,
    sealed: Mutex<Vec<IndexEntry>>,
}

impl Claims {
    pub(super) fn new(limits: Limits) -> Claims {
        Claims { limit: limits.claimed, claimed: Mutex::new(HashSet::new()), sealed: Mutex::new(Vec::new()) }
    }

    /// Claims a chunk new to the store; false if this job already holds
    /// it. The set is forgotten when it reaches its limit, which bounds
    /// memory at the cost of a rare second copy.
    pub(super) fn claim(&self, id: ChunkId) -> bool {
        let mut claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        if claimed.len() >= self.limit {
            claimed.clear();
        }
        claimed.insert(id)
    }

    /// Entries of sealed packs, once at least `at_least` have gathered.
    pub(super) fn take_sealed(&self, at_least: usize) -> Option<Vec<IndexEntry>> {
        let mut sealed = self.sealed.lock().unwrap_or_else(|p| p.into_inner());
        (sealed.len() >= at_least.max(1)).then(|| std::mem::take(&mut *sealed))
    }

    fn add_sealed(&self, entries: &mut Vec<IndexEntry>) {
        self.sealed.lock().unwrap_or_else(|p| p.into_inner()).append(entries);
    }
}

/// One worker's open pack and the entries it has written to it.
pub(super) struct WorkerPack {
    pack: Option<PackWriter>,
    entries: Vec<IndexEntry>,
}

impl WorkerPack {
    pub(super) fn new() -> WorkerPack {
        WorkerPack { pack: None, entries: Vec::new() }
    }

    /// Appends a chunk's record; returns the record's length.
    pub(super) fn add(
        &mut self,
        store: &Store,
        claims: &Claims,
        id: ChunkId,
        compression: Compression,
        plain_len: u32,
        bytes: &[u8],
    ) -> Result<u32> {
        let backend = store.backend();
        let pack = match &mut self.pack {
            Some(p) => p,
            empty => empty.insert(PackWriter::create(backend, store.crypt())?),
        };
        let e = pack
            .add(id, compression, plain_len, bytes)
            .map_err(StoreError::io(backend.describe(&pack.id().key()), "write pack"))?;
        self.entries.push(IndexEntry {
            id,
            location: Location { pack: pack.id(), offset: e.offset, length: e.length, plain_len },
        });
        if pack.bytes_written() >= store.config.pack_size {
            self.seal(store, claims)?;
        }
        Ok(e.length)
    }

    /// Seals the pack (flushed, renamed into place) before its entries can
    /// reach an index file.
    pub(super) fn seal(&mut self, store: &Store, claims: &Claims) -> Result<()> {
        if let Some(pack) = self.pack.take() {
            let key = pack.id().key();
            pack.seal().map_err(StoreError::io(store.backend().describe(&key), "seal pack"))?;
            claims.add_sealed(&mut self.entries);
        }
        Ok(())
    }
}

/// Compresses and (in an encrypted store) seals chunks for one worker,
/// into reused buffers.
pub(super) struct Packer {
    compressor: Option<zstd::bulk::Compressor<'static>>,
    keys: Option<Arc<Keys>>,
    buf: Vec<u8>,
    sealed: Vec<u8>,
}

impl Packer {
    pub(super) fn new(store: &Store) -> Packer {
        let compressor = match store.config.compression {
            Compression::Zstd => zstd::bulk::Compressor::new(store.config.zstd_level).ok(),
            Compression::None => None,
        };
        let keys = match store.crypt() {
            Crypt::Sealed(k) => Some(k.clone()),
            _ => None,
        };
        Packer { compressor, keys, buf: Vec::new(), sealed: Vec::new() }
    }

    /// The stored bytes of chunk `id` (of bytes `plain`) and how they are
    /// compressed: zstd output only when it is smaller, then sealed in an
    /// encrypted store.
    pub(super) fn pack<'b>(&'b mut self, id: ChunkId, plain: &'b [u8]) -> (Compression, &'b [u8]) {
        let (compression, payload) = match self.compressor.as_mut() {
            None => (Compression::None, plain),
            Some(c) => {
                self.buf.clear();
                self.buf.reserve(zstd::zstd_safe::compress_bound(plain.len()));
                match c.compress_to_buffer(plain, &mut self.buf) {
                    Ok(n) if n < plain.len() => (Compression::Zstd, &self.buf[..n]),
                    _ => (Compression::None, plain),
                }
            }
        };
        match &self.keys {
            None => (compression, payload),
            Some(keys) => {
                seal_payload(keys, id, compression, plain.len() as u32, payload, &mut self.sealed);
                (compression, &self.sealed)
            }
        }
    }
}
