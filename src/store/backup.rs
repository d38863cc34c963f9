//! Backups: cutting a disk into chunks, hashing, deduplicating, packing.
//!
//! Three stages run at once with bounded memory (a fixed pool of chunk
//! buffers, whatever the disk's size):
//!
//! 1. a reader walks the disk's allocation map and reads only slots that
//!    may hold data (and, for an incremental, only slots that changed);
//! 2. workers on every core test for zeros, hash with BLAKE3, look the id
//!    up in the store's index, compress new chunks and append them to packs
//!    of their own;
//! 3. the writer (the calling thread) takes results back into slot order
//!    and streams the manifest.
//!
//! Write order (docs/store-format.md): packs sealed and flushed, then
//! index files for their chunks (one every `Limits::index_flush` entries and
//! one at the end), then the manifest, whose commit is the backup's. A
//! process killed earlier leaves unreferenced files that vacuum removes,
//! never a backup that fails to restore.
//!
//! Memory: the buffer pool, the claim set and pending index entries are
//! bounded; what grows is the store's index (64 bytes per stored chunk,
//! loaded once), which depends on the store, not on the disk.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use serde::Serialize;

use super::backend::LockMode;
use super::chunk::{ChunkId, Compression};
use super::error::{Result, StoreError};
use super::index::{Index, IndexEntry, Location, write_index_file};
use super::manifest::{ChainCursor, Kind, ManifestHeader, ManifestWriter, Resolved, Slot, SourceInfo};
use super::pack::PackWriter;
use super::time::Moment;
use super::{Store, new_backup_id};
use crate::disk::{DiskInfo, ExtentState, VirtualDisk};
use crate::zero::is_all_zero;

/// How an incremental found what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeSource {
    /// A full backup: everything allocated was read.
    None,
    /// The source is a differencing child of the previous backup's image:
    /// its own allocation is the change set.
    Differencing,
    /// A changed-range list from the caller (RCT, CBT, any tracker).
    Ranges,
    /// Every allocated chunk read and compared with the previous backup.
    Hash,
}

impl ChangeSource {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ChangeSource::None => "none",
            ChangeSource::Differencing => "differencing",
            ChangeSource::Ranges => "ranges",
            ChangeSource::Hash => "hash",
        }
    }
}

/// Progress of a running backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the disk handled so far (read, skipped or inherited).
    pub bytes_done: u64,
    /// Bytes of the disk.
    pub bytes_total: u64,
}

/// How to back up.
#[derive(Default)]
pub struct BackupOptions<'a> {
    /// The backup's name: usually the disk's. Incrementals continue the
    /// newest backup of the same name.
    pub name: String,
    /// Make a full backup even if an incremental is possible.
    pub full: bool,
    /// Byte ranges of the disk that changed since the previous backup of
    /// this name (from RCT, CBT or any tracker); widened to chunks.
    pub changed: Option<Vec<Range<u64>>>,
    /// Back up even if the change information does not match the previous
    /// backup's source identity.
    pub force: bool,
    /// Worker threads (0: one per core).
    pub threads: usize,
    /// Called now and then from the calling thread.
    pub progress: Option<&'a (dyn Fn(Progress) + Sync)>,
    /// Longest incremental chain kept before the new backup is merged into
    /// a full one (0: the default, 14).
    pub max_chain: usize,
    /// When the backup was taken (default: now). For importing backups made
    /// elsewhere, and for testing retention.
    pub created: Option<Moment>,
}

/// The default cap on incremental chains.
pub const DEFAULT_MAX_CHAIN: usize = 14;

/// What a backup did (the JSON keys of the command-line contract).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackupReport {
    pub id: String,
    pub name: String,
    pub kind: Kind,
    pub parent: Option<String>,
    pub change_source: ChangeSource,
    /// Bytes of the disk the backup considered (the whole disk for a full
    /// backup; the change set for an incremental).
    pub bytes_scanned: u64,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Chunks stored for the first time, and their plain bytes.
    pub new_chunks: u64,
    pub new_bytes: u64,
    /// Chunks already in the store (or met earlier in this backup).
    pub dedup_chunks: u64,
    /// Slots that are all zero.
    pub zero_chunks: u64,
    /// Bytes written to packs (records with their headers, after compression).
    pub stored_bytes: u64,
    pub seconds: f64,
    /// The chain grew past its cap and this backup was merged into a full
    /// one (metadata only), or the merge was deferred because the store was busy.
    pub merged: Option<bool>,
}

/// What to do with a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    Read,
    Zero,
    Inherit,
    /// A differencing child holds part of the slot: the previous backup's
    /// chunk with the child's own bytes laid over it.
    Partial,
}

/// What changed since the previous backup.
#[derive(Debug, Clone)]
pub(crate) enum ChangeSet {
    /// Everything allocated (a full backup, or hash comparison).
    All,
    /// These slot ranges (sorted, merged); the rest is inherited.
    Slots(Vec<Range<u64>>),
    /// The source's own allocation (a differencing child of the previous
    /// backup's image); the rest is inherited.
    Own,
}

/// What the reader and workers send the writer, keyed by first slot.
enum Item<'d> {
    Run(Slot, u64),
    Chunk(Outcome<'d>),
}

enum Outcome<'d> {
    Zero(Chunk<'d>),
    /// Already stored (before this backup, or by another worker in it).
    Known(ChunkId, Chunk<'d>),
    /// Stored by this backup: the record's length in its pack.
    Stored {
        id: ChunkId,
        plain: Chunk<'d>,
        record_len: u32,
    },
}

/// One slot's bytes: read into a pool buffer, or borrowed from the disk
/// (a memory-mapped image) and hashed in place. Either way it holds a pool
/// buffer, so the pool still bounds how far reading runs ahead.
struct Chunk<'d> {
    buf: Vec<u8>,
    view: Option<&'d [u8]>,
}

impl Chunk<'_> {
    fn bytes(&self) -> &[u8] {
        self.view.unwrap_or(&self.buf)
    }
}

struct Job<'d> {
    slot: u64,
    chunk: Chunk<'d>,
}

/// The slot runs a disk needs, from its allocation map: slots no extent
/// with data touches are zero; with `ChangeSet::Slots`, slots outside the
/// change are inherited; with `ChangeSet::Own`, slots the source holds none
/// of are inherited and slots it holds only part of are partial.
fn plan_window(
    disk: &dyn VirtualDisk,
    chunk: u64,
    slots: Range<u64>,
    change: &ChangeSet,
    out: &mut Vec<(Plan, u64)>,
) -> crate::Result<()> {
    let size = disk.size();
    let bytes = slots.start * chunk..(slots.end * chunk).min(size);
    let mut push = |p: Plan, n: u64| {
        if n == 0 {
            return;
        }
        match out.last_mut() {
            Some((q, m)) if *q == p => *m += n,
            _ => out.push((p, n)),
        }
    };
    if let ChangeSet::Own = change {
        // Per slot: how many of its bytes the child holds itself, and
        // whether any of them is data (rather than explicit zeros).
        let own = disk.own_extents(bytes.clone())?;
        let mut held = vec![0u64; (slots.end - slots.start) as usize];
        let mut data = vec![false; held.len()];
        for e in own.iter().filter(|e| e.depth == 0 && matches!(e.state, ExtentState::Data | ExtentState::Zero)) {
            let mut off = e.offset;
            while off < e.offset + e.length {
                let slot = off / chunk;
                let end = ((slot + 1) * chunk).min(e.offset + e.length);
                let i = (slot - slots.start) as usize;
                held[i] += end - off;
                data[i] |= e.state == ExtentState::Data;
                off = end;
            }
        }
        for (i, (&h, &d)) in held.iter().zip(&data).enumerate() {
            let slot = slots.start + i as u64;
            let len = (size - slot * chunk).min(chunk);
            push(
                match (h, d) {
                    (0, _) => Plan::Inherit,
                    (h, false) if h == len => Plan::Zero,
                    (h, _) if h == len => Plan::Read,
                    _ => Plan::Partial,
                },
                1,
            );
        }
        return Ok(());
    }
    let changed = match change {
        ChangeSet::Slots(v) => Some(v.as_slice()),
        _ => None,
    };
    let mut reads: Vec<Range<u64>> = Vec::new();
    for e in disk.extents(bytes.clone())? {
        if matches!(e.state, ExtentState::Data | ExtentState::Parent) {
            let (a, b) = (e.offset / chunk, (e.offset + e.length).div_ceil(chunk));
            match reads.last_mut() {
                Some(last) if last.end >= a => last.end = last.end.max(b),
                _ => reads.push(a..b),
            }
        }
    }
    // Walk the window slot run by slot run, intersecting reads and changes.
    let mut s = slots.start;
    let mut r = reads.iter().peekable();
    let mut c = changed.map(|c| c.iter().filter(|x| x.end > slots.start && x.start < slots.end).peekable());
    while s < slots.end {
        while r.peek().is_some_and(|x| x.end <= s) {
            r.next();
        }
        let (in_read, read_edge) = match r.peek() {
            Some(x) if x.start <= s => (true, x.end),
            Some(x) => (false, x.start),
            None => (false, slots.end),
        };
        let (in_changed, change_edge) = match &mut c {
            None => (true, slots.end),
            Some(c) => {
                while c.peek().is_some_and(|x| x.end <= s) {
                    c.next();
                }
                match c.peek() {
                    Some(x) if x.start <= s => (true, x.end),
                    Some(x) => (false, x.start),
                    None => (false, slots.end),
                }
            }
        };
        let end = read_edge.min(change_edge).min(slots.end).max(s + 1);
        let plan = match (in_changed, in_read) {
            (false, _) => Plan::Inherit,
            (true, true) => Plan::Read,
            (true, false) => Plan::Zero,
        };
        push(plan, end - s);
        s = end;
    }
    Ok(())
}

/// The previous backup's chunks, walked in slot order (memory: one run per
/// manifest of its chain, whatever the disk's size).
pub(crate) struct PrevChunks<'a> {
    cursor: ChainCursor<'a>,
    index: &'a Index,
    backend: &'a dyn super::backend::Backend,
    /// The run the cursor last returned: first slot, length, content.
    run: Option<(u64, u64, Resolved)>,
    record: Vec<u8>,
}

impl PrevChunks<'_> {
    /// Fills `buf` with slot `slot` of the previous backup (slots must be
    /// asked for in increasing order).
    fn read(&mut self, slot: u64, buf: &mut [u8]) -> crate::Result<()> {
        loop {
            if let Some((start, len, r)) = self.run
                && slot < start + len
            {
                if slot < start {
                    return Err(StoreError::Invalid("previous chunks asked for out of order".into()).into());
                }
                match r {
                    Resolved::Zero => buf.fill(0),
                    Resolved::Data(id) => {
                        let mut plain = Vec::with_capacity(buf.len());
                        super::restore::fetch_chunk(self.backend, self.index, id, &mut plain, &mut self.record)
                            .map_err(|reason| StoreError::ChunkUnavailable {
                                id: id.to_hex(),
                                backup: self.cursor.header().id.clone(),
                                slot,
                                reason,
                            })?;
                        let n = buf.len().min(plain.len());
                        buf[..n].copy_from_slice(&plain[..n]);
                        buf[n..].fill(0);
                    }
                }
                return Ok(());
            }
            let next_start = self.run.map_or(0, |(s, l, _)| s + l);
            let (r, len) = self
                .cursor
                .next_run()?
                .ok_or_else(|| StoreError::Invalid("the previous backup is shorter than the disk".into()))?;
            self.run = Some((next_start, len, r));
        }
    }
}

/// Fills `buf` with a partial slot: the previous backup's bytes, then the
/// source's own data over them. Reads inside the source's own extents
/// never touch its parent.
fn read_partial(
    disk: &dyn VirtualDisk,
    prev: &mut PrevChunks<'_>,
    slot_start: u64,
    buf: &mut [u8],
) -> crate::Result<()> {
    let chunk = buf.len() as u64;
    prev.read(slot_start / chunk.max(1), buf)?;
    let end = slot_start + buf.len() as u64;
    for e in disk.own_extents(slot_start..end)? {
        if e.depth == 0 && matches!(e.state, ExtentState::Data | ExtentState::Zero) {
            let at = (e.offset - slot_start) as usize;
            disk.read_at(&mut buf[at..at + e.length as usize], e.offset)?;
        }
    }
    Ok(())
}

/// The reading stage: plans the disk window by window, sends runs to the
/// writer and reads to the workers.
fn read_stage<'d>(
    disk: &'d dyn VirtualDisk,
    chunk: u64,
    change: &ChangeSet,
    mut prev: Option<PrevChunks<'_>>,
    jobs: Sender<Job<'d>>,
    results: Sender<(u64, crate::Result<Item<'d>>)>,
    pool: Receiver<Vec<u8>>,
) {
    let slots = disk.size().div_ceil(chunk);
    // 64 MiB of disk per planning step bounds the extent list it holds.
    let window = ((64u64 << 20) / chunk).max(1);
    let mut runs = Vec::new();
    let mut slot = 0u64;
    while slot < slots {
        runs.clear();
        let end = (slot + window).min(slots);
        if let Err(e) = plan_window(disk, chunk, slot..end, change, &mut runs) {
            let _ = results.send((slot, Err(e)));
            return;
        }
        for &(plan, n) in &runs {
            match plan {
                Plan::Zero | Plan::Inherit => {
                    let s = if plan == Plan::Zero { Slot::Zero } else { Slot::Inherit };
                    if results.send((slot, Ok(Item::Run(s, n)))).is_err() {
                        return;
                    }
                    slot += n;
                }
                Plan::Read | Plan::Partial => {
                    for _ in 0..n {
                        let Ok(mut buf) = pool.recv() else { return };
                        let len = (disk.size() - slot * chunk).min(chunk) as usize;
                        let view = match plan {
                            Plan::Read => disk.borrow_at(slot * chunk, len),
                            _ => Ok(None),
                        };
                        let read = match (view, plan, prev.as_mut()) {
                            (Err(e), ..) => Err(e),
                            (Ok(Some(view)), ..) => Ok(Some(view)),
                            (Ok(None), Plan::Partial, Some(prev)) => {
                                buf.resize(len, 0);
                                read_partial(disk, prev, slot * chunk, &mut buf).map(|()| None)
                            }
                            (Ok(None), Plan::Partial, None) => {
                                Err(StoreError::Invalid("a partial slot without a previous backup".into()).into())
                            }
                            (Ok(None), ..) => {
                                buf.resize(len, 0);
                                disk.read_at(&mut buf, slot * chunk).map(|()| None)
                            }
                        };
                        let view = match read {
                            Ok(view) => view,
                            Err(e) => {
                                let _ = results.send((slot, Err(e)));
                                return;
                            }
                        };
                        if jobs.send(Job { slot, chunk: Chunk { buf, view } }).is_err() {
                            return;
                        }
                        slot += 1;
                    }
                }
            }
        }
    }
}

/// What keeps a backup's memory flat however large the disk.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// New chunks remembered within one backup: repeats further apart than
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

/// What the workers share: which new chunks this backup has claimed (so
/// each is stored once), and the index entries of sealed packs.
struct Shared<'s> {
    store: &'s Store,
    index: &'s Index,
    claimed: Mutex<HashSet<ChunkId>>,
    sealed: Mutex<Vec<IndexEntry>>,
}

impl Shared<'_> {
    /// Claims a chunk new to the store; false if this backup already holds
    /// it. The set is forgotten when it reaches `Limits::claimed`, which
    /// bounds memory at the cost of a rare second copy.
    fn claim(&self, id: ChunkId) -> bool {
        let mut claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        if claimed.len() >= self.store.limits.claimed {
            claimed.clear();
        }
        claimed.insert(id)
    }
}

/// One worker's open pack and the entries it has written to it.
struct WorkerPack {
    pack: Option<PackWriter>,
    entries: Vec<IndexEntry>,
}

impl WorkerPack {
    fn add(
        &mut self,
        shared: &Shared<'_>,
        id: ChunkId,
        compression: Compression,
        plain_len: u32,
        bytes: &[u8],
    ) -> Result<u32> {
        let backend = shared.store.backend();
        if self.pack.is_none() {
            self.pack = Some(PackWriter::create(backend)?);
        }
        let pack = self.pack.as_mut().ok_or_else(|| StoreError::Invalid("no pack".into()))?;
        let e = pack
            .add(id, compression, plain_len, bytes)
            .map_err(StoreError::io(backend.describe(&pack.id().key()), "write pack"))?;
        self.entries.push(IndexEntry {
            id,
            location: Location { pack: pack.id(), offset: e.offset, length: e.length, plain_len },
        });
        if pack.len() >= shared.store.config.pack_size {
            self.seal(shared)?;
        }
        Ok(e.length)
    }

    /// Seals the pack (flushed, renamed into place) before its entries can
    /// reach an index file.
    fn seal(&mut self, shared: &Shared<'_>) -> Result<()> {
        if let Some(pack) = self.pack.take() {
            let key = pack.id().key();
            pack.seal().map_err(StoreError::io(shared.store.backend().describe(&key), "seal pack"))?;
            shared.sealed.lock().unwrap_or_else(|p| p.into_inner()).append(&mut self.entries);
        }
        Ok(())
    }
}

/// The working stage: zero test, hash, index lookup, and for chunks new to
/// the store: claim, compress and append to this worker's own pack, so the
/// copying into packs runs on every core.
fn work_stage<'d>(
    shared: &Shared<'_>,
    jobs: Receiver<Job<'d>>,
    results: Sender<(u64, crate::Result<Item<'d>>)>,
) -> Result<()> {
    let config = &shared.store.config;
    let mut packed_buf = Vec::new();
    let mut compressor = match config.compression {
        Compression::Zstd => zstd::bulk::Compressor::new(config.zstd_level).ok(),
        Compression::None => None,
    };
    let mut own = WorkerPack { pack: None, entries: Vec::new() };
    for Job { slot, chunk } in jobs {
        let bytes = chunk.bytes();
        let outcome = if is_all_zero(bytes) {
            Outcome::Zero(chunk)
        } else {
            let id = ChunkId::of(bytes);
            let first = !shared.index.contains(&id) && shared.claim(id);
            if !first {
                Outcome::Known(id, chunk)
            } else {
                // One compression buffer per worker, reused for every chunk.
                let packed = compressor.as_mut().and_then(|c| {
                    packed_buf.clear();
                    packed_buf.reserve(zstd::zstd_safe::compress_bound(bytes.len()));
                    let n = c.compress_to_buffer(bytes, &mut packed_buf).ok()?;
                    (n < bytes.len()).then_some(&packed_buf[..n])
                });
                let compression = if packed.is_some() { Compression::Zstd } else { Compression::None };
                match own.add(shared, id, compression, bytes.len() as u32, packed.unwrap_or(bytes)) {
                    Ok(record_len) => Outcome::Stored { id, plain: chunk, record_len },
                    Err(e) => {
                        let _ = results.send((slot, Err(e.into())));
                        return Ok(());
                    }
                }
            }
        };
        if results.send((slot, Ok(Item::Chunk(outcome)))).is_err() {
            return Ok(());
        }
    }
    own.seal(shared)
}

impl Store {
    /// Backs up `disk`; see the module documentation for how. The backup is
    /// an incremental of the newest backup named `options.name` when one
    /// exists and `options.full` is false. Returns once the backup is
    /// committed.
    pub fn backup(&self, disk: &dyn VirtualDisk, options: &BackupOptions<'_>) -> Result<BackupReport> {
        let started = Instant::now();
        let mut report = self.backup_shared(disk, options)?;
        // A chain past its cap is folded into a full backup, under the
        // exclusive lock; if the store is busy the merge waits for next time.
        let cap = if options.max_chain == 0 { DEFAULT_MAX_CHAIN } else { options.max_chain };
        if report.kind == Kind::Incremental && self.chain_length(&report.id)? > cap {
            report.merged = Some(match self.lock(LockMode::Exclusive, false) {
                Ok(_lock) => {
                    self.merge_locked(&report.id)?;
                    true
                }
                Err(StoreError::StoreBusy { .. }) => false,
                Err(e) => return Err(e),
            });
        }
        report.seconds = started.elapsed().as_secs_f64();
        self.log_job("backup", &serde_json::to_value(&report).unwrap_or_default());
        Ok(report)
    }

    /// The backup itself, under the shared lock.
    fn backup_shared(&self, disk: &dyn VirtualDisk, options: &BackupOptions<'_>) -> Result<BackupReport> {
        if options.name.is_empty() {
            return Err(StoreError::Invalid("a backup needs a name".into()));
        }
        let _lock = self.lock(LockMode::Shared, false)?;
        let index = Arc::new(Index::load(self.backend())?);
        let info = disk.info().clone();

        // The previous backup of this name, and how to find what changed.
        let previous = self.list()?.into_iter().rev().find(|b| b.name == options.name);
        let plan = self.incremental_plan(&info, previous.as_ref().map(|b| b.id.as_str()), options)?;
        let (kind, parent, source, change) = match plan {
            Some(p) => (Kind::Incremental, Some(p.parent), p.source, p.change),
            None => (Kind::Full, None, ChangeSource::None, ChangeSet::All),
        };
        let created = options.created.unwrap_or_else(Moment::now);
        let id = new_backup_id(created);
        let header = ManifestHeader {
            id: id.clone(),
            name: options.name.clone(),
            kind,
            parent: parent.clone(),
            created: created.rfc3339(),
            chunk_size: self.config.chunk_size,
            virtual_size: info.virtual_size,
            change_source: source.name().into(),
            source: source_info(&info),
        };
        let mut report = BackupReport {
            id: id.clone(),
            name: options.name.clone(),
            kind,
            parent: parent.clone(),
            change_source: source,
            bytes_scanned: 0,
            bytes_read: 0,
            new_chunks: 0,
            new_bytes: 0,
            dedup_chunks: 0,
            zero_chunks: 0,
            stored_bytes: 0,
            seconds: 0.0,
            merged: None,
        };
        let mut manifest = ManifestWriter::create(self.backend(), &header)?;
        let compare = match (source, &parent) {
            (ChangeSource::Hash, Some(p)) => Some(ChainCursor::open(self.backend(), p)?),
            _ => None,
        };
        // A differencing source's partial slots start from the previous
        // backup's chunks, so its parent image is never read.
        let prev = match (&change, &parent) {
            (ChangeSet::Own, Some(p)) => Some(PrevChunks {
                cursor: ChainCursor::open(self.backend(), p)?,
                index: &index,
                backend: self.backend(),
                run: None,
                record: Vec::new(),
            }),
            _ => None,
        };
        let new_entries =
            self.run_pipeline(disk, &index, &change, prev, compare, &mut manifest, &mut report, options)?;

        // Commit: the last index file for the new chunks, then the manifest.
        self.write_index_file(new_entries)?;
        manifest.commit()?;
        Ok(report)
    }

    /// Runs the three stages; returns the index entries of the new chunks
    /// (their packs sealed and flushed).
    #[allow(clippy::too_many_arguments)]
    fn run_pipeline(
        &self,
        disk: &dyn VirtualDisk,
        index: &Index,
        change: &ChangeSet,
        prev: Option<PrevChunks<'_>>,
        mut compare: Option<ChainCursor<'_>>,
        manifest: &mut ManifestWriter,
        report: &mut BackupReport,
        options: &BackupOptions<'_>,
    ) -> Result<Vec<IndexEntry>> {
        let chunk = u64::from(self.config.chunk_size);
        let size = disk.size();
        let total_slots = size.div_ceil(chunk);
        let workers = if options.threads > 0 {
            options.threads
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        };
        let buffers = 2 * workers + 4;
        let (pool_tx, pool_rx) = bounded::<Vec<u8>>(buffers);
        for _ in 0..buffers {
            let _ = pool_tx.send(Vec::with_capacity(chunk as usize));
        }
        let (job_tx, job_rx) = bounded::<Job>(workers * 2);
        let (res_tx, res_rx) = unbounded::<(u64, crate::Result<Item>)>();
        let shared = Shared { store: self, index, claimed: Mutex::new(HashSet::new()), sealed: Mutex::new(Vec::new()) };

        std::thread::scope(|scope| -> Result<Vec<IndexEntry>> {
            {
                let (jobs, results, pool) = (job_tx, res_tx.clone(), pool_rx);
                scope.spawn(move || read_stage(disk, chunk, change, prev, jobs, results, pool));
            }
            let shared = &shared;
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    let (jobs, results) = (job_rx.clone(), res_tx.clone());
                    scope.spawn(move || work_stage(shared, jobs, results))
                })
                .collect();
            drop(job_rx);
            drop(res_tx);

            let mut writer = Writer { bytes_read: 0 };
            let mut pending: BTreeMap<u64, Item> = BTreeMap::new();
            let mut next = 0u64;
            let mut last_progress = Instant::now();
            // On any error, returning drops the receivers: the other stages
            // see their sends fail and stop.
            while next < total_slots {
                let Ok((slot, item)) = res_rx.recv() else {
                    return Err(StoreError::Invalid(format!("the backup stopped at slot {next} of {total_slots}")));
                };
                pending.insert(slot, item.map_err(|e| StoreError::Invalid(format!("reading the source: {e}")))?);
                while let Some(item) = pending.remove(&next) {
                    let n = match item {
                        Item::Run(slot_kind, n) => {
                            if slot_kind == Slot::Zero {
                                report.zero_chunks += n;
                                report.bytes_scanned += n * chunk;
                            }
                            // Inherited runs were not scanned.
                            manifest.push(slot_kind, n)?;
                            if let Some(c) = compare.as_mut() {
                                skip(c, n)?;
                            }
                            n
                        }
                        Item::Chunk(outcome) => {
                            let slot_kind = writer.take(outcome, report, &pool_tx)?;
                            report.bytes_scanned += chunk.min(size - next * chunk);
                            // Hash comparison: a chunk equal to the parent's is inherited.
                            let slot_kind = match (compare.as_mut(), slot_kind) {
                                (Some(c), s) => {
                                    let parent = next_resolved(c)?;
                                    match (parent, s) {
                                        (Resolved::Data(p), Slot::Data(id)) if p == id => Slot::Inherit,
                                        (Resolved::Zero, Slot::Zero) => Slot::Inherit,
                                        _ => s,
                                    }
                                }
                                (None, s) => s,
                            };
                            manifest.push(slot_kind, 1)?;
                            1
                        }
                    };
                    next += n;
                }
                // Index entries of sealed packs go out in files of their own
                // as they gather, so memory does not grow with the disk.
                let ready = {
                    let mut sealed = shared.sealed.lock().unwrap_or_else(|p| p.into_inner());
                    (sealed.len() >= self.limits.index_flush).then(|| std::mem::take(&mut *sealed))
                };
                if let Some(entries) = ready {
                    self.write_index_file(entries)?;
                }
                if let Some(p) = options.progress
                    && last_progress.elapsed().as_millis() >= 200
                {
                    p(Progress { bytes_done: (next * chunk).min(size), bytes_total: size });
                    last_progress = Instant::now();
                }
            }
            if let Some(p) = options.progress {
                p(Progress { bytes_done: size, bytes_total: size });
            }
            report.bytes_read = writer.bytes_read;
            drop(res_rx);
            // Every worker seals its last pack before the last index file is written.
            for h in handles {
                h.join().map_err(|_| StoreError::Invalid("a backup worker panicked".into()))??;
            }
            Ok(std::mem::take(&mut *shared.sealed.lock().unwrap_or_else(|p| p.into_inner())))
        })
    }
}

impl Store {
    /// Writes and commits one index file for chunks in sealed packs.
    fn write_index_file(&self, mut entries: Vec<IndexEntry>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        write_index_file(self.backend(), &mut entries)
    }
}

/// Advances a comparison cursor past `n` slots.
fn skip(c: &mut ChainCursor<'_>, mut n: u64) -> Result<()> {
    while n > 0 {
        let (_, m) =
            c.next_run_limited(n)?.ok_or_else(|| StoreError::Invalid("the parent backup is shorter".into()))?;
        n -= m;
    }
    Ok(())
}

fn next_resolved(c: &mut ChainCursor<'_>) -> Result<Resolved> {
    c.next_run_limited(1)?.map(|(r, _)| r).ok_or_else(|| StoreError::Invalid("the parent backup is shorter".into()))
}

/// The writing stage's accounting (the workers store the chunks).
struct Writer {
    bytes_read: u64,
}

impl Writer {
    /// Counts a chunk's outcome; returns its manifest slot and recycles the buffer.
    fn take(&mut self, outcome: Outcome<'_>, report: &mut BackupReport, pool: &Sender<Vec<u8>>) -> Result<Slot> {
        let (slot, chunk) = match outcome {
            Outcome::Zero(chunk) => {
                report.zero_chunks += 1;
                (Slot::Zero, chunk)
            }
            Outcome::Known(id, chunk) => {
                report.dedup_chunks += 1;
                (Slot::Data(id), chunk)
            }
            Outcome::Stored { id, plain, record_len } => {
                report.new_chunks += 1;
                report.new_bytes += plain.bytes().len() as u64;
                report.stored_bytes += u64::from(record_len);
                (Slot::Data(id), plain)
            }
        };
        self.bytes_read += chunk.bytes().len() as u64;
        let _ = pool.try_send(chunk.buf);
        Ok(slot)
    }
}

/// The identity a manifest records for its source.
pub(crate) fn source_info(info: &DiskInfo) -> SourceInfo {
    let name = |v: &dyn erased_name::Name| v.name();
    SourceInfo {
        format: name(&info.format),
        subformat: name(&info.subformat),
        logical_sector_size: info.logical_sector_size,
        physical_sector_size: info.physical_sector_size,
        disk_id: info.disk_id.to_string(),
        identity: info.identity.to_string(),
        parent_identity: info.parent.as_ref().map(|p| p.expected_identity.to_string()),
        file_name: info.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
    }
}

mod erased_name {
    /// The snake_case name serde gives an enum value.
    pub trait Name {
        fn name(&self) -> String;
    }
    impl<T: serde::Serialize> Name for T {
        fn name(&self) -> String {
            serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
        }
    }
}

/// An incremental's parent and change set.
struct IncrementalPlan {
    parent: String,
    source: ChangeSource,
    change: ChangeSet,
}

impl Store {
    /// Decides whether the backup is incremental, against which parent, and
    /// how to find what changed:
    ///
    /// 1. a changed-range list, for the same disk (same disk id) as the
    ///    previous backup;
    /// 2. a differencing source whose parent is the image the previous
    ///    backup captured (its identity): its own allocation;
    /// 3. otherwise, every allocated chunk compared with the previous backup.
    ///
    /// A range list for another disk, or a differencing source whose parent
    /// is neither the previous backup's image nor shared with it (the same
    /// disk backed up again), is refused unless `force` (then 3): a wrong
    /// incremental is worse than none.
    fn incremental_plan(
        &self,
        info: &DiskInfo,
        previous: Option<&str>,
        options: &BackupOptions<'_>,
    ) -> Result<Option<IncrementalPlan>> {
        let Some(prev) = previous else {
            if options.changed.is_some() && !options.force {
                return Err(StoreError::BaselineMismatch(format!(
                    "a changed-range list was given but there is no previous backup named {:?}",
                    options.name
                )));
            }
            return Ok(None);
        };
        if options.full {
            return Ok(None);
        }
        let h = self.header(prev)?;
        if h.virtual_size != info.virtual_size || h.chunk_size != self.config.chunk_size {
            // The disk changed size: a full backup, not a wrong incremental.
            return Ok(None);
        }
        let chunk = u64::from(self.config.chunk_size);
        let plan = |source, change| Ok(Some(IncrementalPlan { parent: prev.to_string(), source, change }));
        if let Some(ranges) = &options.changed {
            if h.source.disk_id != info.disk_id.to_string() && !options.force {
                return Err(StoreError::BaselineMismatch(format!(
                    "the changed ranges are for disk {} but the previous backup {prev} captured disk {}",
                    info.disk_id, h.source.disk_id
                )));
            }
            return plan(ChangeSource::Ranges, ChangeSet::Slots(widen(ranges, chunk, info.virtual_size)));
        }
        if let Some(link) = &info.parent {
            let parent_ids = [Some(link.expected_identity), link.alternate_identity];
            let is = |text: &str| parent_ids.iter().flatten().any(|g| g.to_string() == text);
            if is(&h.source.identity) {
                return plan(ChangeSource::Differencing, ChangeSet::Own);
            }
            let same_disk_again = h.source.parent_identity.as_deref().is_some_and(is)
                && h.source.file_name == source_info(info).file_name;
            if !same_disk_again && !options.force {
                return Err(StoreError::BaselineMismatch(format!(
                    "the source is a differencing child of {} but the previous backup {prev} captured {}; \
                     back up with --full, or --force to compare every chunk",
                    link.expected_identity, h.source.identity
                )));
            }
        }
        plan(ChangeSource::Hash, ChangeSet::All)
    }
}

/// Byte ranges → sorted, merged slot ranges covering them.
pub(crate) fn widen(ranges: &[Range<u64>], chunk: u64, size: u64) -> Vec<Range<u64>> {
    let mut slots: Vec<Range<u64>> = ranges
        .iter()
        .filter(|r| r.end > r.start && r.start < size)
        .map(|r| r.start / chunk..r.end.min(size).div_ceil(chunk))
        .collect();
    slots.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(slots.len());
    for r in slots {
        match out.last_mut() {
            Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Extent;
    use crate::disk::{ImageFormat, Subformat};
    use crate::store::{InitOptions, VacuumOptions};

    #[test]
    fn ranges_widen_to_whole_slots_and_merge() {
        // 0..1 three times, 2..4 and 4..8 (touching), 5000..9000 clipped to the disk.
        let r = widen(&[10..20, 1000..1001, 0..1, 2048..4096, 5000..9000], 1024, 8192);
        assert_eq!(r, vec![0..1, 2..8]);
        assert_eq!(widen(&[100..100, 9000..9999], 1024, 8192), Vec::<Range<u64>>::new());
    }

    /// A disk in memory whose 64 KiB slots repeat five patterns.
    struct Repeating {
        info: DiskInfo,
        bytes: Vec<u8>,
    }

    impl Repeating {
        fn new(slots: usize) -> Repeating {
            let chunk = 64 << 10;
            let mut bytes = vec![0u8; slots * chunk];
            for (i, slot) in bytes.chunks_exact_mut(chunk).enumerate() {
                slot.fill(1 + (i % 5) as u8);
            }
            let info = DiskInfo {
                format: ImageFormat::Raw,
                subformat: Subformat::Fixed,
                virtual_size: bytes.len() as u64,
                block_size: None,
                logical_sector_size: 512,
                physical_sector_size: 512,
                disk_id: crate::Guid::default(),
                identity: crate::Guid::default(),
                file_size: bytes.len() as u64,
                path: "repeating".into(),
                creator: "test".into(),
                parent: None,
                log_replay: None,
                warnings: Vec::new(),
            };
            Repeating { info, bytes }
        }
    }

    impl VirtualDisk for Repeating {
        fn info(&self) -> &DiskInfo {
            &self.info
        }
        fn extents(&self, range: Range<u64>) -> crate::Result<Vec<Extent>> {
            let end = range.end.min(self.info.virtual_size);
            Ok(vec![Extent { offset: range.start, length: end - range.start, state: ExtentState::Data, depth: 0 }])
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> crate::Result<()> {
            buf.copy_from_slice(&self.bytes[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
    }

    /// With tiny limits the claim set is forgotten and index files are
    /// written mid-backup: repeats may be stored twice, but the backup
    /// restores exactly, verifies clean, and vacuum keeps one copy.
    #[test]
    fn memory_limits_cost_copies_never_correctness() {
        let dir = tempfile::tempdir().unwrap();
        let options = InitOptions { chunk_size: 64 << 10, pack_size: 256 << 10, ..Default::default() };
        let mut store = Store::init(dir.path().join("s"), &options).unwrap();
        store.limits = Limits { claimed: 2, index_flush: 3 };
        let disk = Repeating::new(60);
        let report =
            store.backup(&disk, &BackupOptions { name: "d".into(), threads: 2, ..Default::default() }).unwrap();
        assert_eq!(report.new_chunks + report.dedup_chunks, 60);
        assert!(report.new_chunks > 5, "the claim set was never forgotten");

        let index = Index::load(store.backend()).unwrap();
        assert!(index.files().len() > 1, "no index file was written mid-backup");
        assert_eq!(index.chunk_count(), 5);
        assert_eq!(index.entries().len() as u64, report.new_chunks);

        let reader = store.reader(&report.id).unwrap();
        let mut back = vec![0u8; disk.bytes.len()];
        reader.read_at(&mut back, 0).unwrap();
        assert!(back == disk.bytes, "restore differs");
        drop(reader);
        assert!(store.verify().unwrap().ok);

        store.vacuum(&VacuumOptions { threshold: 0.0, ..Default::default() }).unwrap();
        assert_eq!(Index::load(store.backend()).unwrap().entries().len(), 5);
        let mut again = vec![0u8; disk.bytes.len()];
        store.reader(&report.id).unwrap().read_at(&mut again, 0).unwrap();
        assert!(again == disk.bytes, "restore after vacuum differs");
    }
}
