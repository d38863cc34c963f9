//! The store's public surface as an embedder meets it: honest verify and
//! stats over failing storage, errors that say which side failed, name
//! resolution, cancellation, progress, restore points, change-tracking
//! inputs, and restores into a stream or over an existing target.

mod common;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::intercept::{Intercept, Op};
use common::{init_options, noise, tweak};
use vhdkit::disk::{DiskInfo, Extent, OpenOptions};
use vhdkit::export::{InPlace, Target};
use vhdkit::store::{
    Attachment, BackupOptions, CancelToken, ChangeList, ChangeSource, DiskJob, Moment, Operation, Progress,
    ProgressSink, PruneOptions, RestoreOptions, Retention, Selection, Store, StoreError, VacuumOptions, VerifyOptions,
};
use vhdkit::{DiskError, ErrorKind, VirtualDisk};

const MIB: usize = 1 << 20;
const CHUNK: u32 = 64 * 1024;

fn init(dir: &Path) -> Store {
    let _ = std::fs::remove_dir_all(dir);
    Store::init(dir, &init_options(CHUNK, 256 * 1024)).unwrap()
}

fn raw(bytes: &[u8], name: &str) -> vhdkit::Disk {
    OpenOptions::new().open_raw_reader(Box::new(Arc::new(bytes.to_vec())), name)
}

fn read_all(store: &Store, spec: impl AsRef<str>, len: usize) -> Vec<u8> {
    let r = store.reader(spec).unwrap();
    let mut got = vec![0u8; len];
    r.read_at(&mut got, 0).unwrap();
    got
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out.sort();
    out
}

/// The OS error for a full disk: ENOSPC, or Windows' ERROR_DISK_FULL.
#[cfg(unix)]
const DISK_FULL: i32 = libc::ENOSPC;
#[cfg(windows)]
const DISK_FULL: i32 = 112;

/// A folder store whose listing of one prefix fails, or whose disk fills
/// up after a number of bytes.
fn faulty(path: &Path, fail_list: Option<&'static str>, space: Option<u64>) -> Store {
    let space = space.map(|s| Arc::new(AtomicU64::new(s)));
    let backend = Intercept::new(path, move |op| match op {
        Op::List(prefix) if fail_list == Some(prefix) => {
            Err(io::Error::new(io::ErrorKind::PermissionDenied, format!("injected: cannot list {prefix}")))
        }
        Op::Write(_, n) => match &space {
            Some(left) if left.load(Ordering::SeqCst) < n as u64 => Err(io::Error::from_raw_os_error(DISK_FULL)),
            Some(left) => {
                left.fetch_sub(n as u64, Ordering::SeqCst);
                Ok(())
            }
            None => Ok(()),
        },
        _ => Ok(()),
    });
    Store::open_backend(Arc::new(backend)).unwrap()
}

/// A store with two backups of "d".
fn two_backups(dir: &Path) -> (Store, Vec<u8>) {
    let store = init(dir);
    let d = noise(1, 2 * MIB);
    store.backup(&raw(&d, "d"), &BackupOptions::new("d")).unwrap();
    let mut d2 = d.clone();
    d2[..1000].fill(3);
    store.backup(&raw(&d2, "d"), &BackupOptions::new("d")).unwrap();
    (store, d2)
}

/// Review finding: verify turned a failed listing into an empty one and
/// could report `ok` over nothing. Every listing that fails is a problem.
#[test]
fn verify_reports_a_failed_listing_instead_of_passing_over_nothing() {
    let dir = common::scratch("api-verify-listing");
    let path = dir.join("s");
    two_backups(&path);
    for prefix in ["manifests", "packs", "index"] {
        let report = faulty(&path, Some(prefix), None).verify(&VerifyOptions::default()).unwrap();
        assert!(!report.ok, "verify passed while listing {prefix} failed: {report:?}");
        assert!(
            report.problems.iter().any(|p| p.contains("injected") || p.contains(prefix)),
            "no problem names the failed listing of {prefix}: {:?}",
            report.problems
        );
    }
    assert!(Store::open(&path).unwrap().verify(&VerifyOptions::default()).unwrap().ok);
    // Stats never computes figures over part of the store.
    for prefix in ["manifests", "index"] {
        let err = faulty(&path, Some(prefix), None).stats().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    }
}

/// Review finding: a pack write that failed in a backup worker (a full
/// store disk) was reported as `Invalid("reading the source: ...")`.
#[test]
fn a_full_store_disk_is_the_stores_error_naming_what_it_wrote() {
    let dir = common::scratch("api-enospc");
    let path = dir.join("s");
    init(&path);
    let store = faulty(&path, None, Some(600 * 1024));
    let err = store.backup(&raw(&noise(2, 4 * MIB), "d"), &BackupOptions::new("d")).unwrap_err();
    match &err {
        StoreError::Io { path: p, action, source } => {
            assert_eq!(source.kind(), io::ErrorKind::StorageFull, "{err}");
            assert!(action.contains("pack"), "the action says what was written: {action}");
            assert!(p.starts_with(&path), "{} is not in the store", p.display());
        }
        other => panic!("a full store disk reported as {other:?}"),
    }
    assert_eq!(err.kind(), ErrorKind::Io);
    assert_eq!(err.io_error_kind(), Some(io::ErrorKind::StorageFull));
    let store = Store::open(&path).unwrap();
    assert!(store.list().unwrap().is_empty(), "nothing is committed");
    store.vacuum(&VacuumOptions::immediate()).unwrap();
    assert!(files_under(&path.join("packs")).is_empty(), "vacuum removes what the failed backup left");
}

/// A disk whose reads fail from `fail_at` on.
struct Failing {
    inner: vhdkit::Disk,
    fail_at: u64,
}

impl VirtualDisk for Failing {
    fn info(&self) -> &DiskInfo {
        self.inner.info()
    }
    fn extents(&self, range: std::ops::Range<u64>) -> vhdkit::disk::Result<Vec<Extent>> {
        VirtualDisk::extents(&self.inner, range)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> vhdkit::disk::Result<()> {
        if offset + buf.len() as u64 > self.fail_at {
            let source = io::Error::new(io::ErrorKind::TimedOut, "injected: the SAN went away");
            return Err(DiskError::Io { path: "source.vhdx".into(), offset, source });
        }
        VirtualDisk::read_at(&self.inner, buf, offset)
    }
}

#[test]
fn source_and_output_failures_are_told_apart_from_the_stores() {
    let dir = common::scratch("api-sides");
    let store = init(&dir.join("s"));
    let disk = Failing { inner: raw(&noise(3, 2 * MIB), "d"), fail_at: MIB as u64 };
    let err = store.backup(&disk, &BackupOptions::new("d")).unwrap_err();
    assert!(matches!(err, StoreError::Source { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Io);
    assert_eq!(err.io_error_kind(), Some(io::ErrorKind::TimedOut));
    assert!(store.list().unwrap().is_empty());

    let ok = store.backup(&raw(&noise(3, 2 * MIB), "d"), &BackupOptions::new("d")).unwrap();
    let out = dir.join("no-such-folder").join("out.raw");
    let err = store.restore(&ok.id, &out, Target::Raw, &RestoreOptions::default()).unwrap_err();
    assert!(matches!(&err, StoreError::Output { path, .. } if path == &out), "{err:?}");
    assert_eq!(err.io_error_kind(), Some(io::ErrorKind::NotFound));
    // A missing backup is not an output error.
    let err = store.restore("nothing-like-it", &dir.join("x.raw"), Target::Raw, &RestoreOptions::default());
    assert_eq!(err.unwrap_err().kind(), ErrorKind::NotFound);
}

/// Review finding: a unique id prefix won over an exact name, so a backup
/// named `2026` resolved to whichever id started with `2026`.
#[test]
fn an_exact_name_wins_over_an_id_prefix_and_ambiguity_lists_candidates() {
    let dir = common::scratch("api-resolve");
    let store = init(&dir.join("s"));
    let d = noise(4, MIB);
    let in_2026 = store
        .backup(
            &raw(&d, "a"),
            &tweak(BackupOptions::new("disk"), |o| o.created = Moment::parse("2026-03-01T00:00:00Z")),
        )
        .unwrap();
    let named = store
        .backup(
            &raw(&d, "b"),
            &tweak(BackupOptions::new("2026"), |o| o.created = Moment::parse("2025-01-01T00:00:00Z")),
        )
        .unwrap();
    assert!(in_2026.id.as_str().starts_with("2026") && !named.id.as_str().starts_with("2026"));
    assert_eq!(store.resolve_backup("2026", None).unwrap().id, named.id, "the name, not the id prefix");
    assert_eq!(store.resolve_backup(in_2026.id.as_str(), None).unwrap().id, in_2026.id, "an exact id first");
    assert_eq!(store.resolve_backup(&in_2026.id.as_str()[..10], None).unwrap().id, in_2026.id, "a unique prefix");
    store
        .backup(
            &raw(&d, "c"),
            &tweak(BackupOptions::new("other"), |o| o.created = Moment::parse("2026-03-02T00:00:00Z")),
        )
        .unwrap();
    match store.resolve("20260") {
        Err(StoreError::Ambiguous { candidates, .. }) => assert_eq!(candidates.len(), 2, "{candidates:?}"),
        other => panic!("expected an ambiguity, got {other:?}"),
    }
}

/// A sink that records every report and calls `then` on each.
fn recording(then: impl Fn(&Progress) + Send + Sync + 'static) -> (ProgressSink, Arc<Mutex<Vec<Progress>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    (
        ProgressSink::new(move |p| {
            s.lock().unwrap().push(p);
            then(&p);
        }),
        seen,
    )
}

fn check_progress(seen: &[Progress], operation: Operation, total: u64) {
    assert!(!seen.is_empty(), "no progress for {operation:?}");
    assert!(seen.iter().all(|p| p.operation == operation));
    assert!(seen.windows(2).all(|w| w[0].bytes_done <= w[1].bytes_done), "{operation:?} went backwards");
    let last = seen.last().unwrap();
    assert_eq!((last.bytes_done, last.bytes_total), (total, total), "{operation:?} did not end at its total");
}

#[test]
fn long_operations_report_progress_to_their_totals() {
    let dir = common::scratch("api-progress");
    let store = init(&dir.join("s"));
    let d = noise(5, 3 * MIB);
    let (sink, seen) = recording(|_| {});
    store.backup(&raw(&d, "d"), &tweak(BackupOptions::new("d"), |o| o.progress = sink)).unwrap();
    check_progress(&seen.lock().unwrap(), Operation::Backup, d.len() as u64);

    let (sink, seen) = recording(|_| {});
    let options = tweak(RestoreOptions::default(), |o| o.export.progress = sink);
    store.restore("d", &dir.join("out.raw"), Target::Raw, &options).unwrap();
    check_progress(&seen.lock().unwrap(), Operation::Restore, d.len() as u64);

    let (sink, seen) = recording(|_| {});
    assert!(store.verify(&tweak(VerifyOptions::default(), |o| o.progress = sink)).unwrap().ok);
    let seen = seen.lock().unwrap();
    let total = seen.last().unwrap().bytes_total;
    assert!(total >= d.len() as u64, "verify's total {total} is less than the data it checks");
    check_progress(&seen, Operation::Verify, total);
}

#[test]
fn cancelled_operations_commit_nothing_and_leave_only_garbage() {
    let dir = common::scratch("api-cancel");
    let path = dir.join("s");
    let store = init(&path);
    let d = noise(6, 8 * MIB);
    let kept = store.backup(&raw(&d[..2 * MIB], "k"), &BackupOptions::new("kept")).unwrap();

    // A backup cancelled once it is under way.
    let token = CancelToken::new();
    let t = token.clone();
    let (sink, _) = recording(move |_| t.cancel());
    let options = tweak(BackupOptions::new("d"), |o| {
        o.cancel = token;
        o.progress = sink;
        o.threads = 2;
    });
    let err = store.backup(&raw(&d, "d"), &options).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    let listed: Vec<_> = store.list().unwrap().into_iter().map(|b| b.id).collect();
    assert_eq!(listed, vec![kept.id.clone()], "the cancelled backup committed nothing");
    assert!(store.verify(&VerifyOptions::default()).unwrap().ok);
    store.vacuum(&VacuumOptions::immediate()).unwrap();
    assert!(files_under(&path.join("tmp")).is_empty());
    assert!(store.verify(&VerifyOptions::default()).unwrap().ok);
    assert_eq!(read_all(&store, &kept.id, 2 * MIB), &d[..2 * MIB]);

    // A restore cancelled midway leaves no output.
    let out = dir.join("out.raw");
    let token = CancelToken::new();
    let t = token.clone();
    let (sink, _) = recording(move |_| t.cancel());
    let options = tweak(RestoreOptions::default(), |o| {
        o.export.cancel = token;
        o.export.progress = sink;
    });
    let err = store.restore(&kept.id, &out, Target::Vhdx, &options).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert!(!out.exists());
    assert!(files_under(&dir).iter().all(|f| !f.to_string_lossy().contains("partial")), "a temporary file was left");

    // Verify and vacuum stop and change nothing.
    let cancelled = CancelToken::new();
    cancelled.cancel();
    let err = store.verify(&tweak(VerifyOptions::default(), |o| o.cancel = cancelled.clone())).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    let before = files_under(&path);
    let err = store.vacuum(&tweak(VacuumOptions::immediate(), |o| o.cancel = cancelled.clone())).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    // Maintenance claims stay by design (a claim whose lease is gone has
    // ended; deleting one could let two later runs both win).
    let kept = |f: &PathBuf| !f.ends_with("jobs.log") && !f.starts_with(path.join("locks").join("maintenance"));
    let after: Vec<PathBuf> = files_under(&path).into_iter().filter(kept).collect();
    assert_eq!(before.into_iter().filter(kept).collect::<Vec<_>>(), after);
}

fn attachment(seed: u64) -> Attachment {
    // Text-like configuration with a zero stretch (an all-zero chunk is not stored).
    let mut bytes = format!("<vm seed=\"{seed}\"/>").repeat(9000).into_bytes();
    bytes.extend(std::iter::repeat_n(0u8, 2 * CHUNK as usize));
    bytes.extend_from_slice(b"end");
    Attachment::new("vm.vmcx", bytes).unwrap()
}

/// One job backs up two disks of a VM, with tags and an attachment: the
/// disks share one claim set (their common chunks are stored once), it
/// lists, restores, verifies and prunes as one restore point.
#[test]
fn restore_points_keep_a_vms_disks_and_files_together() {
    let dir = common::scratch("api-points");
    let path = dir.join("s");
    let store = init(&path);
    let d0 = noise(7, 2 * MIB);
    let mut d1 = d0.clone();
    d1[MIB..MIB + 10].fill(1);
    let (disk0, disk1) = (raw(&d0, "d0"), raw(&d1, "d1"));
    let jobs = [DiskJob::new("d0.vhdx", &disk0), DiskJob::new("d1.vhdx", &disk1)];
    let options = tweak(BackupOptions::new("vm"), |o| {
        o.tags = BTreeMap::from([("host".to_string(), "hv1".to_string())]);
        o.attachments = vec![attachment(1)];
    });
    let job = store.backup_point(&jobs, &options).unwrap();
    let point = job.point.clone().expect("a restore point");
    assert_eq!(job.disks[0].new_chunks, 32);
    assert_eq!((job.disks[1].new_chunks, job.disks[1].dedup_chunks), (1, 31), "the second disk stored again");

    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 2);
    for (b, label) in listed.iter().zip(["d0.vhdx", "d1.vhdx"]) {
        assert_eq!(b.point.as_ref(), Some(&point));
        assert_eq!(b.disk.as_deref(), Some(label));
        assert_eq!(b.tags.get("host").map(String::as_str), Some("hv1"));
        assert_eq!(b.attachments, vec!["vm.vmcx".to_string()]);
    }
    assert!(matches!(store.resolve("vm").unwrap(), Selection::Point(p) if p.id == point));
    assert_eq!(store.resolve_backup("vm", Some("d1.vhdx")).unwrap().id, job.disks[1].id);
    assert_eq!(store.resolve_backup(&point, None).unwrap_err().kind(), ErrorKind::InvalidInput);

    let out = dir.join("restored");
    let restored = store.restore_point(&point, &out, Target::Raw, &RestoreOptions::default()).unwrap();
    assert_eq!(restored.disks.len(), 2);
    assert!(std::fs::read(out.join("d0.raw")).unwrap() == d0);
    assert!(std::fs::read(out.join("d1.raw")).unwrap() == d1);
    assert!(std::fs::read(out.join("vm.vmcx")).unwrap() == attachment(1).bytes);

    // A second job; pruning to one keeps the newer point whole.
    let mut d1b = d1.clone();
    d1b[..100].fill(9);
    let disk1b = raw(&d1b, "d1");
    let jobs = [DiskJob::new("d0.vhdx", &disk0), DiskJob::new("d1.vhdx", &disk1b)];
    let second = store.backup_point(&jobs, &tweak(options.clone(), |o| o.attachments = vec![attachment(2)])).unwrap();
    let report = store.prune("vm", &PruneOptions::new(Retention::keep_last(1))).unwrap();
    assert_eq!(report.dropped_points, vec![point.clone()]);
    assert_eq!(report.dropped.len(), 2);
    assert_eq!(report.merged.len(), 2, "the kept incrementals were merged first");
    let left: Vec<_> = store.list().unwrap().into_iter().map(|b| b.id).collect();
    assert_eq!(left, second.disks.iter().map(|d| d.id.clone()).collect::<Vec<_>>());
    assert_eq!(read_all(&store, &second.disks[1].id, d1b.len()), d1b);
    store.vacuum(&VacuumOptions::immediate()).unwrap();
    let point2 = second.point.unwrap();
    assert!(store.verify(&tweak(VerifyOptions::default(), |o| o.only = Some(point2.to_string()))).unwrap().ok);

    // Damage the attachment's first chunk: verify of the point names it.
    let chunk = vhdkit::store::ChunkId::of(&attachment(2).bytes[..CHUNK as usize]);
    let index = vhdkit::store::state::index::Index::load(store.backend()).unwrap();
    let loc = *index.locations(&chunk).next().expect("the attachment's chunk is stored");
    let pack = store.backend().describe(&loc.pack.key());
    let f = std::fs::OpenOptions::new().write(true).open(&pack).unwrap();
    common::write_all_at(&f, b"X", loc.offset + 60);
    let report = store.verify(&tweak(VerifyOptions::default(), |o| o.only = Some(point2.to_string()))).unwrap();
    assert!(!report.ok);
    assert_eq!(report.damaged_points, vec![point2.clone()]);
    let err = store.restore_point(&point2, &dir.join("again"), Target::Raw, &RestoreOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
}

/// A job whose disks' manifests were committed but whose restore point was
/// not (the process died in between): nothing is listed, nothing continues
/// from it, and vacuum removes the manifests. A job cancelled before that
/// leaves no manifest at all.
#[test]
fn an_unfinished_job_is_never_listed_and_vacuum_removes_it() {
    let dir = common::scratch("api-unfinished");
    let path = dir.join("s");
    let store = init(&path);
    let (d0, d1) = (noise(8, MIB), noise(9, MIB));
    let (disk0, disk1) = (raw(&d0, "a"), raw(&d1, "b"));
    let jobs = [DiskJob::new("a", &disk0), DiskJob::new("b", &disk1)];

    let token = CancelToken::new();
    let t = token.clone();
    let (sink, _) = recording(move |p| {
        if p.item == 1 {
            t.cancel();
        }
    });
    let options = tweak(BackupOptions::new("vm"), |o| {
        o.cancel = token;
        o.progress = sink;
    });
    let err = store.backup_point(&jobs, &options).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    assert!(files_under(&path.join("manifests")).is_empty(), "a cancelled job committed a manifest");

    // The restore point's creation fails: its disks' manifests are there.
    let dies = Intercept::new(&path, |op| match op {
        Op::Commit(key) if key.starts_with("points/") => Err(io::Error::other("injected: the process died")),
        _ => Ok(()),
    });
    Store::open_backend(Arc::new(dies)).unwrap().backup_point(&jobs, &BackupOptions::new("vm")).unwrap_err();
    assert_eq!(files_under(&path.join("manifests")).len(), 2, "the disks' manifests were written");
    assert!(store.list().unwrap().is_empty() && store.points().unwrap().is_empty());
    let report = store.verify(&VerifyOptions::default()).unwrap();
    assert!(report.ok && report.unfinished_jobs == 2, "{report:?}");
    // A later job of the same name does not continue from it.
    let r = store.backup(&disk0, &BackupOptions::new("vm")).unwrap();
    assert_eq!(r.change_source, ChangeSource::None);
    let v = store.vacuum(&VacuumOptions::immediate()).unwrap();
    assert_eq!(v.unfinished_jobs_removed, 2, "{v:?}");
    assert_eq!(files_under(&path.join("manifests")).len(), 1);
    assert!(store.verify(&VerifyOptions::default()).unwrap().ok);
}

#[test]
fn change_lists_must_fit_the_disk_and_continue_the_tokens() {
    let dir = common::scratch("api-changes");
    let store = init(&dir.join("s"));
    let mut d = noise(10, 2 * MIB);
    let first = store.backup(&raw(&d, "d"), &tweak(BackupOptions::new("d"), |o| o.change_id = Some("rct-1".into())));
    assert_eq!(first.unwrap().change_id.as_deref(), Some("rct-1"));
    d[100..200].fill(5);
    let size = d.len() as u64;

    // A range past the end: the list is another disk's. Nothing is written.
    let before = files_under(&dir.join("s"));
    let past = ChangeList::from_ranges([100..200, size - 10..size + 10]);
    let err = store.backup(&raw(&d, "d"), &tweak(BackupOptions::new("d"), |o| o.changes = Some(past))).unwrap_err();
    assert!(matches!(err, StoreError::BadChangeList(_)), "{err:?}");
    let after: Vec<PathBuf> = files_under(&dir.join("s")).into_iter().filter(|f| !f.ends_with("jobs.log")).collect();
    assert_eq!(before.into_iter().filter(|f| !f.ends_with("jobs.log")).collect::<Vec<_>>(), after);

    // Tokens: the list must be since the previous backup's.
    let list = ChangeList::from_json(br#"{"ChangedByteOffsets": [100], "ChangedByteLengths": [100]}"#).unwrap();
    let next = |since: &str, now: &str| {
        tweak(BackupOptions::new("d"), |o| {
            o.changes = Some(list.clone());
            o.since = Some(since.into());
            o.change_id = Some(now.into());
        })
    };
    let second = store.backup(&raw(&d, "d"), &next("rct-1", "rct-2")).unwrap();
    assert_eq!(second.change_source, ChangeSource::Ranges);
    assert!(second.bytes_read <= u64::from(CHUNK));
    let err = store.backup(&raw(&d, "d"), &next("rct-1", "rct-3")).unwrap_err();
    assert!(matches!(err, StoreError::BaselineMismatch(_)), "{err:?}");
    store.backup(&raw(&d, "d"), &next("rct-2", "rct-3")).unwrap();
    let listed = store.list().unwrap();
    let tokens: Vec<_> = listed.iter().map(|b| b.change_id.clone().unwrap_or_default()).collect();
    assert_eq!(tokens, ["rct-1", "rct-2", "rct-3"]);
    assert_eq!(read_all(&store, "d", d.len()), d);
}

/// Streamed and in-place restores against qemu-img's raw view of an image
/// qemu wrote.
#[test]
fn restores_into_a_stream_and_in_place_match_qemu() {
    if !common::have_qemu() {
        return;
    }
    let dir = common::scratch("api-sinks");
    let image = dir.join("q.vhdx");
    common::run(std::process::Command::new("qemu-img").args(["create", "-q", "-f", "vhdx"]).arg(&image).arg("12M"));
    common::run(
        std::process::Command::new("qemu-io")
            .args([
                "-f",
                "vhdx",
                "-c",
                "write -P 0x5a 1M 1M",
                "-c",
                "write -P 0x11 7M 64k",
                "-c",
                "write -P 0x7e 12220k 68k",
            ])
            .arg(&image),
    );
    let want_path = dir.join("want.raw");
    common::run(
        std::process::Command::new("qemu-img").args(["convert", "-f", "vhdx", "-O", "raw"]).arg(&image).arg(&want_path),
    );
    let want = std::fs::read(&want_path).unwrap();

    let store = init(&dir.join("s"));
    let id = store.backup(&vhdkit::open(&image).unwrap(), &BackupOptions::new("q")).unwrap().id;

    let mut streamed = Vec::new();
    let r = store.restore_to_writer(&id, &mut streamed, Path::new("<memory>"), &RestoreOptions::default()).unwrap();
    assert_eq!(r.export.bytes_written, want.len() as u64);
    assert!(streamed == want, "the stream differs from qemu's raw view");

    // Over a used target, every byte is written; bytes past the disk stay.
    let target = dir.join("device.img");
    std::fs::write(&target, vec![0xEEu8; want.len() + MIB]).unwrap();
    store.restore_in_place(&id, &target, &RestoreOptions::default()).unwrap();
    let got = std::fs::read(&target).unwrap();
    assert!(got[..want.len()] == want[..], "in place differs from qemu's raw view");
    assert!(got[want.len()..].iter().all(|&b| b == 0xEE), "bytes past the disk were touched");

    // Assume-zeroed writes only data: right over zeros, and it leaves a
    // used target's holes alone (which is why it is not the default).
    let options = tweak(RestoreOptions::default(), |o| o.in_place = InPlace::AssumeZeroed);
    std::fs::write(&target, vec![0u8; want.len()]).unwrap();
    let r = store.restore_in_place(&id, &target, &options).unwrap();
    assert!(std::fs::read(&target).unwrap() == want);
    assert!(r.export.bytes_written < want.len() as u64 / 2, "wrote {} bytes of holes", r.export.bytes_written);
    std::fs::write(&target, vec![0xEEu8; want.len()]).unwrap();
    store.restore_in_place(&id, &target, &options).unwrap();
    assert_eq!(std::fs::read(&target).unwrap()[0], 0xEE);

    // A target smaller than the disk is refused before anything is written.
    std::fs::write(&target, vec![0xEEu8; 4096]).unwrap();
    let err = store.restore_in_place(&id, &target, &RestoreOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::Output { .. }), "{err:?}");
    assert!(std::fs::read(&target).unwrap().iter().all(|&b| b == 0xEE));
}

/// One disk with tags and an attachment is a restore point too: its chain
/// continues the name's single-disk backups, and it restores whole.
#[test]
fn a_single_disk_job_with_an_attachment_is_a_restore_point() {
    let dir = common::scratch("api-single-point");
    let store = init(&dir.join("s"));
    let d = noise(11, MIB);
    let plain = store.backup(&raw(&d, "vm.vhdx"), &BackupOptions::new("vm")).unwrap();
    assert!(plain.point.is_none());
    let options = tweak(BackupOptions::new("vm"), |o| o.attachments = vec![attachment(3)]);
    let r = store.backup(&raw(&d, "vm.vhdx"), &options).unwrap();
    assert_eq!(r.parent.as_ref(), Some(&plain.id), "the single-disk chain continues");
    let point = r.point.clone().expect("a restore point");
    let out = dir.join("out");
    let restored = store.restore_point("vm", &out, Target::Raw, &RestoreOptions::default()).unwrap();
    assert_eq!(restored.point, point);
    assert!(std::fs::read(out.join("vm.raw")).unwrap() == d);
    assert!(std::fs::read(out.join("vm.vmcx")).unwrap() == attachment(3).bytes);
    assert_eq!(read_all(&store, &point, d.len()), d, "a one-disk point names its disk");
}
