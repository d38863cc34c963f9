//! Incremental backups from each change source, their cost, synthetic
//! merge, retention, vacuum, and how they share the store lock.

mod common;

use common::{block_size, child_of, init_options, noise, tweak};

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, mpsc};

use vhdkit::VirtualDisk;
use vhdkit::disk::OpenOptions;
use vhdkit::export::{ExportOptions, Target, export};
use vhdkit::store::{
    BackupOptions, ChangeSource, Kind, MergeOptions, Moment, ProgressSink, PruneOptions, Retention, Store, StoreError,
    VacuumOptions, VerifyOptions,
};

const MIB: usize = 1 << 20;
const CHUNK: u64 = 64 * 1024;

fn init(dir: &Path) -> Store {
    let _ = std::fs::remove_dir_all(dir);
    common::init_store(dir, &init_options(CHUNK as u32, 1 << 20))
}

fn raw(bytes: &[u8], name: &str) -> vhdkit::Disk {
    OpenOptions::new().open_raw_reader(Box::new(Arc::new(bytes.to_vec())), name)
}

fn opts(name: &str) -> BackupOptions {
    BackupOptions::new(name)
}

fn restores_to(store: &Store, id: impl AsRef<str>, want: &[u8]) {
    let id = id.as_ref();
    let r = store.reader(id).unwrap();
    let mut got = vec![0u8; want.len()];
    r.read_at(&mut got, 0).unwrap();
    assert!(got == want, "backup {id} restores different bytes");
}

/// A disk with data and holes.
fn disk0() -> Vec<u8> {
    let mut d = noise(1, 16 * MIB);
    d[3 * MIB..5 * MIB].fill(0);
    d
}

#[test]
fn a_changed_range_list_reads_only_the_changed_chunks() {
    let dir = common::scratch("inc-ranges");
    let store = init(&dir.join("s"));
    let d0 = disk0();
    store.backup(&raw(&d0, "d"), &opts("d")).unwrap();
    let mut d1 = d0.clone();
    let ranges = [(100u64, 10u64), (7 * MIB as u64 + 5, 200_000), (16 * MIB as u64 - 1, 1)];
    for (i, &(off, len)) in ranges.iter().enumerate() {
        d1[off as usize..(off + len) as usize].fill(0x30 + i as u8);
    }
    let changed: vhdkit::store::ChangeList = ranges.iter().map(|&(o, l)| o..o + l).collect::<Vec<_>>().into();
    let widened: u64 = ranges.iter().map(|&(o, l)| ((o + l).div_ceil(CHUNK) - o / CHUNK) * CHUNK).sum();
    let r = store.backup(&raw(&d1, "d"), &tweak(opts("d"), |o| o.changes = Some(changed.clone()))).unwrap();
    assert_eq!((r.kind, r.change_source), (Kind::Incremental, ChangeSource::Ranges));
    assert!(r.bytes_read <= widened, "read {} bytes for {widened} bytes of changed chunks", r.bytes_read);
    restores_to(&store, &r.id, &d1);
    // Ranges for another disk (another disk id) are refused; --force overrides.
    let other = export_vhdx(&dir, "other.vhdx", &d1);
    let err = store.backup(&other, &tweak(opts("d"), |o| o.changes = Some(changed.clone()))).unwrap_err();
    assert!(matches!(err, StoreError::BaselineMismatch(_)), "{err}");
    let forced = store
        .backup(
            &other,
            &tweak(opts("d"), |o| {
                o.changes = Some(changed);
                o.force = true;
            }),
        )
        .unwrap();
    restores_to(&store, &forced.id, &d1);
}

fn export_vhdx(dir: &Path, name: &str, bytes: &[u8]) -> vhdkit::Disk {
    let path = dir.join(name);
    export(&raw(bytes, "x"), &path, Target::Vhdx, &block_size(MIB as u32)).unwrap();
    vhdkit::open(&path).unwrap()
}

#[test]
fn hash_comparison_stores_only_what_differs() {
    let dir = common::scratch("inc-hash");
    let store = init(&dir.join("s"));
    let d0 = disk0();
    let full = store.backup(&raw(&d0, "d"), &opts("d")).unwrap();
    let mut d1 = d0.clone();
    d1[9 * MIB + 7..9 * MIB + 20].fill(9);
    d1[4 * MIB..4 * MIB + 10].fill(1); // inside the hole: a zero slot gains data
    let r = store.backup(&raw(&d1, "d"), &opts("d")).unwrap();
    assert_eq!(
        (r.kind, r.change_source, r.parent.as_ref().map(|p| p.as_str())),
        (Kind::Incremental, ChangeSource::Hash, Some(full.id.as_str()))
    );
    assert_eq!(r.new_chunks, 2);
    restores_to(&store, &full.id, &d0);
    restores_to(&store, &r.id, &d1);
}

/// A checkpoint: the source is a differencing child of the image the
/// previous backup captured. Its own allocation is the change set, and its
/// parent is not read at all: after the chain is opened the parent file is
/// overwritten with garbage, and the backup still restores to the true view.
#[test]
fn a_checkpoint_child_is_backed_up_without_reading_its_parent() {
    for format in [Target::Vhdx, Target::Vhd] {
        let dir = common::scratch(&format!("inc-child-{format:?}"));
        let store = init(&dir.join("s"));
        let ext = if format == Target::Vhdx { "vhdx" } else { "vhd" };
        let base_path = dir.join(format!("base.{ext}"));
        let d0 = disk0();
        export(&raw(&d0, "b"), &base_path, format, &block_size(MIB as u32)).unwrap();
        let base = vhdkit::open(&base_path).unwrap();
        let first = store.backup(&base, &opts("vm")).unwrap();
        drop(base);
        // The checkpoint: a child with scattered changes, some sub-chunk.
        let mut d1 = d0.clone();
        d1[512..1024].fill(0xAB);
        d1[6 * MIB..6 * MIB + 300_000].fill(0xCD);
        d1[11 * MIB + 4096..11 * MIB + 8192].fill(0);
        let child_path = dir.join(format!("child.{ext}"));
        export(&raw(&d1, "c"), &child_path, format, &child_of(&base_path)).unwrap();
        let child = vhdkit::open(&child_path).unwrap();
        assert_eq!(child.depth(), 2);
        let own: u64 =
            child.own_extents(0..child.size()).unwrap().iter().filter(|e| e.depth == 0).map(|e| e.length).sum();
        // Ruin the parent's bytes in place (the open chain reads the same inode).
        let len = std::fs::metadata(&base_path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&base_path).unwrap();
        let garbage = vec![0x5Au8; 1 << 20];
        let mut at = if format == Target::Vhdx { 4 << 20 } else { 8192 };
        while at + (1 << 20) < len - 512 {
            common::write_all_at(&f, &garbage, at);
            at += 1 << 20;
        }
        drop(f);
        let r = store.backup(&child, &opts("vm")).unwrap();
        assert_eq!((r.kind, r.change_source), (Kind::Incremental, ChangeSource::Differencing), "{format:?}");
        assert_eq!(r.parent.as_ref().map(|p| p.as_str()), Some(first.id.as_str()));
        let widened_own = own.div_ceil(CHUNK) * CHUNK + 3 * CHUNK;
        assert!(r.bytes_read <= widened_own + own, "{format:?}: read {} for {own} own bytes", r.bytes_read);
        restores_to(&store, &r.id, &d1);
        restores_to(&store, &first.id, &d0);
    }
}

#[test]
fn a_child_of_something_else_is_refused_unless_forced() {
    let dir = common::scratch("inc-child-mismatch");
    let store = init(&dir.join("s"));
    let d0 = disk0();
    store.backup(&raw(&d0, "vm"), &opts("vm")).unwrap();
    // A child of an image the store never captured.
    let base_path = dir.join("elsewhere.vhdx");
    export(&raw(&d0, "b"), &base_path, Target::Vhdx, &ExportOptions::default()).unwrap();
    let mut d1 = d0.clone();
    d1[..4096].fill(7);
    let child_path = dir.join("child.vhdx");
    export(&raw(&d1, "c"), &child_path, Target::Vhdx, &child_of(&base_path)).unwrap();
    let child = vhdkit::open(&child_path).unwrap();
    let err = store.backup(&child, &opts("vm")).unwrap_err();
    assert!(matches!(err, StoreError::BaselineMismatch(_)), "{err}");
    let forced = store.backup(&child, &tweak(opts("vm"), |o| o.force = true)).unwrap();
    assert_eq!(forced.change_source, ChangeSource::Hash);
    restores_to(&store, &forced.id, &d1);
    // The same child backed up again: not refused, compared by hash.
    let again = store.backup(&child, &opts("vm")).unwrap();
    assert_eq!(again.change_source, ChangeSource::Hash);
    assert_eq!(again.new_chunks, 0);
}

fn chain_of(store: &Store, id: &vhdkit::store::BackupId) -> usize {
    let all = store.list().unwrap();
    let mut n = 1;
    let mut next = all.iter().find(|b| &b.id == id).and_then(|b| b.parent.clone());
    while let Some(p) = next {
        n += 1;
        next = all.iter().find(|b| b.id == p).and_then(|b| b.parent.clone());
    }
    n
}

#[test]
fn long_chains_are_merged_and_merges_keep_every_backup_whole() {
    let dir = common::scratch("inc-chain");
    let store = init(&dir.join("s"));
    let mut d = disk0();
    let mut versions = Vec::new();
    let mut merges = 0;
    for i in 0..12u8 {
        d[i as usize * MIB + 100..i as usize * MIB + 400].fill(i + 1);
        let r = store.backup(&raw(&d, "d"), &tweak(opts("d"), |o| o.max_chain = 4)).unwrap();
        assert!(chain_of(&store, &r.id) <= 4, "chain of {} is {}", r.id, chain_of(&store, &r.id));
        if r.merged.is_some() {
            merges += 1;
            assert_eq!(store.list().unwrap().iter().find(|b| b.id == r.id).unwrap().kind, Kind::Full);
        }
        versions.push((r.id, d.clone()));
    }
    // Twelve backups under a cap of four cannot all chain.
    assert!(merges >= 2, "only {merges} automatic merges");
    for (id, bytes) in &versions {
        restores_to(&store, id, bytes);
    }
    // An explicit merge in the middle folds exactly the chain the listing
    // shows, and its descendants still restore.
    let mid = &versions[6].0;
    let before = chain_of(&store, mid);
    assert!(before > 1, "backup 6 should be an incremental");
    let report = store.merge(mid, &MergeOptions::default()).unwrap();
    assert_eq!(report.chain_length, before);
    assert_eq!(store.list().unwrap().iter().find(|b| &b.id == mid).unwrap().kind, Kind::Full);
    for (id, bytes) in &versions {
        restores_to(&store, id, bytes);
    }
}

#[test]
fn prune_keeps_the_policy_merging_where_needed_and_vacuum_reclaims() {
    let dir = common::scratch("inc-prune");
    let store = init(&dir.join("s"));
    let monday = Moment::parse("2026-01-05T06:00:00Z").unwrap();
    let mut d = disk0();
    let mut versions = Vec::new();
    // Two backups a day for 20 days; each changes a different 1 MiB.
    for i in 0..40usize {
        let at = (i * 3 % 16) * MIB;
        d[at..at + MIB].copy_from_slice(&noise(100 + i as u64, MIB));
        let created = monday.add_secs((i as i64 / 2) * 86_400 + (i as i64 % 2) * 43_200);
        let o = tweak(opts("d"), |o| {
            o.created = Some(created);
            o.max_chain = 100;
        });
        let r = store.backup(&raw(&d, "d"), &o).unwrap();
        versions.push((r.id, d.clone()));
    }
    let policy = tweak(Retention::keep_last(3), |r| {
        r.keep_daily = 5;
        r.keep_weekly = 2;
        r.keep_monthly = 1;
    });
    let dry = store.prune("d", &tweak(PruneOptions::new(policy), |o| o.dry_run = true)).unwrap();
    assert_eq!(store.list().unwrap().len(), 40, "a dry run changed nothing");
    let report = store.prune("d", &PruneOptions::new(policy)).unwrap();
    assert_eq!(report.kept, dry.kept);
    // Newest 3; newest of the 5 latest days (days 15-19); weekly adds the
    // newest of the previous week (day 13 = Sunday 2026-01-18).
    let expect: BTreeSet<vhdkit::store::BackupId> =
        [39usize, 38, 37, 35, 33, 31, 27].iter().map(|&i| versions[i].0.clone()).collect();
    assert_eq!(report.kept.iter().cloned().collect::<BTreeSet<_>>(), expect);
    let listed: BTreeSet<vhdkit::store::BackupId> = store.list().unwrap().into_iter().map(|b| b.id).collect();
    assert_eq!(listed, expect);
    for (id, bytes) in versions.iter().filter(|(id, _)| expect.contains(id)) {
        restores_to(&store, id, bytes);
    }
    // Vacuum: the store shrinks to about the live data.
    let before = store.stats().unwrap();
    let v = store.vacuum(&VacuumOptions::immediate()).unwrap();
    assert!(v.bytes_reclaimed > 0, "{v:?}");
    let after = store.stats().unwrap();
    assert!(after.stored_bytes < before.stored_bytes);
    let live = after.unique_bytes;
    assert!(
        after.stored_bytes as f64 <= 1.25 * live as f64,
        "stored {} bytes for {live} bytes of live data",
        after.stored_bytes
    );
    assert!(store.verify(&VerifyOptions::default()).unwrap().ok);
    for (id, bytes) in versions.iter().filter(|(id, _)| expect.contains(id)) {
        restores_to(&store, id, bytes);
    }
}

/// Backups never wait for maintenance. A backup pauses half-way (holding
/// its lease, its index loaded) while every chunk it deduplicates against
/// is dead to the committed backups. A vacuum runs meanwhile: it condemns
/// those chunks' packs but cannot delete them while the lease is held. The
/// backup commits; the next vacuum finds its chunks live again and keeps
/// (rescues) the packs.
#[test]
fn vacuum_beside_a_running_backup_keeps_what_the_backup_commits() {
    let dir = common::scratch("inc-lease");
    let store = init(&dir.join("s"));
    let d0 = disk0();
    store.backup(&raw(&d0, "a"), &opts("old")).unwrap();
    store.backup(&raw(&noise(5, 16 * MIB), "b"), &opts("old")).unwrap();
    store.prune("old", &PruneOptions::new(Retention::keep_last(1))).unwrap();

    let (hold_tx, hold_rx) = mpsc::channel::<()>();
    let (started_tx, started_rx) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let backup = scope.spawn(|| {
            let started = std::sync::Mutex::new(Some(started_tx));
            let hold = std::sync::Mutex::new(hold_rx);
            // Pause inside the backup (lease held, index loaded) until told.
            let progress = ProgressSink::new(move |_p| {
                if let Some(tx) = started.lock().unwrap().take() {
                    let _ = tx.send(());
                    let _ = hold.lock().unwrap().recv();
                }
            });
            store.backup(&raw(&d0, "d"), &tweak(opts("d"), |o| o.progress = progress)).unwrap()
        });
        started_rx.recv().unwrap();
        let v = store.vacuum(&VacuumOptions::immediate()).unwrap();
        assert!(v.packs_condemned > 0, "{v:?}");
        assert_eq!(v.packs_deleted, 0, "deleted under a live backup lease: {v:?}");
        assert!(v.records_pending > 0, "{v:?}");
        hold_tx.send(()).unwrap();
        let committed = backup.join().unwrap();
        assert_eq!(committed.new_chunks, 0, "the backup deduplicated against the condemned copies");
        let v = store.vacuum(&VacuumOptions::immediate()).unwrap();
        assert!(v.records_finished > 0 && v.packs_rescued > 0, "{v:?}");
        restores_to(&store, &committed.id, &d0);
        assert!(store.verify(&VerifyOptions::default()).unwrap().ok);
        // And once nothing needs them, a vacuum deletes what is dead.
        let v = store.vacuum(&VacuumOptions::immediate()).unwrap();
        restores_to(&store, &committed.id, &d0);
        assert!(store.verify(&VerifyOptions::default()).unwrap().ok, "{v:?}");
    });
}
