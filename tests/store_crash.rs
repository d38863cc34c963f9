//! Crash safety: a child process killed at random points of a backup
//! (on encrypted stores too, with `VHDKIT_STORE_ENCRYPT=1`).
//!
//! The child runs the operation through a backend that counts every storage
//! operation (each write, commit, delete and log append) and aborts the
//! process (no destructors, no flush: as good as SIGKILL for the files) at
//! a chosen one. Trials pick that point at random over the whole
//! operation. After every trial the store must verify clean (leftover
//! garbage allowed) and every listed backup must restore bit-exact.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::intercept::{Intercept, Op};
use vhdkit::disk::OpenOptions;
use vhdkit::export::Target;
use vhdkit::store::{BackupId, BackupOptions, Store};

/// The child side: runs one operation through the crashing backend and
/// prints how many storage operations it made (when it was not aborted).
/// Run only by the trials below.
#[test]
#[ignore = "run as a child process by the crash trials"]
fn crash_child() {
    let Ok(store_dir) = std::env::var("VHDKIT_CRASH_STORE") else { return };
    let abort_at: u64 = std::env::var("VHDKIT_CRASH_AT").unwrap().parse().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let counter = count.clone();
    // Every storage write counts (create, each write, before and after a
    // commit, before and after a delete); the `abort_at`th aborts the process.
    let backend = Arc::new(Intercept::new(&store_dir, move |op| {
        if matches!(op, Op::Read(_) | Op::List(_)) {
            return Ok(());
        }
        if counter.fetch_add(1, Ordering::SeqCst) + 1 == abort_at {
            std::process::abort();
        }
        Ok(())
    }));
    let store = Store::open_backend_with(backend, &common::open_options()).unwrap();
    match std::env::var("VHDKIT_CRASH_OP").unwrap().as_str() {
        "backup" => {
            let disk = OpenOptions::new().open_raw(std::env::var("VHDKIT_CRASH_DISK").unwrap()).unwrap();
            let full = std::env::var("VHDKIT_CRASH_FULL").is_ok();
            store
                .backup(&disk, &{
                    let mut o = BackupOptions::new("b");
                    o.full = full;
                    o
                })
                .unwrap();
        }
        "merge" => {
            store
                .merge(std::env::var("VHDKIT_CRASH_BACKUP").unwrap(), &vhdkit::store::MergeOptions::default())
                .unwrap();
        }
        "prune" => {
            let policy = vhdkit::store::Retention::keep_last(3);
            store.prune("b", &vhdkit::store::PruneOptions::new(policy)).unwrap();
        }
        "vacuum" => {
            store.vacuum(&vhdkit::store::VacuumOptions::immediate()).unwrap();
        }
        other => panic!("unknown operation {other}"),
    }
    println!("OPS {}", count.load(Ordering::SeqCst));
}

/// Trials per test: `default`, or fewer when `VHDKIT_CRASH_TRIALS` says
/// so (CI's Windows leg, where every child process starts under Wine).
fn trials(default: u64) -> u64 {
    std::env::var("VHDKIT_CRASH_TRIALS").ok().and_then(|n| n.parse().ok()).map_or(default, |n: u64| n.clamp(1, default))
}

/// Runs the child; returns the operation count if it ran to the end.
fn run_child(store: &Path, op: &str, abort_at: u64, env: &[(&str, String)]) -> Option<u64> {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "crash_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env("VHDKIT_CRASH_STORE", store)
        .env("VHDKIT_CRASH_OP", op)
        .env("VHDKIT_CRASH_AT", abort_at.to_string());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() {
        let n = stdout
            .lines()
            .find_map(|l| l.split_once("OPS ").map(|(_, n)| n))
            .expect("the child reports its operations");
        return Some(n.trim().parse().unwrap());
    }
    // An abort is the expected way to die; anything else is a failure.
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        let signal = out.status.signal();
        assert_eq!(signal, Some(6), "the child failed: {}\n{}", stdout, String::from_utf8_lossy(&out.stderr));
    }
    // Rust's abort on Windows is __fastfail: STATUS_STACK_BUFFER_OVERRUN.
    #[cfg(windows)]
    assert_eq!(
        out.status.code().map(|c| c as u32),
        Some(0xC000_0409),
        "the child failed: {}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    None
}

/// Every listed backup must be one we know, and restore exactly; verify clean.
fn check_store(dir: &Path, store_dir: &Path, known: &[(BackupId, Vec<u8>)]) {
    let store = common::open_store(store_dir);
    let report = store.verify(&vhdkit::store::VerifyOptions::default()).unwrap();
    assert!(report.ok, "verify after a crash: {report:?}");
    for b in store.list().unwrap() {
        let Some((_, bytes)) = known.iter().find(|(id, _)| *id == b.id) else {
            panic!("backup {} appeared that no trial committed", b.id);
        };
        let out = dir.join("restored.raw");
        let _ = std::fs::remove_file(&out);
        store.restore(&b.id, &out, Target::Raw, &vhdkit::store::RestoreOptions::default()).unwrap();
        assert!(std::fs::read(&out).unwrap() == *bytes, "backup {} restores wrong bytes", b.id);
    }
}

#[test]
fn backups_killed_at_random_points_lose_nothing_committed() {
    let dir = common::scratch("store-crash-backup");
    let store_dir = dir.join("store");
    let store = Store::init(&store_dir, &common::suite_options(common::init_options(64 * 1024, 256 * 1024))).unwrap();
    let base = common::sparse_noise(1, 3 << 20);
    let base_disk = OpenOptions::new().open_raw_reader(Box::new(base.clone()), "b");
    let first = store.backup(&base_disk, &BackupOptions::new("b")).unwrap();
    drop(store);
    let mut known = vec![(first.id, base.clone())];

    let disk_path = dir.join("disk.raw");
    let probe = dir.join("probe");
    let mut rng = common::Rng::new(0x5eed);
    let trials = trials(40);
    let (mut killed, mut committed_then_killed) = (0, 0);
    for trial in 0..trials {
        // Each trial backs up a different version of the disk (so it has new
        // chunks to store), full or incremental.
        let mut bytes = base.clone();
        let at = (rng.next() % (bytes.len() as u64 - 300_000)) as usize;
        bytes[at..at + 300_000].copy_from_slice(&common::sparse_noise(1000 + trial, 300_000));
        std::fs::write(&disk_path, &bytes).unwrap();
        let mut env = vec![("VHDKIT_CRASH_DISK", disk_path.display().to_string())];
        if trial % 3 == 0 {
            env.push(("VHDKIT_CRASH_FULL", "1".into()));
        }
        // This trial's exact number of storage operations, on a copy.
        let _ = std::fs::remove_dir_all(&probe);
        common::copy_dir(&store_dir, &probe);
        let total = run_child(&probe, "backup", u64::MAX, &env).unwrap();
        let abort_at = 1 + rng.next() % total;
        let before: Vec<BackupId> = common::open_store(&store_dir).list().unwrap().into_iter().map(|b| b.id).collect();
        // Workers split chunks between their own packs differently from run
        // to run, so a run may need fewer operations than the probe counted
        // and finish before its abort point: then its backup is committed.
        let was_killed = run_child(&store_dir, "backup", abort_at, &env).is_none();
        killed += u64::from(was_killed);
        // A backup that committed (before dying, or by finishing) is listed.
        for b in common::open_store(&store_dir).list().unwrap() {
            if !before.contains(&b.id) {
                known.push((b.id, bytes.clone()));
                committed_then_killed += u64::from(was_killed);
            }
        }
        check_store(&dir, &store_dir, &known);
    }
    eprintln!("{killed} backups killed at random points; {committed_then_killed} had committed first");
    assert!(killed >= trials * 3 / 4, "only {killed} of {trials} trials were killed");
    assert!(committed_then_killed > 0 && committed_then_killed < killed, "the trials never straddled the commit");
}

/// A store with an incremental chain of eight backups of "b" (each changing
/// a different part) and one full backup of "c"; returns it and what each
/// backup holds.
fn chain_store(dir: &Path) -> (PathBuf, Vec<(BackupId, Vec<u8>)>) {
    let store_dir = dir.join("pristine");
    let _ = std::fs::remove_dir_all(&store_dir);
    let store = Store::init(&store_dir, &common::suite_options(common::init_options(64 * 1024, 256 * 1024))).unwrap();
    let mut known = Vec::new();
    let mut bytes = common::sparse_noise(3, 2 << 20);
    for i in 0..8u64 {
        let at = (i as usize * 250_000) % (bytes.len() - 200_000);
        bytes[at..at + 200_000].copy_from_slice(&common::sparse_noise(50 + i, 200_000));
        let disk = OpenOptions::new().open_raw_reader(Box::new(bytes.clone()), "b");
        let r = store.backup(&disk, &common::tweak(BackupOptions::new("b"), |o| o.max_chain = 100)).unwrap();
        known.push((r.id, bytes.clone()));
    }
    let c = common::sparse_noise(9, 1 << 20);
    let r =
        store.backup(&OpenOptions::new().open_raw_reader(Box::new(c.clone()), "c"), &BackupOptions::new("c")).unwrap();
    known.push((r.id, c));
    (store_dir, known)
}

/// Kills `op` at random storage operations, each trial on a fresh copy of
/// `pristine`; after each, the store verifies clean and every listed backup
/// restores exactly.
fn kill_trials(
    dir: &Path,
    pristine: &Path,
    op: &str,
    env: &[(&str, String)],
    known: &[(BackupId, Vec<u8>)],
    trials: u64,
) {
    let work = dir.join("work");
    let probe = dir.join("probe");
    let _ = std::fs::remove_dir_all(&probe);
    common::copy_dir(pristine, &probe);
    let total = run_child(&probe, op, u64::MAX, env).unwrap();
    assert!(total >= 3, "{op} made only {total} storage operations");
    let mut rng = common::Rng::new(0xC0FFEE ^ total);
    for trial in 0..trials {
        let _ = std::fs::remove_dir_all(&work);
        common::copy_dir(pristine, &work);
        let abort_at = 1 + rng.next() % total;
        let finished = run_child(&work, op, abort_at, env);
        assert!(finished.is_none(), "{op} trial {trial}: outlived its abort point {abort_at} of {total}");
        check_store(dir, &work, known);
    }
    eprintln!("{op}: {trials} kills over {total} storage operations");
}

#[test]
fn merges_killed_at_random_points_lose_nothing() {
    let dir = common::scratch("store-crash-merge");
    let (pristine, known) = chain_store(&dir);
    let newest = known[7].0.to_string();
    kill_trials(&dir, &pristine, "merge", &[("VHDKIT_CRASH_BACKUP", newest)], &known, trials(30));
}

#[test]
fn prunes_killed_at_random_points_lose_nothing_kept() {
    let dir = common::scratch("store-crash-prune");
    let (pristine, known) = chain_store(&dir);
    kill_trials(&dir, &pristine, "prune", &[], &known, trials(30));
}

#[test]
fn vacuums_killed_at_random_points_lose_nothing() {
    let dir = common::scratch("store-crash-vacuum");
    let (pristine, known) = chain_store(&dir);
    // Give vacuum work: drop most of the chain first (merging the kept).
    let store = common::open_store(&pristine);
    store.prune("b", &vhdkit::store::PruneOptions::new(vhdkit::store::Retention::keep_last(2))).unwrap();
    let kept: Vec<(BackupId, Vec<u8>)> = {
        let listed: Vec<BackupId> = store.list().unwrap().into_iter().map(|b| b.id).collect();
        known.into_iter().filter(|(id, _)| listed.contains(id)).collect()
    };
    drop(store);
    kill_trials(&dir, &pristine, "vacuum", &[], &kept, trials(30));
}
