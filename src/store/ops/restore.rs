//! Reading backups: [`BackupReader`] is a [`VirtualDisk`] over a backup
//! (mountable, and what the writers take to restore it). [`Store::restore`]
//! writes one out as raw, VHD or VHDX; [`Store::restore_to_writer`] streams
//! it raw into any `Write`; [`Store::restore_in_place`] writes it over an
//! existing file or block device; [`Store::restore_point`] writes every
//! disk and attachment of a restore point into a folder.
//!
//! Every chunk is checked as it is read (record CRC, decompression, plain
//! length, BLAKE3 against its id); a chunk that fails is read from another
//! stored copy if there is one, and otherwise the read fails. A restore
//! never emits a byte it could not verify: it writes to a temporary file
//! that a failure removes.

use std::collections::HashMap;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::disk::{DiskInfo, Extent, ExtentState, ImageFormat, Subformat, VirtualDisk, push_extent};
use crate::export::{ExportOptions, ExportReport, InPlace, Target, export, write_raw_in_place, write_raw_to};
use crate::progress::Operation;
use crate::store::backend::Backend;
use crate::store::backend::Traffic;
use crate::store::crypto::Crypt;
use crate::store::error::{Result, StoreError};
use crate::store::format::point::{PointRecord, plain_file_name};
use crate::store::model::id::ChunkId;
use crate::store::model::id::{BackupId, PointId};
use crate::store::state::catalog::{PointSummary, Selection};
use crate::store::state::chain::{ChainCursor, Resolved};
use crate::store::state::fetch::{fetch_chunk, fetch_chunk_into};
use crate::store::state::handle::Handle;
use crate::store::state::index::Index;
use crate::store::state::lease::Lease;

/// A backup opened for reading. Holds a read lease while it lives, so no
/// vacuum deletes what it may read.
///
/// Memory: 12 bytes per run of slots holding one chunk or zeros, 32 per
/// distinct chunk, and the store index. It grows with what the manifest
/// records, never with the size its header claims: a sparse 64 TiB backup
/// costs what its few runs cost.
pub struct BackupReader {
    backend: Arc<dyn Backend>,
    index: Arc<Index>,
    crypt: Crypt,
    info: DiskInfo,
    id: BackupId,
    chunk: u64,
    /// First slot of each run, ascending from 0.
    run_starts: Vec<u64>,
    /// Per run: 0 for zeros, else 1 + an index into `ids`.
    run_values: Vec<u32>,
    ids: Vec<ChunkId>,
    /// The most recently decoded chunk, for reads smaller than a chunk.
    last: Mutex<Option<(u64, Vec<u8>)>>,
    _lease: Option<Lease>,
}

impl std::fmt::Debug for BackupReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupReader").field("id", &self.id).field("size", &self.info.virtual_size).finish()
    }
}

/// How to restore.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RestoreOptions {
    /// Which disk of a restore point (its label), when the spec names a
    /// point with several.
    pub disk: Option<String>,
    /// How to write the output: block size, disk id, flush, cancel token,
    /// progress.
    pub export: ExportOptions,
    /// For [`Store::restore_in_place`]: what to write where the backup
    /// holds no data.
    pub in_place: InPlace,
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct RestoreReport {
    /// The backup restored.
    pub id: BackupId,
    /// The format written.
    pub target: Target,
    /// Where.
    pub output: PathBuf,
    /// What the writer did.
    #[serde(flatten)]
    pub export: ExportReport,
    /// Requests made and bytes uploaded (`requests`, `bytes_uploaded` in JSON).
    #[serde(flatten)]
    pub traffic: Traffic,
}

/// What restoring a restore point did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PointRestoreReport {
    /// The restore point.
    pub point: PointId,
    /// Each disk's restore.
    pub disks: Vec<RestoreReport>,
    /// Attachments written: their paths.
    pub attachments: Vec<PathBuf>,
    /// Requests made and bytes uploaded (`requests`, `bytes_uploaded` in JSON).
    #[serde(flatten)]
    pub traffic: Traffic,
}

/// Maps an export failure: the store's own errors stay what they are (a
/// chunk that cannot be read), a cancel is a cancel, everything else is the
/// output's.
fn output_error(out: &Path) -> impl FnOnce(crate::Error) -> StoreError + '_ {
    move |e| match StoreError::within(e) {
        Ok(s) => s,
        Err(crate::Error::Export(crate::export::ExportError::Cancelled)) => StoreError::Cancelled,
        Err(other) => StoreError::Output { path: out.to_path_buf(), source: Box::new(other) },
    }
}

/// [`Store::reader`](crate::store::Store::reader).
pub(crate) fn reader(store: &Handle, spec: impl AsRef<str>) -> Result<BackupReader> {
    let spec = spec.as_ref();
    reader_disk(store, spec, None)
}

/// [`Store::reader_disk`](crate::store::Store::reader_disk).
pub(crate) fn reader_disk(store: &Handle, spec: impl AsRef<str>, disk: Option<&str>) -> Result<BackupReader> {
    let spec = spec.as_ref();
    let lease = store.read_lease("restore")?;
    let id = crate::store::state::catalog::resolve_backup(store, spec, disk)?.id;
    let index = Arc::new(store.index_avoiding_condemned()?);
    reader_with(store, &id, index, lease)
}

/// Opens backup `id` with an index already loaded, under a lock the
/// caller holds.
pub(crate) fn reader_with(
    store: &Handle,
    id: &BackupId,
    index: Arc<Index>,
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
    let source = &header.source;
    let info = DiskInfo {
        format: ImageFormat::Backup,
        subformat: Subformat::Dynamic,
        virtual_size: header.virtual_size,
        block_size: Some(header.chunk_size),
        logical_sector_size: source.logical_sector_size,
        physical_sector_size: source.physical_sector_size,
        disk_id: source.disk_id,
        identity: source.identity,
        file_size: 0,
        path: store.path().join(crate::store::format::manifest::manifest_key(&id)),
        creator: format!("vhdkit backup {id} of {} ({})", header.name, source.file_name),
        parent: None,
        log_replay: None,
        warnings: Vec::new(),
    };
    Ok(BackupReader {
        backend: store.backend.clone(),
        index,
        crypt: store.crypt.clone(),
        info,
        id,
        chunk,
        run_starts,
        run_values,
        ids,
        last: Mutex::new(None),
        _lease: lease,
    })
}

/// The reader and export options for a restore of `spec`.
fn restore_setup(store: &Handle, spec: &str, options: &RestoreOptions) -> Result<(BackupReader, ExportOptions)> {
    let reader = reader_disk(store, spec, options.disk.as_deref())?;
    let mut export = options.export.clone();
    export.operation = Operation::Restore;
    if export.disk_id.is_none() && !reader.info.disk_id.is_nil() {
        export.disk_id = Some(reader.info.disk_id);
    }
    Ok((reader, export))
}

fn logged(store: &Handle, mut report: RestoreReport, t0: Traffic) -> RestoreReport {
    report.traffic = store.backend().traffic().since(t0);
    store.log_job("restore", &serde_json::to_value(&report).unwrap_or_default());
    report
}

/// [`Store::restore`](crate::store::Store::restore).
pub(crate) fn restore(
    store: &Handle,
    spec: impl AsRef<str>,
    out: &Path,
    target: Target,
    options: &RestoreOptions,
) -> Result<RestoreReport> {
    let spec = spec.as_ref();
    let t0 = store.backend().traffic();
    let (reader, export_options) = restore_setup(store, spec, options)?;
    let export = export(&reader, out, target, &export_options).map_err(output_error(out))?;
    Ok(logged(
        store,
        RestoreReport { id: reader.id.clone(), target, output: out.to_path_buf(), export, traffic: Traffic::default() },
        t0,
    ))
}

/// [`Store::restore_to_writer`](crate::store::Store::restore_to_writer).
pub(crate) fn restore_to_writer(
    store: &Handle,
    spec: impl AsRef<str>,
    out: &mut dyn Write,
    name: &Path,
    options: &RestoreOptions,
) -> Result<RestoreReport> {
    let spec = spec.as_ref();
    let t0 = store.backend().traffic();
    let (reader, export_options) = restore_setup(store, spec, options)?;
    let export = write_raw_to(&reader, out, name, &export_options).map_err(output_error(name))?;
    Ok(logged(
        store,
        RestoreReport {
            id: reader.id.clone(),
            target: Target::Raw,
            output: name.to_path_buf(),
            export,
            traffic: Traffic::default(),
        },
        t0,
    ))
}

/// [`Store::restore_in_place`](crate::store::Store::restore_in_place).
pub(crate) fn restore_in_place(
    store: &Handle,
    spec: impl AsRef<str>,
    target: &Path,
    options: &RestoreOptions,
) -> Result<RestoreReport> {
    let spec = spec.as_ref();
    let t0 = store.backend().traffic();
    let (reader, export_options) = restore_setup(store, spec, options)?;
    let export =
        write_raw_in_place(&reader, target, options.in_place, &export_options).map_err(output_error(target))?;
    Ok(logged(
        store,
        RestoreReport {
            id: reader.id.clone(),
            target: Target::Raw,
            output: target.to_path_buf(),
            export,
            traffic: Traffic::default(),
        },
        t0,
    ))
}

/// [`Store::restore_point`](crate::store::Store::restore_point).
pub(crate) fn restore_point(
    store: &Handle,
    spec: impl AsRef<str>,
    dir: &Path,
    target: Target,
    options: &RestoreOptions,
) -> Result<PointRestoreReport> {
    let spec = spec.as_ref();
    let t0 = store.backend().traffic();
    let point: PointSummary = match crate::store::state::catalog::resolve(store, spec)? {
        Selection::Point(p) => p,
        Selection::Backup(b) => match &b.point {
            Some(p) => match crate::store::state::catalog::resolve(store, p.as_str())? {
                Selection::Point(p) => p,
                Selection::Backup(_) => return Err(StoreError::NoSuchBackup(p.to_string())),
            },
            None => {
                return Err(StoreError::Invalid(format!(
                    "backup {} is not part of a restore point: restore it to a file",
                    b.id
                )));
            }
        },
    };
    std::fs::create_dir_all(dir).map_err(|e| StoreError::Output {
        path: dir.to_path_buf(),
        source: Box::new(
            crate::export::ExportError::Io { path: dir.to_path_buf(), action: "create folder", source: e }.into(),
        ),
    })?;
    let mut disks = Vec::new();
    for d in &point.disks {
        if !plain_file_name(&d.label) {
            return Err(StoreError::Invalid(format!(
                "restore point {} has a disk label {:?} that is not a file name",
                point.id, d.label
            )));
        }
        let stem = Path::new(&d.label).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let out = dir.join(format!("{stem}.{}", target.extension()));
        let mut o = options.clone();
        o.disk = None;
        disks.push(restore(store, d.backup.as_str(), &out, target, &o)?);
    }
    let record = PointRecord::read(store.backend(), &point.id)?;
    let _lease = store.read_lease("restore point")?;
    let index = store.index_avoiding_condemned()?;
    let mut attachments = Vec::new();
    for a in &record.attachments {
        if !plain_file_name(&a.name) {
            return Err(StoreError::Invalid(format!(
                "restore point {} has an attachment name {:?} that is not a file name",
                point.id, a.name
            )));
        }
        let out = dir.join(&a.name);
        let bytes = attachment_bytes(store, &index, &point.id, a)?;
        crate::export::write_file_atomically_with(&out, &bytes, options.export.sync, options.export.replace)
            .map_err(output_error(&out))?;
        attachments.push(out);
    }
    Ok(PointRestoreReport { point: point.id, disks, attachments, traffic: store.backend().traffic().since(t0) })
}

/// An attachment's bytes, every chunk verified.
pub(crate) fn attachment_bytes(
    store: &Handle,
    index: &Index,
    point: &PointId,
    a: &crate::store::format::point::AttachmentRecord,
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
    let mut record = Vec::new();
    for (i, (c, dst)) in a.chunks.iter().zip(out.chunks_mut(chunk as usize)).enumerate() {
        if let Some(id) = c {
            fetch_chunk_into(store.backend(), index, store.crypt(), *id, dst, &mut record).map_err(|reason| {
                StoreError::ChunkUnavailable {
                    id: id.to_hex(),
                    backup: format!("{point} (attachment {})", a.name),
                    slot: i as u64,
                    reason,
                }
            })?;
        }
    }
    Ok(out)
}

impl BackupReader {
    /// The backup's id.
    pub fn id(&self) -> &BackupId {
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
        fetch_chunk(&*self.backend, &self.index, &self.crypt, id, out, record).map_err(|reason| {
            StoreError::ChunkUnavailable { id: id.to_hex(), backup: self.id.to_string(), slot, reason }
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
            return fetch_chunk_into(&*self.backend, &self.index, &self.crypt, id, dst, record).map_err(|reason| {
                StoreError::ChunkUnavailable { id: id.to_hex(), backup: self.id.to_string(), slot, reason }
            });
        }
        self.fetch(slot, id, plain, record)?;
        // A chunk is exactly its slot's length; anything else is a damaged
        // manifest, and the cache below relies on it.
        let end = within + dst.len();
        if plain.len() != slot_len || end > slot_len {
            return Err(StoreError::ChunkUnavailable {
                id: id.to_hex(),
                backup: self.id.to_string(),
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

impl BackupReader {
    /// A store failure as the disk layer reports a disk's own failure,
    /// sorted by the store error's kind (the store error is its source).
    fn disk_error(&self, e: StoreError) -> crate::DiskError {
        crate::DiskError::from_source(self.info.path.clone(), e.kind(), e)
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

    /// Reads verified bytes; chunks of one call are fetched and checked on
    /// several threads at once.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> crate::disk::Result<()> {
        let size = self.info.virtual_size;
        if offset.checked_add(buf.len() as u64).is_none_or(|end| end > size) {
            return Err(crate::DiskError::OutOfRange { offset, len: buf.len() as u64, size });
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
                self.read_slot(slot, within, dst, &mut scratch).map_err(|e| self.disk_error(e))?;
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
                h.join().map_err(|_| StoreError::Internal("a reading thread panicked".into()))??;
            }
            Ok::<(), StoreError>(())
        })
        .map_err(|e| self.disk_error(e))
    }
}
