//! Storing new chunks: the claim set that makes each chunk stored once per
//! job, and each worker's own pack.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::store::crypto::{Crypt, Keys};
use crate::store::error::{Result, StoreError};
use crate::store::format::index_file::{IndexEntry, Location};
use crate::store::format::pack::PackWriter;
use crate::store::format::record::{Compression, SealedEnds, seal_in_place};
use crate::store::model::id::ChunkId;
use crate::store::model::limits::Limits;
use crate::store::state::handle::Handle;

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

    /// A copy in an orphan pack this job deduplicated against (see
    /// `crate::store::ops::backup::resume`): indexed with the job's next index file, before
    /// its commit.
    pub(super) fn adopt(&self, entry: IndexEntry) {
        self.sealed.lock().unwrap_or_else(|p| p.into_inner()).push(entry);
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
        store: &Handle,
        claims: &Claims,
        id: ChunkId,
        compression: Compression,
        plain_len: u32,
        bytes: &[&[u8]],
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
    pub(super) fn seal(&mut self, store: &Handle, claims: &Claims) -> Result<()> {
        if let Some(pack) = self.pack.take() {
            let key = pack.id().key();
            pack.seal().map_err(StoreError::io(store.backend().describe(&key), "seal pack"))?;
            claims.add_sealed(&mut self.entries);
        }
        Ok(())
    }
}

/// Compresses and (in an encrypted store) seals chunks for one worker,
/// into reused buffers: a compressed chunk is sealed where zstd wrote it,
/// an uncompressed one in the worker's own buffer when it has one, so
/// sealing copies nothing.
pub(super) struct Packer {
    compressor: Option<zstd::bulk::Compressor<'static>>,
    /// zstd at level 1, for the samples that tell an incompressible chunk.
    probe: Option<zstd::bulk::Compressor<'static>>,
    keys: Option<Arc<Keys>>,
    buf: Vec<u8>,
    /// A borrowed chunk (a memory-mapped image) is copied here to be sealed.
    copy: Vec<u8>,
    /// The salt and tag of the chunk sealed last.
    ends: SealedEnds,
}

/// A chunk's bytes as a worker holds them: its own buffer (which sealing
/// may overwrite), or a view it must not change.
pub(super) enum ChunkBytes<'b> {
    /// The worker's buffer.
    Owned(&'b mut [u8]),
    /// Someone else's bytes.
    Borrowed(&'b [u8]),
}

/// A record's stored bytes, in pieces: salt, body and tag when sealed;
/// the body alone (the other two empty) when not.
pub(super) type Pieces<'b> = [&'b [u8]; 3];

/// Bytes of each sample taken to tell whether a chunk compresses.
const SAMPLE: usize = 4096;
/// Where the samples start, in quarters of the chunk.
const SAMPLES: usize = 4;

/// Whether `plain` looks incompressible: every one of four 4 KiB samples
/// (at the start and each quarter) shrinks by less than 3 % at zstd
/// level 1. Random and already compressed or encrypted data fail all
/// four; a chunk with any compressible quarter passes on that sample, so a
/// compressible chunk usually pays for one 4 KiB sample (under 1 % of its
/// compression), and an incompressible one for four instead of a whole
/// compression (zstd runs through random data at about the speed of
/// hashing it, so this halves what such a chunk costs).
fn incompressible(probe: &mut zstd::bulk::Compressor<'static>, plain: &[u8], out: &mut Vec<u8>) -> bool {
    if plain.len() < SAMPLES * SAMPLE {
        return false;
    }
    for i in 0..SAMPLES {
        let at = plain.len() / SAMPLES * i;
        let sample = &plain[at..at + SAMPLE];
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(SAMPLE));
        match probe.compress_to_buffer(sample, out) {
            Ok(n) if n < SAMPLE - SAMPLE * 3 / 100 => return false,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    true
}

impl Packer {
    pub(super) fn new(store: &Handle) -> Packer {
        let compressor = match store.config.compression {
            Compression::Zstd => zstd::bulk::Compressor::new(store.config.zstd_level).ok(),
            Compression::None => None,
        };
        let keys = match store.crypt() {
            Crypt::Sealed(k) => Some(k.clone()),
            _ => None,
        };
        let probe = compressor.as_ref().and_then(|_| zstd::bulk::Compressor::new(1).ok());
        Packer { compressor, probe, keys, buf: Vec::new(), copy: Vec::new(), ends: SealedEnds::default() }
    }

    /// The stored bytes of chunk `id` and how they are compressed: zstd
    /// output only when it is smaller (and not tried when samples say it
    /// will not be), then sealed in an encrypted store.
    pub(super) fn pack<'b>(&'b mut self, id: ChunkId, chunk: ChunkBytes<'b>) -> (Compression, Pieces<'b>) {
        let mut compressed = None;
        let plain_len = {
            let plain: &[u8] = match &chunk {
                ChunkBytes::Owned(b) => b,
                ChunkBytes::Borrowed(b) => b,
            };
            if let Some(c) = self.compressor.as_mut()
                && !self.probe.as_mut().is_some_and(|p| incompressible(p, plain, &mut self.buf))
            {
                self.buf.clear();
                self.buf.reserve(zstd::zstd_safe::compress_bound(plain.len()));
                if let Ok(n) = c.compress_to_buffer(plain, &mut self.buf)
                    && n < plain.len()
                {
                    compressed = Some(n);
                }
            }
            plain.len() as u32
        };
        let Some(keys) = &self.keys else {
            return match (compressed, chunk) {
                (Some(n), _) => (Compression::Zstd, [&self.buf[..n], &[], &[]]),
                (None, ChunkBytes::Owned(b)) => (Compression::None, [b, &[], &[]]),
                (None, ChunkBytes::Borrowed(b)) => (Compression::None, [b, &[], &[]]),
            };
        };
        let (compression, body): (Compression, &mut [u8]) = match (compressed, chunk) {
            (Some(n), _) => (Compression::Zstd, &mut self.buf[..n]),
            (None, ChunkBytes::Owned(b)) => (Compression::None, b),
            (None, ChunkBytes::Borrowed(b)) => {
                self.copy.clear();
                self.copy.extend_from_slice(b);
                (Compression::None, &mut self.copy[..])
            }
        };
        self.ends = seal_in_place(keys, id, compression, plain_len, body);
        (compression, [&self.ends.salt, body, &self.ends.tag])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_tell_random_chunks_from_compressible_ones() {
        let mut probe = zstd::bulk::Compressor::new(1).unwrap();
        let mut out = Vec::new();
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let random: Vec<u8> = (0..512 * 1024)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        assert!(incompressible(&mut probe, &random, &mut out));
        // Text, zeros, and random data with one compressible quarter.
        let text = b"the quick brown fox jumps over the lazy dog ".repeat(12_000);
        assert!(!incompressible(&mut probe, &text, &mut out));
        assert!(!incompressible(&mut probe, &vec![0u8; 512 * 1024], &mut out));
        let mut mixed = random.clone();
        mixed[256 * 1024..256 * 1024 + 8192].fill(7);
        assert!(!incompressible(&mut probe, &mixed, &mut out));
        // Too small to sample: compressed as it is.
        assert!(!incompressible(&mut probe, &random[..8192], &mut out));
    }
}
