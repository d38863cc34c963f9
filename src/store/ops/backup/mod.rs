//! Backups: cutting disks into chunks, hashing, deduplicating, packing.
//!
//! A job backs up one disk ([`Store::backup`]) or several disks of a VM
//! together ([`Store::backup_point`]), optionally with tags and attachments.
//! Each disk runs through the pipeline in [`pipeline`] in turn; all of a
//! job's disks and attachments share one claim set, so a chunk two disks
//! hold is stored once.
//!
//! Write order (docs/store-format.md): packs sealed and flushed, then index
//! files for their chunks (one every `Limits::index_flush` entries and one
//! before each commit), then each disk's manifest; for a restore point, the
//! attachments' chunks and their index file, and last the point object,
//! which is the job's commit. A process killed or a job cancelled earlier
//! leaves unreferenced files that vacuum removes, never a backup that fails
//! to restore and never part of a restore point.
//!
//! Memory: the buffer pool, the claim set and pending index entries are
//! bounded; what grows is the store's index (64 bytes per stored chunk,
//! loaded once), which depends on the store, not on the disk.
//!
//! May import: the layers below `ops` and its own files; the pipeline and
//! its parts import `options.rs`, never this file.

mod attach;
mod baseline;
pub(crate) mod copy;
pub(crate) mod options;
mod packer;
mod pipeline;
mod plan;
mod resume;
mod stability;

pub use options::{BackupOptions, BackupReport, DEFAULT_MAX_CHAIN, DiskJob, PointReport};

use std::collections::HashSet;
use std::time::Instant;

pub use attach::Attachment;

use crate::disk::VirtualDisk;
use crate::progress::ProgressSink;
use crate::store::backend::Traffic;
use crate::store::error::{Result, StoreError};
use crate::store::format::changes::ChangeList;
use crate::store::format::manifest::{ChangeSource, Kind, ManifestHeader, ManifestWriter, SourceInfo};
use crate::store::format::point::{PointDisk, PointRecord};
use crate::store::model::id::{BackupId, PointId};
use crate::store::model::time::Moment;
use crate::store::state::catalog::{AttachmentSummary, BackupSummary};
use crate::store::state::chain::{ChainCursor, ChainWalk};
use crate::store::state::handle::Handle;
use crate::store::state::index::Index;
use crate::store::state::lease::{Lease, LeaseMode};
use baseline::{Compare, PrevChunks};
use packer::Claims;
use pipeline::DiskRun;
use plan::{ChangeInput, ChangeSet, incremental_plan, precheck, source_info};

/// What `plan_disk` needs to know about one disk of the job.
struct DiskPlan<'a, 'j> {
    disk: &'a JobDisk<'j>,
    previous: Option<&'a BackupSummary>,
    id: BackupId,
    point: Option<&'a PointId>,
    created: Moment,
    progress: ProgressSink,
    /// The source record to keep (a copy's), instead of the disk's own.
    source: Option<SourceInfo>,
}

/// One disk as the job sees it.
struct JobDisk<'a> {
    label: Option<&'a str>,
    disk: &'a dyn VirtualDisk,
    changes: Option<&'a ChangeList>,
    change_id: Option<&'a str>,
    since: Option<&'a str>,
}

/// [`Store::backup`](crate::store::Store::backup).
pub(crate) fn backup(store: &Handle, disk: &dyn VirtualDisk, options: &BackupOptions) -> Result<BackupReport> {
    let job = JobDisk {
        label: None,
        disk,
        changes: options.changes.as_ref(),
        change_id: options.change_id.as_deref(),
        since: options.since.as_deref(),
    };
    let mut report = run_job(store, &[job], options)?;
    let mut disk = report.disks.remove(0);
    disk.traffic = report.traffic;
    Ok(disk)
}

/// [`Store::backup_point`](crate::store::Store::backup_point).
pub(crate) fn backup_point(store: &Handle, disks: &[DiskJob<'_>], options: &BackupOptions) -> Result<PointReport> {
    if options.changes.is_some() || options.change_id.is_some() || options.since.is_some() {
        return Err(StoreError::Invalid(
            "a multi-disk job takes change lists and tokens per disk (DiskJob), not in BackupOptions".into(),
        ));
    }
    if disks.is_empty() {
        return Err(StoreError::Invalid("a backup job needs at least one disk".into()));
    }
    let jobs: Vec<JobDisk> = disks
        .iter()
        .map(|d| JobDisk {
            label: Some(d.label.as_str()),
            disk: d.disk,
            changes: d.changes.as_ref(),
            change_id: d.change_id.as_deref(),
            since: d.since.as_deref(),
        })
        .collect();
    run_job(store, &jobs, options)
}

fn run_job(store: &Handle, disks: &[JobDisk<'_>], options: &BackupOptions) -> Result<PointReport> {
    store.require_writable()?;
    let started = Instant::now();
    let t0 = store.backend().traffic();
    check_job(disks, options)?;
    let created = options.created.unwrap_or_else(Moment::now);
    let point = match &options.copy {
        Some(c) => c.point.clone(),
        None => (disks.len() > 1 || !options.tags.is_empty() || !options.attachments.is_empty())
            .then(|| PointId::generate(created)),
    };
    // Every id is fixed now, and the lease names the commit's: a fencer
    // tombstones those if this job goes stale before committing.
    let ids: Vec<BackupId> = match &options.copy {
        Some(c) => c.disks.iter().map(|d| d.id.clone()).collect(),
        None => disks.iter().map(|_| BackupId::generate(created)).collect(),
    };
    let commits: Vec<String> = match &point {
        Some(p) => vec![p.to_string()],
        None => ids.iter().map(BackupId::to_string).collect(),
    };
    let mut reports = Vec::with_capacity(disks.len());
    let mut attachments = (Vec::new(), 0);
    {
        let lease = Lease::acquire_committing(
            store.backend.clone(),
            store.leases,
            LeaseMode::Backup,
            "backup",
            false,
            commits.clone(),
        )?;
        // Read after the lease is taken: a vacuum that condemns later
        // waits for this lease before deleting anything.
        let (index, orphans) = crate::store::ops::backup::resume::index_and_orphans(store)?;
        let catalog = crate::store::state::catalog::catalog(store)?.strict()?;
        let previous = match &options.copy {
            // A copy continues the copy of its original's parent, if the
            // destination has it, and nothing else.
            Some(c) => c
                .disks
                .iter()
                .map(|d| d.parent.as_ref().and_then(|p| catalog.backups.iter().find(|b| b.id == *p)))
                .collect(),
            None => previous_of(&catalog, &options.name, disks),
        };
        // Everything that can be refused is refused before anything is written.
        for (d, prev) in disks.iter().zip(&previous) {
            precheck(d.disk.info(), *prev, &change_input(d, options))?;
        }
        let claims = Claims::new(store.limits);
        let mut manifests = Vec::with_capacity(disks.len());
        for (i, (d, prev)) in disks.iter().zip(&previous).enumerate() {
            if options.cancel.is_cancelled() {
                return Err(StoreError::Cancelled);
            }
            lease.check()?;
            let run = DiskPlan {
                disk: d,
                previous: *prev,
                id: ids[i].clone(),
                point: point.as_ref(),
                created,
                progress: options.progress.for_item(i, disks.len()),
                source: options.copy.as_ref().map(|c| c.disks[i].source.clone()),
            };
            let before = stability::SourceState::take(d.disk);
            let adopted = orphans.adopted();
            let mut run = plan_disk(store, run, &index, &orphans, &claims, &lease, options)?;
            if let (Some(p), Some(l)) = (prev, d.label)
                && p.disk.as_deref() != Some(l)
            {
                run.report.continues_label = p.disk.clone();
            }
            let (manifest, mut report) = finish_disk(store, run)?;
            report.resumed_chunks = orphans.adopted() - adopted;
            report.source_changed = stability::SourceState::take(d.disk).changes_since(&before);
            if options.require_stable && !report.source_changed.is_empty() {
                return Err(StoreError::SourceChanged {
                    path: d.disk.info().path.clone(),
                    changes: report.source_changed,
                });
            }
            manifests.push((manifest, report));
        }
        if point.is_some() {
            attachments = attach::store_attachments(store, &index, &claims, &options.attachments, &options.cancel)?;
            if let Some(entries) = claims.take_sealed(1) {
                lease.check()?;
                crate::store::ops::backup::pipeline::write_index_file(store, entries)?;
            }
        }
        if options.cancel.is_cancelled() {
            return Err(StoreError::Cancelled);
        }
        // Commit: every disk's manifest, then the restore point.
        lease.check()?;
        for (manifest, report) in manifests {
            manifest.commit()?;
            reports.push(report);
        }
        if let Some(point) = &point {
            let record = PointRecord::new(
                point.clone(),
                options.name.clone(),
                created,
                options.tags.clone(),
                disks
                    .iter()
                    .zip(&reports)
                    .map(|(d, r)| PointDisk { label: point_label(d), backup: r.id.clone() })
                    .collect(),
                attachments.0.clone(),
            );
            record.commit(store.backend())?;
        }
        for id in &commits {
            lease.confirm_commit(id)?;
        }
    }
    // A chain past its cap is folded into a full backup, under a
    // maintenance lease; if another maintenance runs, the merge waits for
    // next time.
    let cap = if options.max_chain == 0 { DEFAULT_MAX_CHAIN } else { options.max_chain };
    for report in &mut reports {
        if report.kind == Kind::Incremental && chain_length(store, &report.id)? > cap {
            report.merged = Some(match store.lease(LeaseMode::Maintenance, "merge", false) {
                Ok(_lease) => {
                    crate::store::state::chain::write_merged(store.backend(), &report.id)?;
                    true
                }
                Err(StoreError::StoreBusy { .. }) => false,
                Err(e) => return Err(e),
            });
        }
        store.log_job("backup", &serde_json::to_value(&*report).unwrap_or_default());
    }
    let report = PointReport {
        point,
        name: options.name.clone(),
        disks: reports,
        attachments: attachments.0.iter().map(|a| AttachmentSummary { name: a.name.clone(), size: a.size }).collect(),
        attachment_bytes: attachments.1,
        seconds: started.elapsed().as_secs_f64(),
        traffic: store.backend().traffic().since(t0),
    };
    if report.point.is_some() {
        store.log_job("backup point", &serde_json::to_value(&report).unwrap_or_default());
    }
    Ok(report)
}

/// Decides one disk's backup and sets up its pipeline.
fn plan_disk<'r>(
    store: &'r Handle,
    plan: DiskPlan<'r, '_>,
    index: &'r Index,
    orphans: &'r resume::Orphans,
    claims: &'r Claims,
    lease: &'r Lease,
    options: &'r BackupOptions,
) -> Result<DiskRun<'r>> {
    let DiskPlan { disk: d, previous, id, point, created, progress, source: kept_source } = plan;
    let info = d.disk.info();
    let chunk = u64::from(store.config.chunk_size);
    let plan = incremental_plan(info, chunk, previous, &change_input(d, options))?;
    let (kind, parent, source, change) = match plan {
        Some(p) => (Kind::Incremental, Some(p.parent.id), p.source, p.change),
        None => (Kind::Full, None, ChangeSource::None, ChangeSet::All),
    };
    let header = ManifestHeader {
        id: id.clone(),
        name: options.name.clone(),
        kind,
        parent: parent.clone(),
        created,
        chunk_size: store.config.chunk_size,
        virtual_size: info.virtual_size,
        change_source: source,
        source: kept_source.unwrap_or_else(|| source_info(info)),
        change_id: d.change_id.map(str::to_string),
        point: point.cloned(),
        disk: d.label.map(str::to_string),
    };
    let report = BackupReport {
        id,
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
        point: point.cloned(),
        disk: d.label.map(str::to_string),
        change_id: d.change_id.map(str::to_string),
        continues_label: None,
        source_changed: Vec::new(),
        resumed_chunks: 0,
        traffic: Traffic::default(),
    };
    let backend = store.backend();
    let compare = match (source, &parent) {
        (ChangeSource::Hash, Some(p)) => Some(Compare::new(ChainCursor::open(backend, p)?)),
        _ => None,
    };
    // A differencing source's partial slots start from the previous
    // backup's chunks, so its parent image is never read.
    let prev = match (&change, &parent) {
        (ChangeSet::Own, Some(p)) => {
            Some(PrevChunks::new(ChainCursor::open(backend, p)?, index, backend, store.crypt()))
        }
        _ => None,
    };
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    Ok(DiskRun {
        store,
        disk: d.disk,
        index,
        orphans,
        claims,
        change,
        prev,
        compare,
        manifest: ManifestWriter::create(backend, &header)?,
        report,
        threads,
        cancel: &options.cancel,
        lease,
        progress,
    })
}

/// Runs one disk's pipeline and commits the index file for its new
/// chunks; returns its finished manifest, which the job commits once
/// every disk is done.
fn finish_disk(store: &Handle, mut run: DiskRun<'_>) -> Result<(ManifestWriter, BackupReport)> {
    let started = Instant::now();
    run.run()?;
    if let Some(entries) = run.claims.take_sealed(1) {
        run.lease.check()?;
        crate::store::ops::backup::pipeline::write_index_file(store, entries)?;
    }
    if run.cancel.is_cancelled() {
        return Err(StoreError::Cancelled);
    }
    let DiskRun { manifest, mut report, .. } = run;
    report.seconds = started.elapsed().as_secs_f64();
    Ok((manifest, report))
}

/// Manifests in backup `id`'s chain, itself included.
pub(crate) fn chain_length(store: &Handle, id: &BackupId) -> Result<usize> {
    let mut n = 0;
    for h in ChainWalk::new(store.backend(), id) {
        h?;
        n += 1;
    }
    Ok(n)
}

/// The backup each disk of the job continues: the newest of the job's
/// name with the disk's label, or else (a label the store has not seen,
/// as Hyper-V's new `.avhdx` name after a checkpoint) the newest backup of
/// another label, not used in this job, that captured this very image or
/// its parent (by identity: VHDX DataWriteGuid, VHD unique id; never the
/// nil identity of raw disks), when exactly one such label exists and no
/// other disk of the job matches it too. Anything less certain starts a
/// new chain: a full backup is slower, a wrong parent would be wrong.
fn previous_of<'c>(
    catalog: &'c crate::store::state::catalog::Catalog,
    name: &str,
    disks: &[JobDisk<'_>],
) -> Vec<Option<&'c BackupSummary>> {
    let labels: HashSet<&str> = disks.iter().filter_map(|d| d.label).collect();
    let mut newest_per_label: Vec<&BackupSummary> = Vec::new();
    for b in catalog.backups.iter().rev().filter(|b| b.name == name) {
        let Some(l) = b.disk.as_deref() else { continue };
        if labels.contains(l) || newest_per_label.iter().any(|n| n.disk.as_deref() == Some(l)) {
            continue;
        }
        newest_per_label.push(b);
    }
    let matches = |d: &JobDisk<'_>| -> Vec<&'c BackupSummary> {
        let info = d.disk.info();
        let mut ids = vec![info.identity];
        if let Some(p) = &info.parent {
            ids.push(p.expected_identity);
            ids.extend(p.alternate_identity);
        }
        ids.retain(|g| *g != crate::Guid::NIL);
        newest_per_label.iter().copied().filter(|b| ids.contains(&b.source.identity)).collect()
    };
    let own: Vec<Option<&BackupSummary>> = disks.iter().map(|d| catalog.newest(name, d.label)).collect();
    let found: Vec<Vec<&BackupSummary>> = disks
        .iter()
        .zip(&own)
        .map(|(d, o)| if o.is_none() && d.label.is_some() { matches(d) } else { Vec::new() })
        .collect();
    own.iter()
        .zip(&found)
        .map(|(o, f)| match (o, f.as_slice()) {
            (Some(p), _) => Some(*p),
            (None, [one]) if found.iter().filter(|g| g.iter().any(|b| b.id == one.id)).count() == 1 => Some(*one),
            _ => None,
        })
        .collect()
}

/// A disk's label in its restore point: the job's label, or for a
/// single-disk job (whose chain has no label) the image's file name.
fn point_label(d: &JobDisk<'_>) -> String {
    match d.label {
        Some(l) => l.to_string(),
        None => {
            let name = source_info(d.disk.info()).file_name;
            if crate::store::format::point::plain_file_name(&name) { name } else { "disk".to_string() }
        }
    }
}

fn change_input<'a>(d: &'a JobDisk<'a>, options: &'a BackupOptions) -> ChangeInput<'a> {
    ChangeInput { name: &options.name, full: options.full, force: options.force, changes: d.changes, since: d.since }
}

/// Refuses a job that cannot be right: no name, repeated labels or
/// attachment names.
fn check_job(disks: &[JobDisk<'_>], options: &BackupOptions) -> Result<()> {
    if options.name.is_empty() {
        return Err(StoreError::Invalid("a backup needs a name".into()));
    }
    let mut labels = HashSet::new();
    for d in disks {
        if let Some(l) = d.label
            && (l.is_empty() || !labels.insert(l))
        {
            return Err(StoreError::Invalid(format!("disk label {l:?} is empty or repeated in the job")));
        }
    }
    let mut names = HashSet::new();
    for a in &options.attachments {
        if !names.insert(a.name.as_str()) {
            return Err(StoreError::Invalid(format!("attachment {:?} is given twice", a.name)));
        }
    }
    if options.cancel.is_cancelled() {
        return Err(StoreError::Cancelled);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::store::Store;
    use crate::store::model::limits::Limits;
    use std::ops::Range;

    use super::*;
    use crate::Extent;
    use crate::disk::{DiskInfo, ExtentState, ImageFormat, Subformat};
    use crate::store::{InitOptions, VacuumOptions, VerifyOptions};

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
        fn extents(&self, range: Range<u64>) -> crate::disk::Result<Vec<Extent>> {
            let end = range.end.min(self.info.virtual_size);
            Ok(vec![Extent { offset: range.start, length: end - range.start, state: ExtentState::Data, depth: 0 }])
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> crate::disk::Result<()> {
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
        store.h.limits = Limits { claimed: 2, index_flush: 3 };
        let disk = Repeating::new(60);
        let report = store.backup(&disk, &BackupOptions { threads: 2, ..BackupOptions::new("d") }).unwrap();
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
        assert!(store.verify(&VerifyOptions::default()).unwrap().ok);

        store.vacuum(&VacuumOptions { threshold: 0.0, ..VacuumOptions::immediate() }).unwrap();
        assert_eq!(Index::load(store.backend()).unwrap().entries().len(), 5);
        let mut again = vec![0u8; disk.bytes.len()];
        store.reader(&report.id).unwrap().read_at(&mut again, 0).unwrap();
        assert!(again == disk.bytes, "restore after vacuum differs");
    }
}
