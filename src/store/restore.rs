//! Reading backups: [`BackupReader`] is a [`VirtualDisk`] over a backup
//! (mountable, and what the writers take to restore it), and
//! [`Store::restore`] writes one out as raw, VHD or VHDX.
//!
//! Every chunk is checked as it is read (record CRC, decompression, plain
//! length, BLAKE3 against its id); a chunk that fails is read from another
//! stored copy if there is one, and otherwise the read fails. A restore
//! never emits a byte it could not verify: it writes to a temporary file
//! that a failure removes.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::backend::{Backend, LockGuard, LockMode};
use super::chunk::{ChunkId, RecordError, decode_record, decode_record_into};
use super::error::{Result, StoreError};
use super::index::Index;
use super::manifest::{ChainCursor, Resolved};
use super::{Store, pack::PackId};
use crate::disk::{DiskInfo, Extent, ExtentState, ImageFormat, Subformat, VirtualDisk, push_extent};
use crate::export::{ExportOptions, ExportReport, Target, export};
use crate::format::Guid;

/// A backup opened for reading. Holds the store lock shared while it lives,
/// so vacuum cannot remove what it reads.
///
/// Memory: 12 bytes per run of slots holding one chunk or zeros, 32 per
/// distinct chunk, and the store index. It grows with what the manifest
/// records, never with the size its header claims: a sparse 64 TiB backup
/// costs what its few runs cost.
pub struct BackupReader {
    backend: Arc<dyn Backend>,
    index: Arc<Index>,
    info: DiskInfo,
    id: String,
    chunk: u64,
    /// First slot of each run, ascending from 0.
    run_starts: Vec<u64>,
    /// Per run: 0 for zeros, else 1 + an index into `ids`.
    run_values: Vec<u32>,
    ids: Vec<ChunkId>,
    /// The most recently decoded chunk, for reads smaller than a chunk.
    last: Mutex<Option<(u64, Vec<u8>)>>,
    _lock: Box<dyn LockGuard>,
}

impl std::fmt::Debug for BackupReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupReader").field("id", &self.id).field("size", &self.info.virtual_size).finish()
    }
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RestoreReport {
    pub id: String,
    pub target: Target,
    pub output: PathBuf,
    #[serde(flatten)]
    pub export: ExportReport,
}

impl Store {
    /// Opens backup `spec` (id, id prefix, or name) for reading.
    pub fn reader(&self, spec: &str) -> Result<BackupReader> {
        let lock = self.lock(LockMode::Shared, false)?;
        let id = self.resolve(spec)?.id;
        let index = Arc::new(Index::load(self.backend())?);
        self.reader_with(&id, index, lock)
    }

    /// Opens backup `id` with an index already loaded, under a lock the
    /// caller holds.
    pub(crate) fn reader_with(&self, id: &str, index: Arc<Index>, lock: Box<dyn LockGuard>) -> Result<BackupReader> {
        let id = id.to_string();
        let mut cursor = ChainCursor::open(self.backend(), &id)?;
        let header = cursor.header().clone();
        let chunk = u64::from(header.chunk_size);
        let (mut run_starts, mut run_values) = (Vec::new(), Vec::new());
        let mut next = 0u64;
        let mut ids = Vec::new();
        let mut seen: HashMap<ChunkId, u32> = HashMap::new();
        while let Some((r, n)) = cursor.next_run()? {
            let v = match r {
                Resolved::Zero => 0,
                Resolved::Data(cid) => *seen.entry(cid).or_insert_with(|| {
                    ids.push(cid);
                    ids.len() as u32
                }),
            };
            if run_values.last() != Some(&v) {
                run_starts.push(next);
                run_values.push(v);
            }
            next += n;
        }
        drop(seen);
        let source = &header.source;
        let guid = |s: &str| s.parse::<Guid>().unwrap_or(Guid::NIL);
        let info = DiskInfo {
            format: ImageFormat::Backup,
            subformat: Subformat::Dynamic,
            virtual_size: header.virtual_size,
            block_size: Some(header.chunk_size),
            logical_sector_size: source.logical_sector_size,
            physical_sector_size: source.physical_sector_size,
            disk_id: guid(&source.disk_id),
            identity: guid(&source.identity),
            file_size: 0,
            path: self.path().join(super::manifest::manifest_key(&id)),
            creator: format!("vhdkit backup {id} of {} ({})", header.name, source.file_name),
            parent: None,
            log_replay: None,
            warnings: Vec::new(),
        };
        Ok(BackupReader {
            backend: self.backend.clone(),
            index,
            info,
            id,
            chunk,
            run_starts,
            run_values,
            ids,
            last: Mutex::new(None),
            _lock: lock,
        })
    }

    /// Restores backup `spec` to `out` in `target` format. A VHD or VHDX
    /// output keeps the original disk's id so the VM sees the same disk.
    pub fn restore(&self, spec: &str, out: &Path, target: Target, options: &ExportOptions) -> Result<RestoreReport> {
        let reader = self.reader(spec)?;
        let mut options = options.clone();
        if options.disk_id.is_none() && !reader.info.disk_id.is_nil() {
            options.disk_id = Some(reader.info.disk_id);
        }
        let export = export(&reader, out, target, &options).map_err(|e| match e {
            crate::Error::Store(s) => s,
            other => StoreError::Invalid(other.to_string()),
        })?;
        let report = RestoreReport { id: reader.id.clone(), target, output: out.to_path_buf(), export };
        self.log_job("restore", &serde_json::to_value(&report).unwrap_or_default());
        Ok(report)
    }
}

impl BackupReader {
    /// The backup's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The run holding `slot`: its index and the slot after it.
    fn run_of(&self, slot: u64) -> Option<(usize, u64)> {
        let run = self.run_starts.partition_point(|&s| s <= slot).checked_sub(1)?;
        let end = self.run_starts.get(run + 1).copied().unwrap_or(self.info.virtual_size.div_ceil(self.chunk));
        Some((run, end))
    }

    fn chunk_of(&self, slot: u64) -> Option<ChunkId> {
        let v = *self.run_values.get(self.run_of(slot)?.0)?;
        (v != 0).then(|| self.ids.get(v as usize - 1).copied()).flatten()
    }

    /// Reads and verifies chunk `id` (slot `slot`, for messages) into `out`.
    fn fetch(&self, slot: u64, id: ChunkId, out: &mut Vec<u8>, record: &mut Vec<u8>) -> Result<()> {
        fetch_chunk(&*self.backend, &self.index, id, out, record).map_err(|reason| StoreError::ChunkUnavailable {
            id: id.to_hex(),
            backup: self.id.clone(),
            slot,
            reason,
        })
    }

    /// Fills `dst` with bytes `within..` of slot `slot`.
    fn read_slot(&self, slot: u64, within: usize, dst: &mut [u8], scratch: &mut (Vec<u8>, Vec<u8>)) -> Result<()> {
        let Some(id) = self.chunk_of(slot) else {
            dst.fill(0);
            return Ok(());
        };
        if let Ok(last) = self.last.lock()
            && let Some((s, bytes)) = last.as_ref()
            && *s == slot
            && let Some(cached) = bytes.get(within..within + dst.len())
        {
            dst.copy_from_slice(cached);
            return Ok(());
        }
        let (plain, record) = scratch;
        let slot_len = self.chunk.min(self.info.virtual_size - slot * self.chunk) as usize;
        if within == 0 && dst.len() == slot_len {
            // The whole slot: decode straight into the caller's buffer.
            return fetch_chunk_into(&*self.backend, &self.index, id, dst, record).map_err(|reason| {
                StoreError::ChunkUnavailable { id: id.to_hex(), backup: self.id.clone(), slot, reason }
            });
        }
        self.fetch(slot, id, plain, record)?;
        // A chunk is exactly its slot's length; anything else is a damaged
        // manifest, and the cache below relies on it.
        let end = within + dst.len();
        if plain.len() != slot_len || end > slot_len {
            return Err(StoreError::ChunkUnavailable {
                id: id.to_hex(),
                backup: self.id.clone(),
                slot,
                reason: format!("the chunk holds {} bytes, the slot {slot_len}", plain.len()),
            });
        }
        dst.copy_from_slice(&plain[within..end]);
        if let Ok(mut last) = self.last.lock() {
            // Keep the chunk for the next piece of the slot; its buffer
            // trades places with the one cached before, no copy.
            let previous = last.replace((slot, std::mem::take(plain)));
            if let Some((_, buf)) = previous {
                *plain = buf;
            }
        }
        Ok(())
    }
}

/// Reads chunk `id` into `out` from the first stored copy that verifies
/// (record CRC, decompression, length, BLAKE3); `record` is scratch space.
/// On failure, says why the last copy failed.
pub(crate) fn fetch_chunk(
    backend: &dyn Backend,
    index: &Index,
    id: ChunkId,
    out: &mut Vec<u8>,
    record: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    fetch_with(backend, index, id, record, |r| decode_record(r, id, out))
}

/// [`fetch_chunk`] into `dst`, which must be exactly the chunk's length.
pub(crate) fn fetch_chunk_into(
    backend: &dyn Backend,
    index: &Index,
    id: ChunkId,
    dst: &mut [u8],
    record: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    fetch_with(backend, index, id, record, |r| decode_record_into(r, id, dst))
}

/// Tries each stored copy of `id` in turn until `decode` accepts one.
fn fetch_with(
    backend: &dyn Backend,
    index: &Index,
    id: ChunkId,
    record: &mut Vec<u8>,
    mut decode: impl FnMut(&[u8]) -> std::result::Result<(), RecordError>,
) -> std::result::Result<(), String> {
    let mut last_error = String::from("no stored copy");
    for loc in index.locations(&id) {
        let key = PackId::key(&loc.pack);
        record.resize(loc.length as usize, 0);
        if let Err(e) = backend.read_at(&key, record, loc.offset) {
            last_error = format!("{}: {e}", backend.describe(&key).display());
            continue;
        }
        match decode(record) {
            Ok(()) => return Ok(()),
            Err(e) => last_error = format!("{} at byte {}: {e}", backend.describe(&key).display(), loc.offset),
        }
    }
    Err(last_error)
}

impl VirtualDisk for BackupReader {
    fn info(&self) -> &DiskInfo {
        &self.info
    }

    fn extents(&self, range: Range<u64>) -> crate::Result<Vec<Extent>> {
        let size = self.info.virtual_size;
        let range = range.start.min(size)..range.end.min(size);
        let mut out = Vec::new();
        let mut off = range.start;
        while off < range.end {
            let Some((run, next)) = self.run_of(off / self.chunk) else { break };
            let end = next.saturating_mul(self.chunk).min(range.end);
            let state = if self.run_values[run] != 0 { ExtentState::Data } else { ExtentState::Unallocated };
            push_extent(&mut out, Extent { offset: off, length: end - off, state, depth: 0 });
            off = end;
        }
        Ok(out)
    }

    /// Reads verified bytes; chunks of one call are fetched and checked on
    /// several threads at once.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> crate::Result<()> {
        let size = self.info.virtual_size;
        if offset.checked_add(buf.len() as u64).is_none_or(|end| end > size) {
            return Err(crate::DiskError::OutOfRange { offset, len: buf.len() as u64, size }.into());
        }
        // Cut the request into per-slot pieces.
        let mut pieces: Vec<(u64, usize, &mut [u8])> = Vec::new();
        let mut rest = buf;
        let mut off = offset;
        while !rest.is_empty() {
            let slot = off / self.chunk;
            let within = (off % self.chunk) as usize;
            let n = rest.len().min(self.chunk as usize - within);
            let (piece, tail) = rest.split_at_mut(n);
            pieces.push((slot, within, piece));
            rest = tail;
            off += n as u64;
        }
        let stored = pieces.iter().filter(|p| self.chunk_of(p.0).is_some()).count();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(stored);
        if threads <= 1 {
            let mut scratch = (Vec::new(), Vec::new());
            for (slot, within, dst) in pieces {
                self.read_slot(slot, within, dst, &mut scratch)?;
            }
            return Ok(());
        }
        let per = pieces.len().div_ceil(threads);
        let mut groups: Vec<Vec<(u64, usize, &mut [u8])>> = Vec::new();
        let mut it = pieces.into_iter().peekable();
        while it.peek().is_some() {
            groups.push(it.by_ref().take(per).collect());
        }
        std::thread::scope(|scope| {
            let handles: Vec<_> = groups
                .into_iter()
                .map(|group| {
                    scope.spawn(move || -> Result<()> {
                        let mut scratch = (Vec::new(), Vec::new());
                        for (slot, within, dst) in group {
                            self.read_slot(slot, within, dst, &mut scratch)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join().map_err(|_| StoreError::Invalid("a reading thread panicked".into()))??;
            }
            Ok::<(), StoreError>(())
        })?;
        Ok(())
    }
}
