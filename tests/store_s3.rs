//! The store on a real S3 server (moto, see `common::s3`): conditional
//! creates, the command line on a bucket, retried transient faults, clean
//! failure on permanent ones, and processes killed mid-upload and
//! mid-vacuum. The rest of the store suite runs here too with
//! `VHDKIT_STORE_BACKEND=s3` (`.ci/run` does).

#![cfg(feature = "s3")]

mod common;

use std::io;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::fault_proxy::{FaultProxy, Faults};
use common::s3::S3;
use vhdkit::VirtualDisk;
use vhdkit::disk::OpenOptions;
use vhdkit::export::{Target, export};
use vhdkit::store::{Backend, BackupId, BackupOptions, Store, VacuumOptions, VerifyOptions};

const MIB: usize = 1 << 20;

fn raw(bytes: &[u8], name: &str) -> vhdkit::Disk {
    OpenOptions::new().open_raw_reader(Box::new(Arc::new(bytes.to_vec())), name)
}

/// `bytes` written as a dynamic VHDX at `path`, by our exporter.
fn vhdx(path: &Path, bytes: &[u8]) {
    let _ = std::fs::remove_file(path);
    // One disk id for every version, as a VM's disk keeps it.
    let id: vhdkit::format::Guid = "6f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b".parse().unwrap();
    let options = common::tweak(common::block_size(1 << 20), |o| o.disk_id = Some(id));
    export(&raw(bytes, "source"), path, Target::Vhdx, &options).unwrap();
}

fn read_back(store: &Store, spec: &str, len: usize) -> Vec<u8> {
    let r = store.reader(spec).unwrap_or_else(|e| panic!("open {spec}: {e}"));
    let mut got = vec![0u8; len];
    r.read_at(&mut got, 0).unwrap_or_else(|e| panic!("read {spec}: {e}"));
    got
}

fn put(b: &dyn Backend, key: &str, bytes: &[u8]) -> io::Result<()> {
    let mut w = b.create(key)?;
    for piece in bytes.chunks(MIB) {
        w.write(piece)?;
    }
    w.commit()
}

#[test]
fn objects_are_created_only_if_absent_on_a_real_server() {
    let Some(s3) = common::s3::s3() else { return };
    let b = s3.backend(&s3.url("create"));
    let small = b"a small object".to_vec();
    let large = common::sparse_noise(7, 17 * MIB + 5);
    put(&*b, "manifests/x.manifest", &small).unwrap();
    put(&*b, "packs/ab/large.pack", &large).unwrap();
    // A second writer of either key is refused and the first one stays.
    for (key, bytes) in [("manifests/x.manifest", &small), ("packs/ab/large.pack", &large)] {
        let e = put(&*b, key, b"intruder").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{key}: {e}");
        assert!(b.read_all(key).unwrap() == **bytes, "{key} was replaced");
    }
    let mut tail = vec![0u8; 4096];
    b.read_at("packs/ab/large.pack", &mut tail, (large.len() - 4096) as u64).unwrap();
    assert!(tail == large[large.len() - 4096..]);
    assert_eq!(
        b.read_at("packs/ab/large.pack", &mut tail, large.len() as u64 - 10).unwrap_err().kind(),
        io::ErrorKind::UnexpectedEof
    );
    assert_eq!(b.read_all("packs/none.pack").unwrap_err().kind(), io::ErrorKind::NotFound);
    let keys: Vec<String> = b.list("packs").unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(keys, ["packs/ab/large.pack"]);
    assert_eq!(b.stat("packs/ab/large.pack").unwrap().size, large.len() as u64);
    b.delete("packs/ab/large.pack").unwrap();
    b.delete("packs/ab/large.pack").unwrap();
    assert!(b.list("packs").unwrap().is_empty());
    // An abandoned writer leaves nothing.
    {
        let mut w = b.create("packs/cd/abandoned.pack").unwrap();
        w.write(&large).unwrap();
    }
    assert_eq!(b.stat("packs/cd/abandoned.pack").unwrap_err().kind(), io::ErrorKind::NotFound);
    assert!(b.traffic().requests > 10 && b.traffic().bytes_uploaded > large.len() as u64);
}

fn vhdkit_cli(s3: &S3, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(common::cli());
    s3.env(&mut cmd).args(args).env("XDG_CACHE_HOME", std::env::temp_dir().join("vhdkit-s3-test-cache"));
    cmd.output().unwrap()
}

fn ok(s3: &S3, args: &[&str]) -> String {
    let out = vhdkit_cli(s3, args);
    assert!(
        out.status.success(),
        "vhdkit {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The command line keeps a store in a bucket as it does in a folder, from
/// the standard AWS environment, and an incremental costs few requests.
#[test]
fn the_command_line_keeps_a_store_in_a_bucket() {
    let Some(s3) = common::s3::s3() else { return };
    let dir = common::scratch("s3-cli");
    let url = s3.url("cli");
    ok(s3, &["store", "init", &url, "--compression", "zstd"]);
    let again = vhdkit_cli(s3, &["store", "init", &url]);
    assert_eq!(again.status.code(), Some(2), "init over a store must fail, as a usage error");
    let missing = vhdkit_cli(s3, &["store", "init", "s3://no-such-bucket-here/x"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no-such-bucket-here"));

    let mut bytes = common::sparse_noise(1, 24 * MIB);
    let image = dir.join("disk.vhdx");
    vhdx(&image, &bytes);
    let full = json(&ok(s3, &["backup", &url, "--name", "vm", "--json", image.to_str().unwrap()]));
    assert_eq!(full["kind"], "full");
    // Change 1 % in three places and say where.
    let ranges = [(MIB, 65536), (9 * MIB + 4096, 100_000), (20 * MIB, 8192)];
    let mut r = common::Rng::new(99);
    for (off, len) in ranges {
        bytes[off..off + len].iter_mut().for_each(|b| *b = r.next() as u8);
    }
    vhdx(&image, &bytes);
    let list: Vec<serde_json::Value> =
        ranges.iter().map(|(o, l)| serde_json::json!({"offset": o, "length": l})).collect();
    let changed = dir.join("ranges.json");
    std::fs::write(&changed, serde_json::to_string(&list).unwrap()).unwrap();
    let inc = json(&ok(
        s3,
        &["backup", &url, "--name", "vm", "--json", "--changed", changed.to_str().unwrap(), image.to_str().unwrap()],
    ));
    assert_eq!(inc["kind"], "incremental");
    let requests = inc["requests"].as_u64().unwrap();
    assert!(requests > 0 && requests < 50, "an incremental took {requests} requests");
    assert!(inc["bytes_uploaded"].as_u64().unwrap() < 4 * MIB as u64, "{inc}");

    let out = dir.join("restored.raw");
    ok(s3, &["restore", &url, "vm", "--to", "raw", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == bytes, "restore from the bucket differs");
    ok(s3, &["merge", &url, "vm"]);
    ok(s3, &["prune", &url, "vm", "--keep-last", "1"]);
    let vacuum = json(&ok(s3, &["vacuum", &url, "--grace", "0s", "--json"]));
    assert!(vacuum["bytes_reclaimed"].as_u64().unwrap() > 0, "{vacuum}");
    let verify = json(&ok(s3, &["verify", &url, "--json"]));
    assert_eq!(verify["ok"], true, "{verify}");
    std::fs::remove_file(&out).unwrap();
    ok(s3, &["restore", &url, "vm", "--to", "raw", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == bytes);
    let log = ok(s3, &["log", &url]);
    for op in ["backup", "merge", "prune", "vacuum", "verify"] {
        assert!(log.contains(op), "the job log has no {op}: {log}");
    }
}

fn proxied_store(s3: &S3, name: &str, faults: Faults, seed: u64) -> (Store, FaultProxy, String) {
    let proxy = FaultProxy::start(&s3.endpoint, faults, seed);
    let url = s3.url(name);
    // Packs of 12 MiB go up as multipart uploads: parts and completions
    // meet faults too.
    let options = common::init_options(256 * 1024, 12 << 20);
    Store::init_backend(s3.backend(&url), &options).unwrap();
    let store = Store::open_backend(Arc::new(s3.backend_via(&url, &proxy.endpoint))).unwrap();
    (store, proxy, url)
}

#[test]
fn transient_faults_are_retried_until_the_backup_commits() {
    let Some(s3) = common::s3::s3() else { return };
    let faults = Faults { transient: 0.3, ..Faults::none() };
    let (store, proxy, url) = proxied_store(s3, "transient", faults, 42);
    let bytes = common::sparse_noise(3, 40 * MIB);
    let report = store.backup(&raw(&bytes, "disk"), &BackupOptions::new("vm")).unwrap();
    assert!(read_back(&store, "vm", bytes.len()) == bytes);
    let seen = proxy.seen.load(std::sync::atomic::Ordering::Relaxed);
    let faulted = proxy.faulted.load(std::sync::atomic::Ordering::Relaxed);
    assert!(faulted * 5 > seen, "only {faulted} of {seen} requests met a fault");
    // Straight to the server: the store is whole.
    let direct = Store::open_backend(s3.backend(&url)).unwrap();
    assert!(direct.verify(&VerifyOptions::default()).unwrap().ok);
    assert_eq!(direct.list().unwrap().len(), 1);
    assert!(read_back(&direct, report.id.as_ref(), bytes.len()) == bytes);
}

/// Restores over a link 20 ms away that fails one request in ten: every
/// byte as backed up, and chunks lying together in a pack fetched in few
/// ranged reads, not one request per chunk.
#[test]
fn restores_over_a_slow_faulty_link_are_exact_and_coalesced() {
    let Some(s3) = common::s3::s3() else { return };
    let faults = Faults { transient: 0.1, delay: Duration::from_millis(20), ..Faults::none() };
    let (store, _proxy, _url) = proxied_store(s3, "slow-restore", faults, 7);
    // 48 MiB of noise in 256 KiB chunks: 192 chunks, incompressible.
    let bytes = common::sparse_noise(11, 48 * MIB);
    store.backup(&raw(&bytes, "disk"), &BackupOptions::new("vm")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("restored.raw");
    let report = store.restore("vm", &out, Target::Raw, &Default::default()).unwrap();
    assert!(std::fs::read(&out).unwrap() == bytes, "the restore differs");
    let chunks = (bytes.len() / (256 << 10)) as u64;
    // One GET per chunk before; ranged reads of up to 2 MiB (8 chunks)
    // now, plus the manifest, index and lease traffic.
    assert!(
        report.traffic.requests * 3 < chunks,
        "{} requests for {chunks} chunks: reads are not coalesced",
        report.traffic.requests
    );
    // Verify reads each pack's records in ranges of up to 8 MiB, not one
    // request per record.
    let verify = store.verify(&VerifyOptions::default()).unwrap();
    assert!(verify.ok, "{verify:?}");
    assert_eq!(verify.records_checked, chunks);
    assert!(verify.traffic.requests * 2 < chunks, "verify made {} requests", verify.traffic.requests);
    // A reader read at random offsets gets the same bytes.
    let reader = store.reader("vm").unwrap();
    for (i, len) in [(7u64, 1000usize), (3, 300_000), (40, 2 * MIB + 17), (0, 4096)] {
        let at = i * MIB as u64 + 123;
        let mut got = vec![0u8; len];
        reader.read_at(&mut got, at).unwrap();
        assert!(got[..] == bytes[at as usize..at as usize + len], "read at {at}");
    }
}

/// Copies folder -> S3 -> S3 -> folder, each bucket 20 ms away behind a
/// proxy that fails one request in ten: a chain arrives as a chain and
/// every copy restores exactly; a second copy moves nothing.
#[test]
fn copies_between_folders_and_buckets_over_a_slow_faulty_link() {
    use vhdkit::store::{ChangeList, CopyOptions, Kind};
    let Some(s3) = common::s3::s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let options = common::init_options(256 * 1024, 4 << 20);
    let folder = Store::init(dir.path().join("a"), &options).unwrap();
    let mut bytes = common::sparse_noise(21, 24 * MIB);
    folder.backup(&raw(&bytes, "disk"), &BackupOptions::new("vm")).unwrap();
    bytes[5 * MIB..5 * MIB + 100_000].copy_from_slice(&common::noise(22, 100_000));
    let mut o = BackupOptions::new("vm");
    o.changes = Some(ChangeList::from_ranges(std::iter::once(5 * MIB as u64..5 * MIB as u64 + 100_000)));
    folder.backup(&raw(&bytes, "disk"), &o).unwrap();
    let slow = || Faults { transient: 0.1, delay: Duration::from_millis(20), ..Faults::none() };
    let bucket = |name: &str, seed| {
        let (store, proxy, _) = proxied_store(s3, name, slow(), seed);
        (store, proxy)
    };
    let (b1, _p1) = bucket("copy-b1", 5);
    let (b2, _p2) = bucket("copy-b2", 6);
    let back = Store::init(dir.path().join("back"), &options).unwrap();
    for (from, to) in [(&folder, &b1), (&b1, &b2), (&b2, &back)] {
        let r = from.copy_to(to, &CopyOptions::default()).unwrap();
        assert_eq!(r.backups_copied.len(), 2, "{r:?}");
        let kinds: Vec<Kind> = to.list().unwrap().iter().map(|b| b.kind).collect();
        assert_eq!(kinds, vec![Kind::Full, Kind::Incremental]);
        assert!(read_back(to, "vm", bytes.len()) == bytes, "a copy differs");
        let again = from.copy_to(to, &CopyOptions::default()).unwrap();
        assert_eq!((again.backups_copied.len(), again.chunks_moved), (0, 0), "{again:?}");
    }
    assert!(b2.verify(&VerifyOptions::default()).unwrap().ok);
    assert!(back.verify(&VerifyOptions::default()).unwrap().ok);
}

/// The peak memory of a restore from S3 does not grow with the number
/// of connections: it is bounded by the read-ahead window, not by
/// requests in flight. Measured as the child's own high-water mark
/// (`VmHWM` in /proc, polled until it exits): `wait4`'s maximum resident
/// set would count the test process's memory, which a spawned child
/// shares until it execs.
/// Linux only: it reads `/proc`, and elsewhere would measure nothing and pass.
#[cfg(target_os = "linux")]
#[test]
fn a_restore_from_s3_keeps_its_memory_whatever_the_connections() {
    let Some(s3) = common::s3::s3() else { return };
    let url = s3.url("rss");
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    std::fs::write(&disk, common::noise(31, 160 * MIB)).unwrap();
    let run = |args: &[&str]| -> u64 {
        let mut cmd = Command::new(common::cli());
        s3.env(&mut cmd).arg("--no-cache").args(args).stdout(Stdio::null()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap();
        let status = format!("/proc/{}/status", child.id());
        let mut peak_kib = 0u64;
        loop {
            if let Ok(text) = std::fs::read_to_string(&status)
                && let Some(line) = text.lines().find(|l| l.starts_with("VmHWM:"))
            {
                let kib = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
                peak_kib = peak_kib.max(kib);
            }
            if let Some(exit) = child.try_wait().unwrap() {
                assert!(exit.success(), "vhdkit {args:?} failed");
                return peak_kib / 1024;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    run(&["store", "init", &url, "--compression", "zstd"]);
    run(&["backup", &url, "--from", "raw", disk.to_str().unwrap(), "--name", "vm"]);
    let out = dir.path().join("out.raw");
    for connections in ["4", "16", "64"] {
        let _ = std::fs::remove_file(&out);
        let mib = run(&["--connections", connections, "restore", &url, "vm", out.to_str().unwrap(), "--to", "raw"]);
        eprintln!("restore from S3 at --connections {connections}: peak RSS {mib} MiB");
        // A restore of 160 MiB runs long enough to be seen; zero would
        // mean nothing was measured, and the bound below would hold vacuously.
        assert!(mib > 0, "no VmHWM was read while the restore ran");
        assert!(mib < 256, "--connections {connections}: {mib} MiB");
        assert!(std::fs::read(&out).unwrap() == std::fs::read(&disk).unwrap());
    }
}

#[test]
fn a_permanent_failure_fails_cleanly_and_commits_nothing() {
    let Some(s3) = common::s3::s3() else { return };
    for (what, refused) in [("pack", "/packs/"), ("index", "/index/"), ("manifest", "/manifests/")] {
        let faults = Faults {
            transient: 0.0,
            permanent: Box::new(move |target: &str| {
                (target.starts_with("PUT ") || target.starts_with("POST ")) && target.contains(refused)
            }),
            ..Faults::none()
        };
        let (store, _proxy, url) = proxied_store(s3, &format!("refused-{what}"), faults, 1);
        let bytes = common::sparse_noise(5, 20 * MIB);
        let e = store.backup(&raw(&bytes, "disk"), &BackupOptions::new("vm")).unwrap_err();
        assert!(e.to_string().contains(refused.trim_matches('/')), "{what}: the error does not name the key: {e}");
        let direct = Store::open_backend(s3.backend(&url)).unwrap();
        assert!(direct.list().unwrap().is_empty(), "{what}: a backup appeared");
        assert!(direct.verify(&VerifyOptions::default()).unwrap().ok, "{what}");
        // What was left is garbage that vacuum removes.
        direct.vacuum(&VacuumOptions::immediate()).unwrap();
        let left: Vec<String> = direct.backend().list("packs").unwrap().into_iter().map(|o| o.key).collect();
        assert!(left.is_empty(), "{what}: vacuum left {left:?}");
    }
}

/// Runs `vhdkit args` and kills it with SIGKILL after `after`; whether it
/// finished first.
fn run_killed(s3: &S3, args: &[&str], after: Duration) -> bool {
    let mut cmd = Command::new(common::cli());
    s3.env(&mut cmd).args(args).arg("--no-cache").stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + after;
    while std::time::Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    child.wait().unwrap();
    false
}

/// Every backup listed is one a trial committed, and restores that trial's
/// bytes; verify is clean.
fn check(store: &Store, known: &[(BackupId, Vec<u8>)]) {
    let v = store.verify(&VerifyOptions::default()).unwrap();
    assert!(v.ok, "verify after a kill: {v:?}");
    for b in store.list().unwrap() {
        let (_, bytes) = known.iter().find(|(id, _)| *id == b.id).unwrap_or_else(|| panic!("unknown backup {}", b.id));
        assert!(read_back(store, b.id.as_ref(), bytes.len()) == *bytes, "backup {} ({}) differs", b.id, b.name);
    }
}

#[test]
fn processes_killed_during_upload_and_vacuum_lose_nothing_committed() {
    let Some(s3) = common::s3::s3() else { return };
    let dir = common::scratch("s3-kill");
    let url = s3.url("kill");
    let options = common::init_options(256 * 1024, 12 << 20);
    let store = Store::init_backend(s3.backend(&url), &options).unwrap();
    let mut r = common::Rng::new(2024);
    let mut known: Vec<(BackupId, Vec<u8>)> = Vec::new();
    let mut bytes = common::sparse_noise(100, 32 * MIB);
    for trial in 0..6u64 {
        // Three chains of two: the second of each is an incremental.
        let name = format!("vm{}", trial / 2);
        if trial % 2 == 0 {
            bytes = common::sparse_noise(100 + trial, 32 * MIB);
        } else {
            let at = (r.next() % (28 * MIB as u64)) as usize;
            bytes[at..at + 3 * MIB].iter_mut().for_each(|b| *b = r.next() as u8);
        }
        let image = dir.join(format!("trial{trial}.vhdx"));
        vhdx(&image, &bytes);
        // Killed anywhere from the start to past the end of the upload.
        let after = Duration::from_millis(100 + r.next() % 2500);
        let finished = run_killed(s3, &["backup", &url, "--name", &name, image.to_str().unwrap()], after);
        let new: Vec<BackupId> =
            store.list().unwrap().into_iter().map(|b| b.id).filter(|id| known.iter().all(|(k, _)| k != id)).collect();
        assert!(new.len() <= 1, "one trial, several new backups: {new:?}");
        assert!(!finished || new.len() == 1, "trial {trial} finished but committed nothing");
        known.extend(new.into_iter().map(|id| (id, bytes.clone())));
        check(&store, &known);
    }
    // Drop the older of each chain, then vacuum and kill it in either phase.
    for chain in 0..3 {
        ok(s3, &["prune", &url, &format!("vm{chain}"), "--keep-last", "1"]);
    }
    for trial in 0..4 {
        let grace = if trial % 2 == 0 { "0s" } else { "1s" };
        let after = Duration::from_millis(50 + r.next() % 1500);
        run_killed(s3, &["vacuum", &url, "--grace", grace], after);
        check(&store, &known);
        std::thread::sleep(Duration::from_millis(1100));
    }
    // A last, whole vacuum.
    ok(s3, &["vacuum", &url, "--grace", "0s"]);
    check(&store, &known);
    eprintln!("{} of 6 killed backups had committed", known.len());
}

/// Object Lock: refused on a bucket without it; on one with it, pruned
/// backups' objects wait for their lock to end, vacuum extends a short
/// lock, and an attacker with the store's credentials who deletes every
/// object version leaves every backup whole.
#[test]
fn object_lock_keeps_every_backup_through_an_attack() {
    let Some(s3) = common::s3::s3() else { return };
    use vhdkit::store::{LockMode, ObjectLock, PruneOptions, Retention};
    let locked = |mode| {
        common::tweak(common::init_options(256 * 1024, 4 << 20), |o| o.object_lock = Some(ObjectLock { days: 1, mode }))
    };
    let e = Store::init_backend(s3.backend(&s3.url("no-lock")), &locked(LockMode::Compliance)).unwrap_err();
    assert!(e.to_string().contains("Object Lock"), "{e}");

    let bucket = format!("{}-locked", s3.bucket);
    common::s3::create_bucket(&s3.endpoint, &bucket, true).unwrap();
    let url = s3.url_in(&bucket, "locked");
    // Encrypted: its key objects must survive the attack too, or nothing
    // could be opened.
    let store = Store::init_backend(s3.backend(&url), &common::encrypted(locked(LockMode::Compliance))).unwrap();
    let raw_backend = s3.backend(&url);
    let mut versions = Vec::new();
    let mut bytes = common::sparse_noise(11, 12 * MIB);
    for round in 0..3 {
        bytes[round * MIB..round * MIB + 300_000].iter_mut().for_each(|b| *b = b.wrapping_add(1));
        let r = store.backup(&raw(&bytes, "disk"), &BackupOptions::new("vm")).unwrap();
        versions.push((r.id, bytes.clone()));
    }
    let keys: Vec<String> = raw_backend.list("").unwrap().into_iter().map(|o| o.key).collect();
    assert!(keys.iter().any(|k| k.starts_with("keys/")));
    for k in keys.iter().filter(|k| {
        k.starts_with("packs/") || k.starts_with("manifests/") || k.starts_with("keys/") || k.as_str() == "config"
    }) {
        let until = raw_backend.retained_until(k).unwrap();
        assert!(
            until.is_some_and(|u| u > std::time::SystemTime::now() + Duration::from_secs(23 * 3600)),
            "{k}: {until:?}"
        );
    }
    // Prune the first two; vacuum may not delete what is locked, and says so.
    store.prune("vm", &PruneOptions::new(Retention::keep_last(1))).unwrap();
    let v = store.vacuum(&VacuumOptions::immediate()).unwrap();
    assert!(v.records_locked > 0 && v.packs_deleted == 0, "{v:?}");
    let (kept, kept_bytes) = versions.last().unwrap().clone();

    // The attack: a delete of every key, then of every version and marker.
    let prefix = url.trim_start_matches(&format!("s3://{bucket}/"));
    for k in &keys {
        let _ = common::s3::http(&s3.endpoint, "DELETE", &format!("/{bucket}/{prefix}/{k}"), &[], b"");
    }
    let mut refused = Vec::new();
    for (key, version) in s3.versions(&bucket, prefix) {
        let (status, _) =
            common::s3::http(&s3.endpoint, "DELETE", &format!("/{bucket}/{key}?versionId={version}"), &[], b"")
                .unwrap();
        if status == 403 {
            refused.push(key);
        } else {
            assert!(status == 204 || status == 200, "delete {key} {version}: HTTP {status}");
        }
    }
    assert!(keys.iter().filter(|k| k.starts_with("log/")).count() >= 3, "{keys:?}");
    for k in keys.iter().filter(|k| {
        k.starts_with("packs/")
            || k.starts_with("index/")
            || k.starts_with("keys/")
            || k.starts_with("log/")
            || k.as_str() == "config"
    }) {
        assert!(refused.iter().any(|r| r.ends_with(k.as_str())), "the server let {k} be deleted");
    }
    let after = Store::open_backend_with(s3.backend(&url), &common::key_options()).unwrap();
    let v = after.verify(&VerifyOptions::default()).unwrap();
    assert!(v.ok, "{v:?}");
    assert!(read_back(&after, kept.as_ref(), kept_bytes.len()) == kept_bytes, "the kept backup differs");
    // The record of what was backed up survives too.
    let log = after.job_log().unwrap();
    let ops: Vec<&str> = log.iter().filter_map(|e| e["op"].as_str()).collect();
    assert_eq!(ops.iter().filter(|op| **op == "backup").count(), 3, "{ops:?}");
    assert!(ops.contains(&"prune") && ops.contains(&"vacuum"), "{ops:?}");
    // The pruned ones are gone from the catalog but their data is all
    // there: their manifests survive the attack too.
    for (id, _) in &versions[..2] {
        assert!(refused.iter().any(|r| r.contains(&id.to_string())), "manifest of {id} was deleted");
    }

    // A live object whose lock is short (a writer killed before locking
    // it, or an old one) gets a full lock from vacuum.
    let gurl = s3.url_in(&bucket, "governance");
    let g = Store::init_backend(s3.backend(&gurl), &locked(LockMode::Governance)).unwrap();
    g.backup(&raw(&bytes, "disk"), &BackupOptions::new("vm")).unwrap();
    let graw = s3.backend(&gurl);
    let pack = graw.list("packs").unwrap()[0].key.clone();
    graw.retain(&pack, LockMode::Governance, std::time::SystemTime::now() + Duration::from_secs(3600)).unwrap();
    let v = g.vacuum(&VacuumOptions::immediate()).unwrap();
    assert!(v.retention_extended >= 1, "{v:?}");
    let until = graw.retained_until(&pack).unwrap().unwrap();
    assert!(until > std::time::SystemTime::now() + Duration::from_secs(23 * 3600), "{until:?}");
}

/// Storage that ignores conditional writes (as Garage 2.5 does, simulated
/// by a proxy that drops `If-None-Match` on its way to moto) is found out
/// at init and refused, leaving nothing; `single_writer` accepts it, and
/// the store says so at every open. Real moto, straight, passes the probe.
#[test]
fn storage_that_ignores_conditional_writes_is_refused_at_init() {
    let Some(s3) = common::s3::s3() else { return };
    let direct = s3.backend(&s3.url("probe-direct"));
    assert!(vhdkit::store::probe_conditional_writes(&*direct).unwrap(), "moto honours If-None-Match");
    assert!(direct.list("").unwrap().is_empty(), "the probe cleans up");

    let proxy = FaultProxy::start(&s3.endpoint, Faults { ignore_conditions: true, ..Faults::none() }, 3);
    let url = s3.url("probe-ignored");
    let via: Arc<dyn Backend> = Arc::new(s3.backend_via(&url, &proxy.endpoint));
    assert!(!vhdkit::store::probe_conditional_writes(&*via).unwrap());
    let err = Store::init_backend(via.clone(), &common::init_options(256 * 1024, 4 << 20)).unwrap_err();
    assert_eq!(err.kind(), vhdkit::ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("If-None-Match") && err.to_string().contains("single-writer"), "{err}");
    assert!(via.list("").unwrap().is_empty(), "a refused init leaves nothing: {:?}", via.list("").unwrap());

    let options = common::tweak(common::init_options(256 * 1024, 4 << 20), |o| o.single_writer = true);
    let store = Store::init_backend(via.clone(), &options).unwrap();
    assert!(store.config().single_writer);
    let reopened = Store::open_backend(via.clone()).unwrap();
    assert!(reopened.warnings().iter().any(|w| w.contains("ignores conditional writes")), "{:?}", reopened.warnings());
    let bytes = common::sparse_noise(5, 3 * MIB);
    let r = reopened.backup(&raw(&bytes, "disk"), &BackupOptions::new("vm")).unwrap();
    assert!(read_back(&reopened, r.id.as_ref(), bytes.len()) == bytes);
    // A store on storage that honours them records nothing.
    let honest = Store::init_backend(s3.backend(&s3.url("probe-honest")), &options).unwrap();
    assert!(!honest.config().single_writer && honest.warnings().is_empty());
}

/// Two maintenance runs started together on S3 (whose `Last-Modified`
/// has whole seconds) never both proceed: in every round exactly one
/// holds maintenance while the other tries.
#[test]
fn maintenance_runs_racing_on_s3_never_both_proceed() {
    let Some(s3) = common::s3::s3() else { return };
    let url = s3.url("maintenance-race");
    Store::init_backend(s3.backend(&url), &common::init_options(256 * 1024, 4 << 20)).unwrap();
    let rounds = 25;
    let mut both = 0;
    for round in 0..rounds {
        let barrier = std::sync::Barrier::new(2);
        let won = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for who in ["vacuum", "prune"] {
                let (barrier, won, url) = (&barrier, &won, &url);
                scope.spawn(move || {
                    let store = Store::open_backend(s3.backend(url)).unwrap();
                    barrier.wait();
                    let hold = store.hold_maintenance(who, false);
                    match &hold {
                        Ok(_) => {
                            won.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        Err(vhdkit::store::StoreError::StoreBusy { .. }) => {}
                        Err(e) => panic!("round {round}: {e}"),
                    }
                    // Both have tried before either lets go.
                    barrier.wait();
                    drop(hold);
                });
            }
        });
        match won.into_inner() {
            1 => {}
            2 => both += 1,
            n => panic!("round {round}: {n} holders"),
        }
    }
    assert_eq!(both, 0, "in {both} of {rounds} rounds both maintenance runs proceeded");
}
