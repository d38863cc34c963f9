//! The backup pipeline for one disk: three stages at once, with bounded
//! memory (a fixed pool of chunk buffers, whatever the disk's size).
//!
//! 1. a reader walks the disk's allocation map and reads only slots that
//!    may hold data (and, for an incremental, only slots that changed);
//! 2. workers on every core test for zeros, hash with BLAKE3, look the id
//!    up in the store's index, compress new chunks and append them to packs
//!    of their own;
//! 3. the writer (the calling thread) takes results back into slot order
//!    and streams the manifest.
//!
//! The reader and the writer check the cancel token between chunks; on any
//! error or a cancel, the stage that sees it returns, the others see their
//! channels close and stop, and nothing is committed.

use std::collections::BTreeMap;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

use crate::cancel::CancelToken;
use crate::disk::VirtualDisk;
use crate::progress::{Operation, ProgressSink};
use crate::store::error::{Result, StoreError};
use crate::store::format::index_file::IndexEntry;
use crate::store::format::manifest::{ManifestWriter, Slot};
use crate::store::model::id::ChunkId;
use crate::store::ops::backup::baseline::{Compare, PrevChunks, read_partial};
use crate::store::ops::backup::options::BackupReport;
use crate::store::ops::backup::packer::{ChunkBytes, Claims, Packer, WorkerPack};
use crate::store::ops::backup::plan::{ChangeSet, Plan, plan_window};
use crate::store::state::chain::Resolved;
use crate::store::state::handle::Handle;
use crate::store::state::index::Index;
use crate::store::state::lease::Lease;
use crate::zero::is_all_zero;

/// One disk's backup, from plan to a finished (uncommitted) manifest.
pub(super) struct DiskRun<'r> {
    pub store: &'r Handle,
    pub disk: &'r dyn VirtualDisk,
    pub index: &'r Index,
    pub orphans: &'r crate::store::ops::backup::resume::Orphans,
    pub claims: &'r Claims,
    pub change: ChangeSet,
    /// A differencing source's partial slots start from these chunks.
    pub prev: Option<PrevChunks<'r>>,
    /// Hash comparison: the parent's map beside the new one.
    pub compare: Option<Compare<'r>>,
    pub manifest: ManifestWriter,
    pub report: BackupReport,
    pub threads: usize,
    pub cancel: &'r CancelToken,
    /// Checked as progress is reported: a lease gone stale stops the backup.
    pub lease: &'r Lease,
    pub progress: ProgressSink,
}

/// What the reader and workers send the writer, keyed by first slot.
enum Item<'d> {
    Run(Slot, u64),
    Chunk(Outcome<'d>),
}

enum Outcome<'d> {
    Zero(Chunk<'d>),
    /// Already stored (before this job, or by another worker in it).
    Known(ChunkId, Chunk<'d>),
    /// Stored by this job: the record's length in its pack. The chunk's
    /// buffer may hold the sealed bytes by now.
    Stored {
        id: ChunkId,
        plain_len: u32,
        chunk: Chunk<'d>,
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

type Results<'d> = Sender<(u64, Result<Item<'d>>)>;

/// The reading stage's inputs.
struct ReadStage<'d, 'p> {
    disk: &'d dyn VirtualDisk,
    chunk: u64,
    change: &'p ChangeSet,
    prev: Option<PrevChunks<'p>>,
    cancel: &'p CancelToken,
}

/// What the reading stage hands on, by first slot.
enum Step<'d> {
    /// A run of slots that need no reading.
    Run(Slot, u64),
    /// One slot's bytes.
    Read(Chunk<'d>),
}

/// The reading stage: plans the disk window by window and hands each run
/// and each read slot to `emit` in slot order, taking buffers from
/// `buffer`. Stops at the first error (handed on too), at a cancel, or
/// when `emit` or `buffer` says the pipeline has stopped.
fn read_stage<'d>(
    stage: ReadStage<'d, '_>,
    emit: &mut dyn FnMut(u64, Result<Step<'d>>) -> bool,
    buffer: &mut dyn FnMut() -> Option<Vec<u8>>,
) {
    let ReadStage { disk, chunk, change, mut prev, cancel } = stage;
    let slots = disk.size().div_ceil(chunk);
    let source = || StoreError::source::<crate::Error>(&disk.info().path);
    // 64 MiB of disk per planning step bounds the extent list it holds.
    let window = ((64u64 << 20) / chunk).max(1);
    let mut runs = Vec::new();
    let mut slot = 0u64;
    while slot < slots {
        runs.clear();
        let end = (slot + window).min(slots);
        if let Err(e) = plan_window(disk, chunk, slot..end, change, &mut runs) {
            emit(slot, Err(source()(e)));
            return;
        }
        for &(plan, n) in &runs {
            if cancel.is_cancelled() {
                emit(slot, Err(StoreError::Cancelled));
                return;
            }
            match plan {
                Plan::Zero | Plan::Inherit => {
                    let s = if plan == Plan::Zero { Slot::Zero } else { Slot::Inherit };
                    if !emit(slot, Ok(Step::Run(s, n))) {
                        return;
                    }
                    slot += n;
                }
                Plan::Read | Plan::Partial => {
                    for _ in 0..n {
                        if cancel.is_cancelled() {
                            emit(slot, Err(StoreError::Cancelled));
                            return;
                        }
                        let Some(mut buf) = buffer() else { return };
                        let len = (disk.size() - slot * chunk).min(chunk) as usize;
                        let read = match (plan, prev.as_mut()) {
                            (Plan::Read, _) => match disk.borrow_at(slot * chunk, len) {
                                Ok(Some(view)) => Ok(Some(view)),
                                Ok(None) => {
                                    buf.resize(len, 0);
                                    disk.read_at(&mut buf, slot * chunk).map(|()| None).map_err(|e| source()(e.into()))
                                }
                                Err(e) => Err(source()(e.into())),
                            },
                            (_, Some(prev)) => {
                                buf.resize(len, 0);
                                read_partial(disk, prev, slot * chunk, &mut buf).map(|()| None)
                            }
                            (_, None) => Err(StoreError::Internal("a partial slot without a previous backup".into())),
                        };
                        let step = read.map(|view| Step::Read(Chunk { buf, view }));
                        let failed = step.is_err();
                        if !emit(slot, step) || failed {
                            return;
                        }
                        slot += 1;
                    }
                }
            }
        }
    }
}

/// One worker's state: its compressor and its open pack.
struct Worker {
    packer: Packer,
    own: WorkerPack,
}

impl Worker {
    fn new(store: &Handle) -> Worker {
        Worker { packer: Packer::new(store), own: WorkerPack::new() }
    }

    /// Zero test, hash, index lookup, and for a chunk new to the store:
    /// claim, compress and append to this worker's own pack.
    fn process<'d>(
        &mut self,
        store: &Handle,
        index: &Index,
        orphans: &crate::store::ops::backup::resume::Orphans,
        claims: &Claims,
        mut chunk: Chunk<'d>,
    ) -> Result<Outcome<'d>> {
        let bytes = chunk.bytes();
        if is_all_zero(bytes) {
            return Ok(Outcome::Zero(chunk));
        }
        let id = store.crypt().chunk_id(bytes);
        let plain_len = bytes.len() as u32;
        if index.contains(&id) {
            return Ok(Outcome::Known(id, chunk));
        }
        // A copy an interrupted job sealed: indexed once, by the first
        // worker to claim it.
        if let Some(entry) = orphans.entry(&id, plain_len) {
            if claims.claim(id) {
                claims.adopt(entry);
                orphans.count();
            }
            return Ok(Outcome::Known(id, chunk));
        }
        if !claims.claim(id) {
            return Ok(Outcome::Known(id, chunk));
        }
        // From here the plain bytes are needed no more (only their length):
        // an encrypted store seals them in the worker's own buffer.
        let bytes = match chunk.view {
            Some(view) => ChunkBytes::Borrowed(view),
            None => ChunkBytes::Owned(&mut chunk.buf),
        };
        let (compression, stored) = self.packer.pack(id, bytes);
        let record_len = self.own.add(store, claims, id, compression, plain_len, &stored)?;
        Ok(Outcome::Stored { id, plain_len, chunk, record_len })
    }
}

/// The working stage: [`Worker::process`] on every job, so hashing and the
/// copying into packs run on every core.
fn work_stage<'d>(
    store: &Handle,
    index: &Index,
    orphans: &crate::store::ops::backup::resume::Orphans,
    claims: &Claims,
    jobs: Receiver<Job<'d>>,
    results: Results<'d>,
) -> Result<()> {
    let mut worker = Worker::new(store);
    for Job { slot, chunk } in jobs {
        let outcome = worker.process(store, index, orphans, claims, chunk);
        let failed = outcome.is_err();
        if results.send((slot, outcome.map(Item::Chunk))).is_err() || failed {
            return Ok(());
        }
    }
    worker.own.seal(store, claims)
}

impl DiskRun<'_> {
    /// Runs the three stages to the end of the disk; the manifest then holds
    /// every slot and the packs of every new chunk are sealed (their entries
    /// wait in the claim set for the job's last index file).
    pub(super) fn run(&mut self) -> Result<()> {
        if self.threads <= 1 {
            return self.run_inline();
        }
        let chunk = u64::from(self.store.config.chunk_size);
        let disk = self.disk;
        let size = disk.size();
        let total_slots = size.div_ceil(chunk);
        let workers = self.threads.max(1);
        let buffers = 2 * workers + 4;
        let (pool_tx, pool_rx) = bounded::<Vec<u8>>(buffers);
        for _ in 0..buffers {
            let _ = pool_tx.send(Vec::with_capacity(chunk as usize));
        }
        let (job_tx, job_rx) = bounded::<Job>(workers * 2);
        let (res_tx, res_rx) = unbounded::<(u64, Result<Item>)>();
        let (store, index, orphans, claims, cancel, lease) =
            (self.store, self.index, self.orphans, self.claims, self.cancel, self.lease);
        let change = &std::mem::replace(&mut self.change, ChangeSet::All);
        let prev = self.prev.take();
        let sink = self.progress.clone();
        let mut progress = sink.throttled(Operation::Backup, size);

        std::thread::scope(|scope| -> Result<()> {
            // Owned here, so returning early (an error, a cancel) closes
            // the pool too: a reader waiting for a buffer then stops.
            let pool_tx = pool_tx;
            {
                let (jobs, results, pool) = (job_tx, res_tx.clone(), pool_rx);
                let stage = ReadStage { disk, chunk, change, prev, cancel };
                scope.spawn(move || {
                    read_stage(
                        stage,
                        &mut |slot, step| match step {
                            Ok(Step::Run(s, n)) => results.send((slot, Ok(Item::Run(s, n)))).is_ok(),
                            Ok(Step::Read(c)) => jobs.send(Job { slot, chunk: c }).is_ok(),
                            Err(e) => {
                                let _ = results.send((slot, Err(e)));
                                false
                            }
                        },
                        &mut || pool.recv().ok(),
                    )
                });
            }
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    let (jobs, results) = (job_rx.clone(), res_tx.clone());
                    scope.spawn(move || work_stage(store, index, orphans, claims, jobs, results))
                })
                .collect();
            drop(job_rx);
            drop(res_tx);

            let mut pending: BTreeMap<u64, Item> = BTreeMap::new();
            let mut next = 0u64;
            // On any error, returning drops the receivers: the other stages
            // see their sends fail and stop.
            while next < total_slots {
                if cancel.is_cancelled() {
                    return Err(StoreError::Cancelled);
                }
                let Ok((slot, item)) = res_rx.recv() else {
                    return Err(StoreError::Internal(format!("the backup stopped at slot {next} of {total_slots}")));
                };
                pending.insert(slot, item?);
                while let Some(item) = pending.remove(&next) {
                    next += self.take(item, next, chunk, size, &pool_tx)?;
                }
                // Index entries of sealed packs go out in files of their own
                // as they gather, so memory does not grow with the disk.
                if let Some(entries) = claims.take_sealed(store.limits.index_flush) {
                    lease.check()?;
                    write_index_file(store, entries)?;
                }
                // Cheap unless a refresh is due; a lease gone stale stops
                // the backup here rather than at its commit.
                lease.check()?;
                progress.tick(next * chunk);
            }
            progress.finish();
            drop(res_rx);
            // Every worker seals its last pack before the job's last index
            // file is written.
            for h in handles {
                h.join().map_err(|_| StoreError::Internal("a backup worker panicked".into()))??;
            }
            Ok(())
        })
    }

    /// The same pipeline on the calling thread alone: no thread is started,
    /// so storage calls happen in an order fixed by the disk (what
    /// deterministic schedules need, and what an embedder with its own
    /// thread pool may want).
    fn run_inline(&mut self) -> Result<()> {
        let chunk = u64::from(self.store.config.chunk_size);
        let disk = self.disk;
        let size = disk.size();
        let (store, index, orphans, claims, cancel, lease) =
            (self.store, self.index, self.orphans, self.claims, self.cancel, self.lease);
        let change = std::mem::replace(&mut self.change, ChangeSet::All);
        let prev = self.prev.take();
        let sink = self.progress.clone();
        let mut progress = sink.throttled(Operation::Backup, size);
        let mut worker = Worker::new(store);
        let (pool_tx, pool_rx) = bounded::<Vec<u8>>(1);
        let _ = pool_tx.send(Vec::with_capacity(chunk as usize));
        let mut failure: Option<StoreError> = None;
        let mut next = 0u64;
        let stage = ReadStage { disk, chunk, change: &change, prev, cancel };
        read_stage(
            stage,
            &mut |slot, step| {
                let item = step.and_then(|step| match step {
                    Step::Run(s, n) => Ok(Item::Run(s, n)),
                    Step::Read(c) => worker.process(store, index, orphans, claims, c).map(Item::Chunk),
                });
                let taken = item.and_then(|item| self.take(item, slot, chunk, size, &pool_tx));
                match taken {
                    Ok(n) => next = slot + n,
                    Err(e) => {
                        failure = Some(e);
                        return false;
                    }
                }
                if let Some(entries) = claims.take_sealed(store.limits.index_flush)
                    && let Err(e) = lease.check().and_then(|()| write_index_file(store, entries))
                {
                    failure = Some(e);
                    return false;
                }
                if let Err(e) = lease.check() {
                    failure = Some(e);
                    return false;
                }
                progress.tick(next * chunk);
                true
            },
            &mut || Some(pool_rx.try_recv().unwrap_or_else(|_| Vec::with_capacity(chunk as usize))),
        );
        if let Some(e) = failure {
            return Err(e);
        }
        if cancel.is_cancelled() {
            return Err(StoreError::Cancelled);
        }
        if next < size.div_ceil(chunk) {
            return Err(StoreError::Internal(format!("the backup stopped at slot {next}")));
        }
        progress.finish();
        worker.own.seal(store, claims)
    }

    /// Records one item in slot order; returns how many slots it covers.
    fn take(&mut self, item: Item<'_>, slot: u64, chunk: u64, size: u64, pool: &Sender<Vec<u8>>) -> Result<u64> {
        let report = &mut self.report;
        match item {
            Item::Run(kind, n) => {
                if kind == Slot::Zero {
                    report.zero_chunks += n;
                    report.bytes_scanned += (n * chunk).min(size - slot * chunk);
                }
                // Inherited runs were not scanned.
                self.manifest.push(kind, n)?;
                if let Some(c) = self.compare.as_mut() {
                    c.skip(n)?;
                }
                Ok(n)
            }
            Item::Chunk(outcome) => {
                let (kind, chunk_bytes) = match outcome {
                    Outcome::Zero(c) => {
                        report.zero_chunks += 1;
                        (Slot::Zero, c)
                    }
                    Outcome::Known(id, c) => {
                        report.dedup_chunks += 1;
                        (Slot::Data(id), c)
                    }
                    Outcome::Stored { id, plain_len, chunk, record_len } => {
                        report.new_chunks += 1;
                        report.new_bytes += u64::from(plain_len);
                        report.stored_bytes += u64::from(record_len);
                        (Slot::Data(id), chunk)
                    }
                };
                report.bytes_read += chunk_bytes.bytes().len() as u64;
                report.bytes_scanned += chunk.min(size - slot * chunk);
                let _ = pool.try_send(chunk_bytes.buf);
                // Hash comparison: a chunk equal to the parent's is inherited.
                let kind = match self.compare.as_mut() {
                    Some(c) => match (c.next()?, kind) {
                        (Resolved::Data(p), Slot::Data(id)) if p == id => Slot::Inherit,
                        (Resolved::Zero, Slot::Zero) => Slot::Inherit,
                        (_, s) => s,
                    },
                    None => kind,
                };
                self.manifest.push(kind, 1)?;
                Ok(1)
            }
        }
    }
}

/// Writes and commits one index file for chunks in sealed packs.
pub(super) fn write_index_file(store: &Handle, mut entries: Vec<IndexEntry>) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    crate::store::format::index_file::write_index_file(store.backend(), &mut entries)
}
