//! What the store asks of storage, held to the same test on every backend:
//! objects are created whole and only if absent, listed with sizes and
//! times, read at any range, deleted; and what the store builds on it:
//! merges add a manifest generation instead of replacing one, the job log is
//! one object per job, and stores of format version 1 still open.

mod common;

use std::io::ErrorKind;
use std::sync::Arc;

use common::{init_options, noise, tweak};
use vhdkit::VirtualDisk;
use vhdkit::disk::OpenOptions;
use vhdkit::store::{
    Backend, BackupOptions, InitOptions, Kind, LocalDir, MemoryBackend, MergeOptions, PruneOptions, Retention, Store,
    VacuumOptions, VerifyOptions,
};

const MIB: usize = 1 << 20;

fn put(b: &dyn Backend, key: &str, bytes: &[u8]) -> std::io::Result<()> {
    let mut w = b.create(key)?;
    w.write(bytes)?;
    w.commit()
}

/// The contract, on one backend.
fn conformance(b: &dyn Backend) {
    put(b, "packs/ab/one.pack", b"hello world").unwrap();
    put(b, "packs/cd/two.pack", b"12345").unwrap();
    put(b, "index/x.idx", b"i").unwrap();
    // A key that exists is never replaced.
    let err = put(b, "packs/ab/one.pack", b"other").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert_eq!(b.read_all("packs/ab/one.pack").unwrap(), b"hello world");
    // A writer dropped without commit leaves nothing.
    {
        let mut w = b.create("packs/ef/dropped.pack").unwrap();
        w.write(b"partial").unwrap();
        assert_eq!(w.position(), 7);
    }
    assert_eq!(b.stat("packs/ef/dropped.pack").unwrap_err().kind(), ErrorKind::NotFound);

    let listed = b.list("packs").unwrap();
    let keys: Vec<&str> = listed.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, ["packs/ab/one.pack", "packs/cd/two.pack"]);
    assert_eq!(listed.iter().map(|o| o.size).collect::<Vec<_>>(), [11, 5]);
    let now = b.now().unwrap();
    for o in &listed {
        let age = now.duration_since(o.modified).unwrap_or_default();
        assert!(age.as_secs() < 3600, "{} was written {age:?} ago by the store's clock", o.key);
        assert_eq!(&b.stat(&o.key).unwrap(), o);
    }

    let mut buf = [0u8; 5];
    b.read_at("packs/ab/one.pack", &mut buf, 6).unwrap();
    assert_eq!(&buf, b"world");
    assert_eq!(b.read_at("packs/ab/one.pack", &mut buf, 7).unwrap_err().kind(), ErrorKind::UnexpectedEof);
    assert_eq!(b.read_at("packs/zz/none.pack", &mut buf, 0).unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(b.read_all("none").unwrap_err().kind(), ErrorKind::NotFound);

    b.delete("packs/cd/two.pack").unwrap();
    b.delete("packs/cd/two.pack").unwrap();
    assert_eq!(b.list("packs").unwrap().len(), 1);
    // Deleted keys can be created again (damage markers are).
    put(b, "packs/cd/two.pack", b"again").unwrap();
    assert_eq!(b.read_all("packs/cd/two.pack").unwrap(), b"again");
}

#[test]
fn every_backend_keeps_the_contract() {
    let dir = common::scratch("backend-contract");
    for sub in ["packs", "index"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    conformance(&LocalDir::new(&dir));
    conformance(&MemoryBackend::new());
}

/// The whole store over an in-memory backend: what the folder store does,
/// with nothing on disk.
#[test]
fn a_store_in_memory_backs_up_merges_prunes_and_vacuums() {
    let backend = MemoryBackend::new();
    let store = Store::init_backend(Arc::new(backend.clone()), &init_options(64 << 10, 1 << 20)).unwrap();
    assert!(Store::init_backend(Arc::new(backend.clone()), &InitOptions::default()).is_err(), "a second init");
    let mut d = noise(1, 4 * MIB);
    let mut versions = Vec::new();
    for i in 0..4 {
        d[i * MIB..i * MIB + 1000].fill(i as u8 + 1);
        let disk = OpenOptions::new().open_raw_reader(Box::new(d.clone()), "d");
        let r = store.backup(&disk, &tweak(BackupOptions::new("d"), |o| o.max_chain = 100)).unwrap();
        versions.push((r.id, d.clone()));
    }
    let store = Store::open_backend(Arc::new(backend.clone())).unwrap();
    store.merge(&versions[3].0, &MergeOptions::default()).unwrap();
    store.prune("d", &PruneOptions::new(Retention::keep_last(2))).unwrap();
    store.vacuum(&VacuumOptions::immediate()).unwrap();
    assert!(store.verify(&VerifyOptions::default()).unwrap().ok);
    for (id, bytes) in &versions[2..] {
        let r = store.reader(id).unwrap();
        let mut got = vec![0u8; bytes.len()];
        r.read_at(&mut got, 0).unwrap();
        assert!(got == *bytes, "{id} restores different bytes");
    }
    assert!(backend.keys().iter().all(|k| !k.starts_with("tmp/")));
}

/// A merge writes the full manifest as a second generation beside the
/// first; the backup lists once, reads as full, and vacuum drops the
/// superseded generation.
#[test]
fn merges_add_a_generation_and_vacuum_drops_the_old_one() {
    let dir = common::scratch("backend-generations");
    let path = dir.join("s");
    let store = Store::init(&path, &init_options(64 << 10, 1 << 20)).unwrap();
    let mut d = noise(2, 2 * MIB);
    store.backup(&OpenOptions::new().open_raw_reader(Box::new(d.clone()), "d"), &BackupOptions::new("d")).unwrap();
    d[..100].fill(7);
    let inc =
        store.backup(&OpenOptions::new().open_raw_reader(Box::new(d.clone()), "d"), &BackupOptions::new("d")).unwrap();
    store.merge(&inc.id, &MergeOptions::default()).unwrap();
    let gen0 = path.join(format!("manifests/{}.manifest", inc.id));
    let gen1 = path.join(format!("manifests/{}~1.manifest", inc.id));
    assert!(gen0.is_file() && gen1.is_file(), "the merge replaced a manifest instead of adding one");
    let listed = store.list().unwrap();
    assert_eq!(listed.iter().filter(|b| b.id == inc.id).count(), 1);
    assert_eq!(listed.iter().find(|b| b.id == inc.id).unwrap().kind, Kind::Full);
    store.vacuum(&VacuumOptions::immediate()).unwrap();
    assert!(!gen0.exists() && gen1.is_file());
    let r = store.reader(&inc.id).unwrap();
    let mut got = vec![0u8; d.len()];
    r.read_at(&mut got, 0).unwrap();
    assert!(got == d);
    drop(r);
    // A second merge of a full backup writes nothing.
    let report = store.merge(&inc.id, &MergeOptions::default()).unwrap();
    assert_eq!(report.chain_length, 1);
}

#[test]
fn the_job_log_is_one_object_per_job() {
    let dir = common::scratch("backend-log");
    let path = dir.join("s");
    let store = Store::init(&path, &init_options(64 << 10, 1 << 20)).unwrap();
    let d = noise(3, MIB);
    let r = store.backup(&OpenOptions::new().open_raw_reader(Box::new(d), "d"), &BackupOptions::new("d")).unwrap();
    store.verify(&VerifyOptions::default()).unwrap();
    let log = store.job_log().unwrap();
    let ops: Vec<&str> = log.iter().filter_map(|e| e["op"].as_str()).collect();
    assert_eq!(ops, ["init", "backup", "verify"]);
    assert_eq!(log[1]["report"]["id"].as_str(), Some(r.id.as_str()));
    assert_eq!(std::fs::read_dir(path.join("log")).unwrap().count(), 3);
}

/// A store written by the previous format version (rename-replaced merges,
/// one appended log file) opens and reads.
#[test]
fn a_version_1_store_still_opens() {
    let dir = common::scratch("backend-v1");
    let path = dir.join("s");
    let store = Store::init(&path, &init_options(64 << 10, 1 << 20)).unwrap();
    let d = noise(4, MIB);
    let r =
        store.backup(&OpenOptions::new().open_raw_reader(Box::new(d.clone()), "d"), &BackupOptions::new("d")).unwrap();
    drop(store);
    // The config as version 1 wrote it: the fields in their order, and the
    // BLAKE3 of the compact form with an empty checksum.
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path.join("config")).unwrap()).unwrap();
    let fields = ["format", "version", "store_id", "chunk_size", "compression", "zstd_level", "pack_size", "created"];
    let body = |checksum: &str| {
        let mut parts: Vec<String> = fields
            .iter()
            .map(|f| {
                let value = if *f == "version" { serde_json::json!(1) } else { v[*f].clone() };
                format!("\"{f}\":{value}")
            })
            .collect();
        parts.push(format!("\"checksum\":\"{checksum}\""));
        format!("{{{}}}", parts.join(","))
    };
    let checksum = blake3::hash(body("").as_bytes()).to_hex().to_string();
    std::fs::write(path.join("config"), body(&checksum)).unwrap();
    for e in std::fs::read_dir(path.join("log")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    std::fs::write(
        path.join("log/jobs.log"),
        "{\"time\":\"2026-01-01T00:00:00.000000Z\",\"op\":\"backup\",\"pid\":1,\"report\":{}}\n",
    )
    .unwrap();
    let store = Store::open(&path).unwrap();
    assert_eq!(store.config().version, 1);
    assert_eq!(store.list().unwrap().len(), 1);
    assert!(store.verify(&VerifyOptions::default()).unwrap().ok);
    let reader = store.reader(&r.id).unwrap();
    let mut got = vec![0u8; d.len()];
    reader.read_at(&mut got, 0).unwrap();
    assert!(got == d);
    let log = store.job_log().unwrap();
    assert_eq!(log.first().and_then(|e| e["op"].as_str()), Some("backup"), "the old log file is read");
}
