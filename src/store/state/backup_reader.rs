//! [`BackupReader`]: a backup as a [`VirtualDisk`], read through a
//! [`ChunkSource`] (several ranged reads in flight, neighbours in a pack
//! read together, a bounded cache).
//!
//! It reads ahead for whoever reads it in order: a restore's writer, a
//! copy, `qemu-img convert` over NBD, a file copied out of its file
//! system. A read that starts where an earlier one ended (or up to two
//! chunks before it, as overlapping NBD requests do) continues that
//! stream; each stream's read-ahead starts at four chunks and doubles with
//! what it has read, up to the store's read-ahead. Up to four streams are
//! followed at once; a random reader reads only what it asks for.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use crate::disk::{DiskInfo, Extent, ExtentState, ImageFormat, Subformat, VirtualDisk, push_extent};
use crate::store::error::{Result, StoreError};
use crate::store::model::id::{BackupId, ChunkId, PointId};
use crate::store::state::chain::{ChainCursor, Resolved};
use crate::store::model::limits::ReadSettings;
use crate::store::state::chunk_source::ChunkSource;
use crate::store::format::point::AttachmentRecord;
use crate::store::state::handle::Handle;
use crate::store::state::index::Index;
use crate::store::state::lease::Lease;

/// Sequential streams followed at once.
const STREAMS: usize = 4;

/// A backup opened for reading. Holds a read lease while it lives, so no
/// vacuum deletes what it may read.
///
/// Memory: 12 bytes per run of slots holding one chunk or zeros, 32 per
/// distinct chunk, and the store index. It grows with what the manifest
/// records, never with the size its header claims: a sparse 64 TiB backup
/// costs what its few runs cost. Its reads add at most twice the store's
/// read-ahead plus 16 MiB of cached chunks (see
/// [`OpenOptions::read_ahead`](crate::store::OpenOptions::read_ahead)).
pub struct BackupReader {
    source: Arc<ChunkSource>,
    pub(crate) info: DiskInfo,
    pub(crate) id: BackupId,
    chunk: u64,
    /// First slot of each run, ascending from 0.
    run_starts: Vec<u64>,
    /// Per run: 0 for zeros, else 1 + an index into `ids`.
    run_values: Vec<u32>,
    ids: Vec<ChunkId>,
    /// Where each sequential stream's last read ended, and how much it has read.
    streams: Mutex<Vec<Stream>>,
    _lease: Option<Lease>,
}

#[derive(Debug, Clone, Copy)]
struct Stream {
    /// Where its last read ended.
    end: u64,
    /// Bytes it has read.
    read: u64,
    /// How far its read-ahead was planned.
    planned: u64,
}

impl std::fmt::Debug for BackupReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupReader").field("id", &self.id).field("size", &self.info.virtual_size).finish()
    }
}

/// Opens backup `id` with an index already loaded, under a lock the
/// caller holds, reading as the store's settings say.
pub(crate) fn reader_with(
    store: &Handle,
    id: &BackupId,
    index: Arc<Index>,
    lease: Option<Lease>,
) -> Result<BackupReader> {
    let source = ChunkSource::new(store.backend.clone(), index, store.crypt.clone(), store.reads);
    reader_on(store, id, Arc::new(source), lease)
}

/// A source of chunks for readers of `store` that read with `reads`; the
/// readers of several backups may share one (a copied restore point's
/// disks, read one after the other: one cache, one pool, one set of
/// threads).
pub(crate) fn chunk_source(store: &Handle, index: Arc<Index>, reads: ReadSettings) -> Arc<ChunkSource> {
    Arc::new(ChunkSource::new(store.backend.clone(), index, store.crypt.clone(), reads))
}

/// Opens backup `id`, reading its chunks through `source`.
pub(crate) fn reader_on(
    store: &Handle,
    id: &BackupId,
    source: Arc<ChunkSource>,
    lease: Option<Lease>,
) -> Result<BackupReader> {
    let id = id.clone();
    let mut cursor = ChainCursor::open(store.backend(), &id)?;
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
    let origin = &header.source;
    let info = DiskInfo {
        format: ImageFormat::Backup,
        subformat: Subformat::Dynamic,
        virtual_size: header.virtual_size,
        block_size: Some(header.chunk_size),
        logical_sector_size: origin.logical_sector_size,
        physical_sector_size: origin.physical_sector_size,
        disk_id: origin.disk_id,
        identity: origin.identity,
        file_size: 0,
        path: store.path().join(crate::store::format::manifest::manifest_key(&id)),
        creator: format!("vhdkit backup {id} of {} ({})", header.name, origin.file_name),
        parent: None,
        log_replay: None,
        warnings: Vec::new(),
    };
    Ok(BackupReader {
        source,
        info,
        id,
        chunk,
        run_starts,
        run_values,
        ids,
        streams: Mutex::new(Vec::new()),
        _lease: lease,
    })
}

impl BackupReader {
    /// The backup's id.
    pub fn id(&self) -> &BackupId {
        &self.id
    }

    fn slots(&self) -> u64 {
        self.info.virtual_size.div_ceil(self.chunk)
    }

    /// The run holding `slot`: its index and the slot after it.
    fn run_of(&self, slot: u64) -> Option<(usize, u64)> {
        let run = self.run_starts.partition_point(|&s| s <= slot).checked_sub(1)?;
        let end = self.run_starts.get(run + 1).copied().unwrap_or(self.slots());
        Some((run, end))
    }

    fn chunk_of(&self, slot: u64) -> Option<ChunkId> {
        let v = *self.run_values.get(self.run_of(slot)?.0)?;
        (v != 0).then(|| self.ids.get(v as usize - 1).copied()).flatten()
    }

    /// Records a read of `offset..end` and says which bytes to read ahead
    /// now: none for a read that continues no stream, nor while more than
    /// half of the stream's window is still planned. Planning half a
    /// window at a time lets records that lie together in a pack be
    /// fetched together, not a few chunks per call.
    fn follow(&self, offset: u64, end: u64) -> Range<u64> {
        let Ok(mut streams) = self.streams.lock() else { return 0..0 };
        let near = |s: &Stream| offset <= s.end && offset.saturating_add(2 * self.chunk) >= s.end;
        let Some(i) = streams.iter().position(near) else {
            streams.insert(0, Stream { end, read: end - offset, planned: end });
            streams.truncate(STREAMS);
            return 0..0;
        };
        let mut s = streams.remove(i);
        s.read += end.saturating_sub(s.end);
        s.end = s.end.max(end);
        // Four chunks to start, never past the store's read-ahead (which
        // may be smaller than four chunks: then that is the window).
        let window = s.read.saturating_mul(2).max(4 * self.chunk).min(self.source.settings().read_ahead);
        let target = s.end.saturating_add(window).min(self.info.virtual_size);
        let from = s.planned.max(s.end);
        let size = self.info.virtual_size;
        let worth = target.saturating_sub(from) * 2 >= window || (target == size && from < target);
        let plan = if worth {
            s.planned = target;
            from..target
        } else {
            0..0
        };
        streams.insert(0, s);
        plan
    }

    /// The chunks of `range` (zero runs skipped) not yet cached or being read.
    fn ahead_of(&self, range: Range<u64>) -> Vec<ChunkId> {
        let mut out = Vec::new();
        if range.is_empty() {
            return out;
        }
        let mut slot = range.start / self.chunk;
        let last = range.end.div_ceil(self.chunk).min(self.slots());
        while slot < last {
            let Some((run, next)) = self.run_of(slot) else { break };
            let v = self.run_values[run];
            if v != 0
                && let Some(id) = self.ids.get(v as usize - 1)
                && !self.source.has(id)
                && out.last() != Some(id)
            {
                out.push(*id);
            }
            // A run of one chunk repeated counts once; a data run of many
            // distinct chunks is one run per chunk.
            slot = next;
        }
        out
    }

    /// A store failure as the disk layer reports a disk's own failure,
    /// sorted by the store error's kind (the store error is its source).
    fn disk_error(&self, e: StoreError) -> crate::DiskError {
        crate::DiskError::from_source(self.info.path.clone(), e.kind(), e)
    }

    /// Fills `buf` from `offset` (in range).
    fn read_checked(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset + buf.len() as u64;
        // Per slot: its piece of `buf`, and where in the slot it starts.
        let mut pieces: Vec<(u64, usize, &mut [u8])> = Vec::new();
        let mut need: Vec<ChunkId> = Vec::new();
        let mut rest = buf;
        let mut off = offset;
        while !rest.is_empty() {
            let slot = off / self.chunk;
            let within = (off % self.chunk) as usize;
            let n = rest.len().min(self.chunk as usize - within);
            let (piece, tail) = rest.split_at_mut(n);
            match self.chunk_of(slot) {
                Some(id) => {
                    need.push(id);
                    pieces.push((slot, within, piece));
                }
                None => piece.fill(0),
            }
            rest = tail;
            off += n as u64;
        }
        let ahead = self.ahead_of(self.follow(offset, end));
        let chunks = self.source.get(&need, &ahead);
        for ((slot, within, dst), (id, chunk)) in pieces.into_iter().zip(need.iter().zip(chunks)) {
            let unavailable = |reason: String| StoreError::ChunkUnavailable {
                id: id.to_hex(),
                backup: self.id.to_string(),
                slot,
                reason,
            };
            let bytes = chunk.map_err(unavailable)?;
            // A chunk is exactly its slot's length; anything else is a
            // damaged manifest.
            let slot_len = self.chunk.min(self.info.virtual_size - slot * self.chunk) as usize;
            let piece = bytes.get(within..within + dst.len()).filter(|_| bytes.len() == slot_len);
            let Some(piece) = piece else {
                return Err(unavailable(format!("the chunk holds {} bytes, the slot {slot_len}", bytes.len())));
            };
            dst.copy_from_slice(piece);
        }
        Ok(())
    }
}

impl VirtualDisk for BackupReader {
    fn info(&self) -> &DiskInfo {
        &self.info
    }

    fn extents(&self, range: Range<u64>) -> crate::disk::Result<Vec<Extent>> {
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

    /// Reads verified bytes: the chunks of one call are read together
    /// (several requests in flight), and a sequential reader's next chunks
    /// are read while it works on these.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> crate::disk::Result<()> {
        let size = self.info.virtual_size;
        if offset.checked_add(buf.len() as u64).is_none_or(|end| end > size) {
            return Err(crate::DiskError::OutOfRange { offset, len: buf.len() as u64, size });
        }
        self.read_checked(buf, offset).map_err(|e| self.disk_error(e))
    }
}

/// An attachment's bytes, every chunk verified.
pub(crate) fn attachment_bytes(
    store: &Handle,
    index: Arc<Index>,
    point: &PointId,
    a: &AttachmentRecord,
) -> Result<Vec<u8>> {
    let chunk = u64::from(store.config.chunk_size);
    let slots = a.size.div_ceil(chunk);
    if a.chunks.len() as u64 != slots || a.size > crate::store::format::point::MAX_ATTACHMENT_BYTES {
        return Err(StoreError::corrupt(
            store.backend().describe(&crate::store::format::point::point_key(point)),
            "restore point",
            0,
            format!("attachment {:?}: {} chunks for {} bytes", a.name, a.chunks.len(), a.size),
        ));
    }
    let mut out = vec![0u8; a.size as usize];
    let source = ChunkSource::new(store.backend.clone(), index, store.crypt.clone(), store.reads);
    // A window of chunks at a time: their reads in flight together.
    let window = (store.reads.read_ahead / chunk).max(1) as usize;
    let slots: Vec<(usize, &mut [u8])> = out.chunks_mut(chunk as usize).enumerate().collect();
    let mut slots = slots.into_iter().zip(a.chunks.iter()).filter_map(|(s, c)| c.map(|id| (s, id))).peekable();
    while slots.peek().is_some() {
        let batch: Vec<_> = slots.by_ref().take(window).collect();
        let ids: Vec<ChunkId> = batch.iter().map(|(_, id)| *id).collect();
        for (((i, dst), id), got) in batch.into_iter().zip(source.get(&ids, &[])) {
            let unavailable = |reason| StoreError::ChunkUnavailable {
                id: id.to_hex(),
                backup: format!("{point} (attachment {})", a.name),
                slot: i as u64,
                reason,
            };
            let bytes = got.map_err(unavailable)?;
            if bytes.len() != dst.len() {
                return Err(unavailable(format!("the chunk holds {} bytes, the slot {}", bytes.len(), dst.len())));
            }
            dst.copy_from_slice(&bytes);
        }
    }
    Ok(out)
}
