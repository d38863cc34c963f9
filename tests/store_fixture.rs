//! Stores written by an earlier build must restore and verify with every
//! later one: the committed fixture stores (`tests/fixtures/stores`, made
//! by `scripts/make-store-fixture.sh` and never rewritten) are opened,
//! verified and restored, and every disk must hash to what
//! `expected.json` recorded of the disks themselves when they were made.
//! A plain and an encrypted store, each with a full backup, a merged
//! generation, an incremental on top and a two-disk restore point with an
//! attachment.

mod common;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use vhdkit::VirtualDisk;
use vhdkit::export::Target;
use vhdkit::store::{OpenOptions, RestoreOptions, Store, StoreKey, VerifyOptions};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join("stores")
}

fn expected() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixtures().join("expected.json")).unwrap()).unwrap()
}

fn options(kind: &str, read_only: bool) -> OpenOptions {
    let mut o = OpenOptions::default();
    if kind == "encrypted" {
        o.key = Some(StoreKey::key_file_bytes(std::fs::read(fixtures().join("key.bin")).unwrap()).unwrap());
    }
    o.read_only = read_only;
    o.no_cache = true;
    o
}

fn sha256_of(disk: &dyn VirtualDisk) -> String {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = 0;
    while at < disk.size() {
        let n = (disk.size() - at).min(buf.len() as u64) as usize;
        disk.read_at(&mut buf[..n], at).unwrap();
        h.update(&buf[..n]);
        at += n as u64;
    }
    common::hex(&h.finalize())
}

fn file_sha(path: &Path) -> String {
    common::sha256(&std::fs::read(path).unwrap())
}

/// Copies a folder tree (the fixture, to a place a writable open may write).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn check_store(store: &Store, kind: &str, scratch: &Path) {
    let want = expected();
    let ids = &want[kind];
    let disks = &want["disks"];
    let report = store.verify(&VerifyOptions::default()).unwrap();
    assert!(report.ok, "{kind}: {report:?}");
    assert_eq!(store.list().unwrap().len(), 5, "{kind}: three backups of `disk` and the point's two");
    for which in ["full", "merged", "top"] {
        let id = ids[which].as_str().unwrap();
        let reader = store.reader(id).unwrap();
        assert_eq!(sha256_of(&reader), disks[which].as_str().unwrap(), "{kind} {which} ({id})");
    }
    let merged = store.list().unwrap().into_iter().find(|b| b.id.as_str() == ids["merged"].as_str().unwrap()).unwrap();
    assert_eq!(merged.kind, vhdkit::store::Kind::Full, "{kind}: the merged generation is read");
    let out = scratch.join(format!("{kind}-point"));
    store.restore_point(ids["point"].as_str().unwrap(), &out, Target::Raw, &RestoreOptions::default()).unwrap();
    assert_eq!(file_sha(&out.join("os.raw")), disks["point_os"].as_str().unwrap());
    assert_eq!(file_sha(&out.join("data.raw")), disks["point_data"].as_str().unwrap());
    assert_eq!(file_sha(&out.join("vm.cfg")), disks["attachment"].as_str().unwrap());
}

/// Read-only, straight from the committed files: nothing is written.
#[test]
fn the_fixture_stores_restore_and_verify_read_only() {
    let scratch = tempfile::tempdir().unwrap();
    for kind in ["plain", "encrypted"] {
        let path = fixtures().join(kind);
        let before = common::files(&path);
        let store = Store::open_with(&path, &options(kind, true)).unwrap();
        assert_eq!(store.is_encrypted(), kind == "encrypted");
        check_store(&store, kind, scratch.path());
        assert_eq!(before, common::files(&path), "{kind}: the fixture was written to");
    }
}

/// A copy opened for writing takes new backups on top, is vacuumed, and
/// still restores what the old build wrote.
#[test]
fn the_fixture_stores_take_new_backups_and_vacuum() {
    let scratch = tempfile::tempdir().unwrap();
    for kind in ["plain", "encrypted"] {
        let path = scratch.path().join(kind);
        copy_tree(&fixtures().join(kind), &path);
        let store = Store::open_with(&path, &options(kind, false)).unwrap();
        let bytes = common::sparse_noise(9, 256 * 1024);
        let disk = vhdkit::disk::OpenOptions::new().open_raw_reader(Box::new(bytes.clone()), "new");
        let r = store.backup(&disk, &vhdkit::store::BackupOptions::new("disk")).unwrap();
        assert_eq!(r.parent.as_ref().map(|p| p.as_str()), expected()[kind]["top"].as_str(), "continues the old chain");
        store.vacuum(&vhdkit::store::VacuumOptions::immediate()).unwrap();
        check_store_after_vacuum(&store, kind, &bytes, r.id.as_str());
    }
}

fn check_store_after_vacuum(store: &Store, kind: &str, bytes: &[u8], new: &str) {
    let want = expected();
    assert!(store.verify(&VerifyOptions::default()).unwrap().ok, "{kind}");
    let top = store.reader(want[kind]["top"].as_str().unwrap()).unwrap();
    assert_eq!(sha256_of(&top), want["disks"]["top"].as_str().unwrap());
    let r = store.reader(new).unwrap();
    let mut got = vec![0u8; bytes.len()];
    r.read_at(&mut got, 0).unwrap();
    assert!(got == bytes);
}
