//! Copying backups from one store to another ([`Store::copy_to`]): a
//! backup job on the destination whose disk is the source backup.
//!
//! Each backup or restore point is copied by the same job a backup runs:
//! same write order, lease, claims, resumption of a killed job's sealed
//! packs and commit, so a copy killed at any moment leaves only garbage,
//! and the next copy takes over what the killed one had sealed. The job
//! reads the source through a [`BackupReader`], so every chunk is
//! verified against its id as it arrives, and hashes, deduplicates,
//! compresses and seals it under the destination's keys: two stores with
//! different keys (or one encrypted and one plain) copy as any two do,
//! and the destination's dedup holds.
//!
//! What a copy keeps: the backup's id, name, creation time, disk label,
//! change id and source record; a restore point's id, tags and
//! attachments. An incremental whose parent the destination holds (a
//! previous copy) is copied as an incremental of it, reading only the
//! slots its own manifest records; otherwise as a full backup (a merged
//! generation, or a parent the destination pruned). Parents are copied
//! before their children. A backup the destination already holds is
//! skipped, and one it dropped (a prune's tombstone) too, so its
//! retention stands.
//!
//! [`Store::copy_to`]: crate::store::Store::copy_to

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::cancel::CancelToken;
use crate::progress::ProgressSink;
use crate::store::backend::{Traffic, read_small};
use crate::store::crypto::Crypt;
use crate::store::error::{Result, StoreError};
use crate::store::format::changes::ChangeList;
use crate::store::format::manifest::{Kind, ManifestReader, Slot};
use crate::store::format::point::PointRecord;
use crate::store::model::id::{BackupId, PointId};
use crate::store::model::layout::tombstone_key;
use crate::store::model::limits::ReadSettings;
use crate::store::model::time::Moment;
use crate::store::ops::backup::attach::Attachment;
use crate::store::ops::backup::options::{BackupOptions, CopiedDisk, CopyIdentity};
use crate::store::ops::backup::{JobDisk, run_job};
use crate::store::state::backup_reader::{BackupReader, attachment_bytes, chunk_source, reader_on};
use crate::store::state::catalog::{BackupSummary, Catalog, Selection, catalog};
use crate::store::state::handle::Handle;
use crate::store::state::index::Index;

/// Which backups to copy.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum CopySelection {
    /// Every backup and restore point.
    #[default]
    All,
    /// Every backup of this name.
    Name(String),
    /// One backup or restore point: an id, a name (its newest) or an id prefix.
    Spec(String),
}

/// How to copy.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CopyOptions {
    /// What to copy (and, always, the parents it needs).
    pub select: CopySelection,
    /// Only backups made at or after this time (their parents still come along).
    pub since: Option<Moment>,
    /// Checked between chunks; a cancelled copy commits nothing more.
    pub cancel: CancelToken,
    /// Receives progress, per disk copied.
    pub progress: ProgressSink,
}

/// A backup or restore point not copied, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct CopySkip {
    /// The backup's or restore point's id.
    pub id: String,
    /// Why it was skipped or failed.
    pub reason: String,
}

/// What a copy did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct CopyReport {
    /// The source store's id (as its config records it).
    pub source_store: String,
    /// Backups committed in the destination.
    pub backups_copied: Vec<BackupId>,
    /// Restore points committed in the destination.
    pub points_copied: Vec<PointId>,
    /// Backups left alone: already there, or dropped there.
    pub backups_skipped: Vec<CopySkip>,
    /// Backups whose copy failed (a damaged chunk in the source, a parent
    /// that failed); the others went on.
    pub failed: Vec<CopySkip>,
    /// Chunks the destination did not hold, stored there.
    pub chunks_moved: u64,
    /// Their bytes as stored (compressed, sealed).
    pub bytes_moved: u64,
    /// Requests made to the source.
    pub source: Traffic,
    /// Requests made and bytes uploaded to the destination.
    pub dest: Traffic,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// One thing to copy: a backup on its own, or a restore point whole.
enum Unit {
    Backup(BackupSummary),
    Point(PointRecord),
}

impl Unit {
    fn created(&self) -> Moment {
        match self {
            Unit::Backup(b) => b.created,
            Unit::Point(p) => p.created,
        }
    }

    fn id(&self) -> String {
        match self {
            Unit::Backup(b) => b.id.to_string(),
            Unit::Point(p) => p.id.to_string(),
        }
    }

    /// Its backups' ids.
    fn backups(&self) -> Vec<BackupId> {
        match self {
            Unit::Backup(b) => vec![b.id.clone()],
            Unit::Point(p) => p.disks.iter().map(|d| d.backup.clone()).collect(),
        }
    }
}

/// [`Store::copy_to`](crate::store::Store::copy_to).
pub(crate) fn copy_to(src: &Handle, dst: &Handle, options: &CopyOptions) -> Result<CopyReport> {
    let started = Instant::now();
    let (s0, d0) = (src.backend().traffic(), dst.backend().traffic());
    for h in [src, dst] {
        if matches!(h.crypt(), Crypt::Locked) {
            return Err(StoreError::KeyRequired { path: h.path() });
        }
    }
    dst.require_writable()?;
    if src.config.store_id == dst.config.store_id {
        return Err(StoreError::Invalid(format!(
            "{} and {} are the same store (id {}): nothing to copy",
            src.path().display(),
            dst.path().display(),
            src.config.store_id
        )));
    }
    if src.config.chunk_size != dst.config.chunk_size {
        let kib = |n: u32| n / 1024;
        return Err(StoreError::Invalid(format!(
            "the source store cuts disks into {} KiB chunks and the destination into {} KiB; a copy keeps \
             a backup's chunk map, so they must match: make the destination with --chunk-size {}K",
            kib(src.config.chunk_size),
            kib(dst.config.chunk_size),
            kib(src.config.chunk_size)
        )));
    }
    // Held for the whole copy: no vacuum of the source deletes what it reads.
    let _lease = src.read_lease("copy")?;
    let sc = catalog(src)?.strict()?;
    let units = plan(&sc, options)?;
    let index = Arc::new(src.index_avoiding_condemned()?);
    let mut report = CopyReport {
        source_store: src.config.store_id.clone(),
        backups_copied: Vec::new(),
        points_copied: Vec::new(),
        backups_skipped: Vec::new(),
        failed: Vec::new(),
        chunks_moved: 0,
        bytes_moved: 0,
        source: Traffic::default(),
        dest: Traffic::default(),
        seconds: 0.0,
    };
    let mut failed: HashSet<BackupId> = HashSet::new();
    for unit in &units {
        if options.cancel.is_cancelled() {
            return Err(StoreError::Cancelled);
        }
        let dc = catalog(dst)?.strict()?;
        let ids = unit.backups();
        let held: HashSet<&BackupId> = dc.backups.iter().map(|b| &b.id).collect();
        if ids.iter().all(|id| held.contains(id)) {
            report.backups_skipped.extend(ids.iter().map(|id| skip(id, "already in the destination")));
            continue;
        }
        match dropped(dst, unit)? {
            // A vacuum fenced an earlier copy whose lease went stale: the
            // id can never be committed there, and was never copied.
            Some(why) if why.starts_with("fenced") => {
                let reason = format!(
                    "an earlier copy of it into the destination was fenced ({why}): the destination will never \
                     commit this id; vacuum the destination's garbage and copy into another store, or restore it \
                     and back it up there"
                );
                // Its children still copy, as full backups (the
                // destination lacks their parent), as after a prune.
                report.failed.extend(ids.iter().map(|id| skip(id, &reason)));
                continue;
            }
            // Prune dropped it there: retention stands.
            Some(why) => {
                let reason = format!("dropped in the destination: {why}");
                report.backups_skipped.extend(ids.iter().map(|id| skip(id, &reason)));
                continue;
            }
            None => {}
        }
        let parent_failed = ids.iter().find_map(|id| {
            sc.backups.iter().find(|b| b.id == *id)?.parent.as_ref().filter(|p| failed.contains(*p)).cloned()
        });
        if let Some(p) = parent_failed {
            report.failed.extend(ids.iter().map(|id| skip(id, &format!("its parent {p} was not copied"))));
            failed.extend(ids);
            continue;
        }
        match copy_unit(src, dst, unit, &sc, &dc, &index, options) {
            Ok(point) => {
                for d in &point.disks {
                    report.chunks_moved += d.new_chunks;
                    report.bytes_moved += d.stored_bytes;
                    report.backups_copied.push(d.id.clone());
                }
                report.points_copied.extend(point.point);
            }
            Err(StoreError::Cancelled) => return Err(StoreError::Cancelled),
            Err(e) => {
                report.failed.extend(ids.iter().map(|id| skip(id, &format!("{} {}: {e}", kind_of(unit), unit.id()))));
                failed.extend(ids);
            }
        }
    }
    report.source = src.backend().traffic().since(s0);
    report.dest = dst.backend().traffic().since(d0);
    report.seconds = started.elapsed().as_secs_f64();
    dst.log_job("copy", &serde_json::to_value(&report).unwrap_or_default());
    Ok(report)
}

fn skip(id: &BackupId, reason: &str) -> CopySkip {
    CopySkip { id: id.to_string(), reason: reason.to_string() }
}

fn kind_of(unit: &Unit) -> &'static str {
    match unit {
        Unit::Backup(_) => "backup",
        Unit::Point(_) => "restore point",
    }
}

/// What to copy, parents first: the selection, closed over parents, as
/// units (a backup in a restore point brings the whole point).
fn plan(sc: &Catalog, options: &CopyOptions) -> Result<Vec<Unit>> {
    let recent = |b: &BackupSummary| options.since.is_none_or(|s| b.created >= s);
    let mut chosen: BTreeSet<BackupId> = match &options.select {
        CopySelection::All => sc.backups.iter().filter(|b| recent(b)).map(|b| b.id.clone()).collect(),
        CopySelection::Name(n) => {
            if !sc.backups.iter().any(|b| b.name == *n) {
                return Err(StoreError::NoSuchBackup(n.clone()));
            }
            sc.backups.iter().filter(|b| b.name == *n && recent(b)).map(|b| b.id.clone()).collect()
        }
        CopySelection::Spec(s) => match sc.select(s)? {
            Selection::Backup(b) => [b.id].into(),
            Selection::Point(p) => p.disks.iter().map(|d| d.backup.clone()).collect(),
        },
    };
    let by_id: HashMap<&BackupId, &BackupSummary> = sc.backups.iter().map(|b| (&b.id, b)).collect();
    // Parents, and the other disks of every point touched, until nothing is added.
    loop {
        let mut more: Vec<BackupId> = Vec::new();
        for id in &chosen {
            let Some(b) = by_id.get(id) else { continue };
            more.extend(b.parent.iter().filter(|p| by_id.contains_key(p)).cloned());
            if let Some(p) = b.point.as_ref().and_then(|p| sc.points.iter().find(|r| r.id == *p)) {
                more.extend(p.disks.iter().map(|d| d.backup.clone()));
            }
        }
        let before = chosen.len();
        chosen.extend(more);
        if chosen.len() == before {
            break;
        }
    }
    let mut units: BTreeMap<(Moment, String), Unit> = BTreeMap::new();
    for id in &chosen {
        let Some(b) = by_id.get(id) else { continue };
        let unit = match b.point.as_ref().and_then(|p| sc.points.iter().find(|r| r.id == *p)) {
            Some(p) => Unit::Point(p.clone()),
            None => Unit::Backup((*b).clone()),
        };
        units.entry((unit.created(), unit.id())).or_insert(unit);
    }
    Ok(parents_first(units.into_values().collect(), &by_id))
}

/// `units` (by creation time) reordered so that every unit comes after the
/// units holding its backups' parents: hosts' clocks disagree, and a child
/// copied before its parent would arrive as a full backup.
fn parents_first(units: Vec<Unit>, by_id: &HashMap<&BackupId, &BackupSummary>) -> Vec<Unit> {
    let unit_of: HashMap<BackupId, usize> =
        units.iter().enumerate().flat_map(|(i, u)| u.backups().into_iter().map(move |b| (b, i))).collect();
    let parents: Vec<Vec<usize>> = units
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let of = |b: &BackupId| by_id.get(b).and_then(|s| s.parent.as_ref()).and_then(|p| unit_of.get(p).copied());
            u.backups().iter().filter_map(of).filter(|&j| j != i).collect()
        })
        .collect();
    // Depth first, with an explicit stack: 0 unseen, 1 on the stack, 2 placed.
    let mut state = vec![0u8; units.len()];
    let mut order = Vec::with_capacity(units.len());
    for root in 0..units.len() {
        let mut stack = vec![(root, 0usize)];
        while let Some((i, next)) = stack.pop() {
            if next == 0 {
                if state[i] != 0 {
                    continue;
                }
                state[i] = 1;
            }
            match parents[i].get(next) {
                Some(&p) => {
                    stack.push((i, next + 1));
                    // A parent on the stack already is a cycle (a damaged
                    // catalog): it is placed where it is.
                    if state[p] == 0 {
                        stack.push((p, 0));
                    }
                }
                None => {
                    state[i] = 2;
                    order.push(i);
                }
            }
        }
    }
    let mut slots: Vec<Option<Unit>> = units.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

/// Why the destination dropped this unit (its tombstone's words), if it did.
fn dropped(dst: &Handle, unit: &Unit) -> Result<Option<String>> {
    let mut ids: Vec<String> = unit.backups().iter().map(BackupId::to_string).collect();
    if let Unit::Point(p) = unit {
        ids.push(p.id.to_string());
    }
    for id in ids {
        let key = tombstone_key(&id);
        match read_small(dst.backend(), &key, 4096) {
            Ok(body) => return Ok(Some(String::from_utf8_lossy(&body).trim().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io(dst.backend().describe(&key), "read tombstone")(e)),
        }
    }
    Ok(None)
}

/// Copies one unit as one backup job on the destination.
fn copy_unit(
    src: &Handle,
    dst: &Handle,
    unit: &Unit,
    sc: &Catalog,
    dc: &Catalog,
    index: &Arc<Index>,
    options: &CopyOptions,
) -> Result<crate::store::ops::backup::PointReport> {
    let (name, created, disks): (String, Moment, Vec<(BackupId, Option<String>)>) = match unit {
        Unit::Backup(b) => (b.name.clone(), b.created, vec![(b.id.clone(), b.disk.clone())]),
        Unit::Point(p) => {
            (p.name.clone(), p.created, p.disks.iter().map(|d| (d.backup.clone(), Some(d.label.clone()))).collect())
        }
    };
    // One source for the unit's disks, read one after the other, with half
    // the store's window: the backup job it feeds holds buffers of its own.
    let reads = ReadSettings::new(src.reads.connections, src.reads.read_ahead / 2);
    let source = chunk_source(src, index.clone(), reads);
    let mut readers: Vec<BackupReader> = Vec::new();
    let mut copied: Vec<CopiedDisk> = Vec::new();
    let mut changes: Vec<Option<ChangeList>> = Vec::new();
    let mut change_ids: Vec<Option<String>> = Vec::new();
    for (id, _) in &disks {
        if !sc.backups.iter().any(|b| b.id == *id) {
            return Err(StoreError::NoSuchBackup(id.to_string()));
        }
        let mut manifest = ManifestReader::open(src.backend(), id)?;
        let header = manifest.header().clone();
        let parent =
            header.parent.clone().filter(|p| header.kind == Kind::Incremental && dc.backups.iter().any(|b| b.id == *p));
        changes.push(match parent {
            Some(_) => Some(own_ranges(&mut manifest, u64::from(header.chunk_size), header.virtual_size)?),
            None => None,
        });
        change_ids.push(header.change_id.clone());
        copied.push(CopiedDisk { id: id.clone(), parent, source: header.source.clone() });
        readers.push(reader_on(src, id, source.clone(), None)?);
    }
    let mut opts = BackupOptions::new(name);
    opts.created = Some(created);
    // The change lists are the manifests' own: exact, so no identity check
    // stands in their way.
    opts.force = true;
    opts.cancel = options.cancel.clone();
    opts.progress = options.progress.clone();
    opts.copy = Some(CopyIdentity {
        point: match unit {
            Unit::Point(p) => Some(p.id.clone()),
            Unit::Backup(_) => None,
        },
        disks: copied,
    });
    if let Unit::Point(p) = unit {
        opts.tags = p.tags.clone();
        for a in &p.attachments {
            opts.attachments.push(Attachment::new(a.name.clone(), attachment_bytes(src, index.clone(), &p.id, a)?)?);
        }
    }
    let jobs: Vec<JobDisk<'_>> = readers
        .iter()
        .zip(&disks)
        .zip(changes.iter().zip(&change_ids))
        .map(|((r, (_, label)), (c, cid))| JobDisk {
            label: label.as_deref(),
            disk: r,
            changes: c.as_ref(),
            change_id: cid.as_deref(),
            since: None,
        })
        .collect();
    run_job(dst, &jobs, &opts)
}

/// The byte ranges a manifest records for itself (data or zeros), not
/// inherited from its parent.
fn own_ranges(manifest: &mut ManifestReader<'_>, chunk: u64, size: u64) -> Result<ChangeList> {
    let mut ranges = Vec::new();
    let mut slot = 0u64;
    while let Some((s, n)) = manifest.next_run()? {
        if !matches!(s, Slot::Inherit) {
            let start = slot.saturating_mul(chunk).min(size);
            let end = slot.saturating_add(n).saturating_mul(chunk).min(size);
            if end > start {
                ranges.push(start..end);
            }
        }
        slot = slot.saturating_add(n);
    }
    Ok(ChangeList::from_ranges(ranges))
}
