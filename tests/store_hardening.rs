//! What a new user found in one day, as library behaviour: conditional
//! writes probed at init, read-only stores, a source that changes under a
//! backup, partial change lists, and Hyper-V's renamed checkpoint disks
//! continuing their chains.

mod common;

use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use vhdkit::disk::{DiskInfo, Extent, OpenOptions};
use vhdkit::store::{
    Backend, BackupOptions, ChangeList, ChangeSource, DiskJob, InitOptions, Kind, MemoryBackend, ObjectInfo,
    ObjectWriter, Store, StoreError,
};
use vhdkit::{ErrorKind, VirtualDisk};

const MIB: usize = 1 << 20;

fn raw(bytes: &[u8], name: &str) -> vhdkit::Disk {
    OpenOptions::new().open_raw_reader(Box::new(bytes.to_vec()), name)
}

fn read_back(store: &Store, spec: &str, len: usize) -> Vec<u8> {
    let reader = store.reader(spec).unwrap();
    let mut out = vec![0u8; len];
    reader.read_at(&mut out, 0).unwrap();
    out
}

fn options() -> InitOptions {
    common::init_options(256 * 1024, 4 << 20)
}

/// Storage that takes "create only if absent" for "create": what some S3
/// servers do with `If-None-Match: *`.
#[derive(Debug, Clone, Default)]
struct Overwriting {
    inner: MemoryBackend,
}

struct OverwritingWriter {
    inner: MemoryBackend,
    key: String,
    bytes: Vec<u8>,
}

impl ObjectWriter for OverwritingWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }
    fn position(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn commit(self: Box<Self>) -> io::Result<()> {
        self.inner.delete(&self.key)?;
        let mut w = self.inner.create(&self.key)?;
        w.write(&self.bytes)?;
        w.commit()
    }
}

impl Backend for Overwriting {
    fn describe(&self, key: &str) -> PathBuf {
        self.inner.describe(key)
    }
    fn read_at(&self, key: &str, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(key, buf, offset)
    }
    fn read_all(&self, key: &str) -> io::Result<Vec<u8>> {
        self.inner.read_all(key)
    }
    fn stat(&self, key: &str) -> io::Result<ObjectInfo> {
        self.inner.stat(key)
    }
    fn list(&self, prefix: &str) -> io::Result<Vec<ObjectInfo>> {
        self.inner.list(prefix)
    }
    fn create(&self, key: &str) -> io::Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(OverwritingWriter { inner: self.inner.clone(), key: key.to_string(), bytes: Vec::new() }))
    }
    fn delete(&self, key: &str) -> io::Result<()> {
        self.inner.delete(key)
    }
}

#[test]
fn storage_that_overwrites_is_refused_unless_single_writer_is_accepted() {
    let honest = MemoryBackend::new();
    assert!(vhdkit::store::probe_conditional_writes(&honest).unwrap());
    let store = Store::init_backend(Arc::new(honest.clone()), &options()).unwrap();
    assert!(!store.config().single_writer && store.warnings().is_empty());

    let b = Overwriting::default();
    assert!(!vhdkit::store::probe_conditional_writes(&b).unwrap());
    let err = Store::init_backend(Arc::new(b.clone()), &options()).unwrap_err();
    assert!(matches!(err, StoreError::UnsupportedStore { .. }), "{err}");
    assert!(b.inner.keys().is_empty(), "a refused init leaves nothing: {:?}", b.inner.keys());
    // Bad settings are refused before anything is written, even the probe.
    let bad = common::tweak(options(), |o| o.chunk_size = 3 * 1024);
    assert_eq!(Store::init_backend(Arc::new(b.clone()), &bad).unwrap_err().kind(), ErrorKind::InvalidInput);

    let accepted = common::tweak(options(), |o| o.single_writer = true);
    let store = Store::init_backend(Arc::new(b.clone()), &accepted).unwrap();
    assert!(store.config().single_writer);
    let again = Store::open_backend(Arc::new(b.clone())).unwrap();
    assert!(again.warnings().iter().any(|w| w.contains("single-writer")), "{:?}", again.warnings());
    // The recorded answer is trusted: opening makes no probe.
    let before = b.inner.keys();
    drop(Store::open_backend(Arc::new(b.clone())).unwrap());
    assert_eq!(b.inner.keys(), before);
}

#[test]
fn a_folder_store_needs_its_parent_and_a_refused_init_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let deep = dir.path().join("share").join("backups");
    let err = Store::init(&deep, &options()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(!dir.path().join("share").exists(), "no parent was made");
    Store::init(&deep, &common::tweak(options(), |o| o.create_parents = true)).unwrap();
    assert!(deep.join("config").is_file());

    let bad = dir.path().join("bad");
    let err = Store::init(&bad, &common::tweak(options(), |o| o.chunk_size = 3 * 1024)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(!bad.exists(), "a refused init leaves no folder");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    Store::init(&empty, &common::tweak(options(), |o| o.zstd_level = 99)).unwrap_err();
    assert!(empty.is_dir() && std::fs::read_dir(&empty).unwrap().next().is_none(), "the empty folder stays empty");
}

/// A read-only store restores and verifies, writes nothing (not even a
/// lease), and refuses what would write.
#[test]
fn a_store_opened_read_only_reads_and_writes_nothing() {
    let mem = MemoryBackend::new();
    let store = Store::init_backend(Arc::new(mem.clone()), &options()).unwrap();
    let bytes = common::sparse_noise(1, 3 * MIB);
    let id = store.backup(&raw(&bytes, "disk"), &BackupOptions::new("vm")).unwrap().id;
    let before: BTreeMap<String, Vec<u8>> =
        mem.keys().into_iter().map(|k| (k.clone(), mem.read_all(&k).unwrap())).collect();

    let ro = Store::open_backend_with(
        Arc::new(mem.clone()),
        &common::tweak(Default::default(), |o: &mut vhdkit::store::OpenOptions| o.read_only = true),
    )
    .unwrap();
    assert!(ro.is_read_only());
    assert!(read_back(&ro, id.as_ref(), bytes.len()) == bytes);
    assert!(ro.verify(&Default::default()).unwrap().ok);
    ro.stats().unwrap();
    let err = ro.backup(&raw(&bytes, "disk"), &BackupOptions::new("vm")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(ro.vacuum(&vhdkit::store::VacuumOptions::immediate()).is_err());
    assert!(ro.warnings().iter().any(|w| w.contains("read-only")), "{:?}", ro.warnings());
    let after: BTreeMap<String, Vec<u8>> =
        mem.keys().into_iter().map(|k| (k.clone(), mem.read_all(&k).unwrap())).collect();
    assert_eq!(before, after, "a read-only store is not written");
}

/// A disk whose file is appended to the first time it is read: a running
/// VM writing its disk during a backup without a checkpoint.
struct Growing {
    disk: vhdkit::Disk,
    path: PathBuf,
    grown: AtomicBool,
}

impl VirtualDisk for Growing {
    fn info(&self) -> &DiskInfo {
        self.disk.info()
    }
    fn extents(&self, range: Range<u64>) -> vhdkit::disk::Result<Vec<Extent>> {
        VirtualDisk::extents(&self.disk, range)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> vhdkit::disk::Result<()> {
        if !self.grown.swap(true, Ordering::SeqCst) {
            let f = std::fs::OpenOptions::new().append(true).open(&self.path).unwrap();
            f.set_len(f.metadata().unwrap().len() + 4096).unwrap();
        }
        VirtualDisk::read_at(&self.disk, buf, offset)
    }
    fn chain_info(&self) -> Vec<&DiskInfo> {
        self.disk.chain_info()
    }
}

fn growing(dir: &Path, bytes: &[u8]) -> Growing {
    let path = dir.join("running.raw");
    std::fs::write(&path, bytes).unwrap();
    Growing { disk: OpenOptions::new().open_raw(&path).unwrap(), path, grown: AtomicBool::new(false) }
}

#[test]
fn a_source_written_during_the_backup_is_reported_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::init(dir.path().join("store"), &options()).unwrap();
    let bytes = common::sparse_noise(2, 2 * MIB);

    let mut strict = BackupOptions::new("vm");
    strict.require_stable = true;
    let err = store.backup(&growing(dir.path(), &bytes), &strict).unwrap_err();
    assert!(
        matches!(&err, StoreError::SourceChanged { changes, .. } if changes.iter().any(|c| c.contains("size"))),
        "{err}"
    );
    assert!(store.list().unwrap().is_empty(), "nothing committed");

    let report = store.backup(&growing(dir.path(), &bytes), &BackupOptions::new("vm")).unwrap();
    assert!(report.source_changed.iter().any(|c| c.contains("size went from")), "{report:?}");
    let logged = store.job_log().unwrap();
    let entry = logged.iter().find(|e| e["op"] == "backup").unwrap();
    assert!(entry["report"]["source_changed"].as_array().is_some_and(|a| !a.is_empty()), "{entry}");
    // A source that holds still says nothing.
    let still = store.backup(&raw(&bytes, "disk"), &BackupOptions::new("other")).unwrap();
    assert!(still.source_changed.is_empty());
}

#[test]
fn a_partial_change_list_is_refused_and_its_tail_can_be_read_instead() {
    let store = Store::init_backend(Arc::new(MemoryBackend::new()), &options()).unwrap();
    let mut bytes = common::sparse_noise(3, 8 * MIB);
    store.backup(&raw(&bytes, "disk"), &BackupOptions::new("vm")).unwrap();
    bytes[6 * MIB..6 * MIB + 1000].fill(0xAB);
    let list =
        ChangeList::from_json(br#"{"ChangedByteOffsets":[],"ChangedByteLengths":[],"ProcessedByteLength":2097152}"#)
            .unwrap();
    let mut o = BackupOptions::new("vm");
    o.changes = Some(list.clone());
    let err = store.backup(&raw(&bytes, "disk"), &o).unwrap_err();
    assert!(matches!(err, StoreError::PartialChangeList { .. }), "{err}");
    assert_eq!(store.list().unwrap().len(), 1, "nothing committed");
    o.changes = Some(list.cover_rest(bytes.len() as u64));
    let r = store.backup(&raw(&bytes, "disk"), &o).unwrap();
    assert_eq!((r.kind, r.change_source), (Kind::Incremental, ChangeSource::Ranges));
    assert!(read_back(&store, r.id.as_ref(), bytes.len()) == bytes, "the change past the processed length is kept");
    // `since` vouches for a list; alone it is refused, not ignored.
    let mut o = BackupOptions::new("vm");
    o.since = Some("rct-1".into());
    assert_eq!(store.backup(&raw(&bytes, "disk"), &o).unwrap_err().kind(), ErrorKind::InvalidInput);
}

/// Hyper-V names the running disk anew at each checkpoint: a job whose
/// disk label is new, but whose chain holds the image the previous job
/// captured, continues that disk's chain (an incremental of the child's
/// own blocks), and says which label it continues.
#[test]
fn a_renamed_checkpoint_disk_continues_its_chain() {
    let dir = tempfile::tempdir().unwrap();
    let mib = MIB as u64;
    let store = Store::init(dir.path().join("store"), &options()).unwrap();
    let base = dir.path().join("disk.vhdx");
    let data = common::sparse_noise(4, 8 * MIB);
    vhdkit::export::export(&raw(&data, "base"), &base, vhdkit::export::Target::Vhdx, &Default::default()).unwrap();
    let other = dir.path().join("data.vhdx");
    vhdkit::export::export(&raw(&data[..4 * MIB], "data"), &other, vhdkit::export::Target::Vhdx, &Default::default())
        .unwrap();
    let (d1, d2) = (OpenOptions::new().open(&base).unwrap(), OpenOptions::new().open(&other).unwrap());
    let first = store
        .backup_point(
            &[DiskJob::new("disk_A1B2.avhdx", &d1), DiskJob::new("data.vhdx", &d2)],
            &BackupOptions::new("vm"),
        )
        .unwrap();
    // The checkpoint: a child of the captured image, under a new name.
    let mut changed = data.clone();
    changed[3 * MIB..3 * MIB + 5000].fill(7);
    let child = dir.path().join("disk_C3D4.avhdx");
    vhdkit::export::export(&raw(&changed, "now"), &child, vhdkit::export::Target::Vhdx, &common::child_of(&base))
        .unwrap();
    let c = OpenOptions::new().open(&child).unwrap();
    let second = store
        .backup_point(&[DiskJob::new("disk_C3D4.avhdx", &c), DiskJob::new("data.vhdx", &d2)], &BackupOptions::new("vm"))
        .unwrap();
    let r = &second.disks[0];
    assert_eq!((r.kind, r.change_source), (Kind::Incremental, ChangeSource::Differencing), "{r:?}");
    assert_eq!(r.parent.as_ref(), Some(&first.disks[0].id));
    assert_eq!(r.continues_label.as_deref(), Some("disk_A1B2.avhdx"));
    assert!(r.bytes_read < 2 * mib, "read {} bytes: only the child's blocks", r.bytes_read);
    assert!(second.disks[1].continues_label.is_none());
    let reader = store.reader_disk(second.point.as_ref().unwrap().as_ref(), Some("disk_C3D4.avhdx")).unwrap();
    let mut got = vec![0u8; changed.len()];
    reader.read_at(&mut got, 0).unwrap();
    assert!(got == changed);
}

/// A disk of unique chunks that cancels `token` once a read reaches
/// `stop` bytes: a backup interrupted at that point.
struct Interrupted {
    disk: vhdkit::Disk,
    stop: u64,
    token: vhdkit::CancelToken,
}

impl VirtualDisk for Interrupted {
    fn info(&self) -> &DiskInfo {
        self.disk.info()
    }
    fn extents(&self, range: Range<u64>) -> vhdkit::disk::Result<Vec<Extent>> {
        VirtualDisk::extents(&self.disk, range)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> vhdkit::disk::Result<()> {
        if offset >= self.stop {
            self.token.cancel();
        }
        VirtualDisk::read_at(&self.disk, buf, offset)
    }
}

/// A backup cancelled at 90 % leaves sealed packs that no index file
/// names; the next attempt takes their chunks instead of uploading them
/// again, indexes them before its commit, and restores bit-exact, also
/// after a vacuum.
#[test]
fn an_interrupted_backup_resumes_without_uploading_again() {
    let dir = tempfile::tempdir().unwrap();
    let options = common::tweak(common::init_options(64 * 1024, 256 * 1024), |o| {
        o.compression = vhdkit::store::Compression::None
    });
    let store = Store::init(dir.path().join("store"), &options).unwrap();
    let bytes = common::noise(6, 24 * MIB);
    let token = vhdkit::CancelToken::new();
    let first = Interrupted { disk: raw(&bytes, "disk"), stop: (bytes.len() as u64) * 9 / 10, token: token.clone() };
    let mut o = BackupOptions::new("vm");
    o.cancel = token;
    let t0 = store.backend().traffic();
    let err = store.backup(&first, &o).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    let uploaded_first = store.backend().traffic().since(t0).bytes_uploaded;
    assert!(uploaded_first > bytes.len() as u64 / 2, "the first attempt uploaded {uploaded_first} bytes");
    assert!(store.list().unwrap().is_empty());

    let r = store.backup(&raw(&bytes, "disk"), &BackupOptions::new("vm")).unwrap();
    eprintln!(
        "interrupted at 90 %: uploaded {uploaded_first} bytes; the next attempt uploaded {} bytes in {} requests, \
         taking over {} chunks",
        r.traffic.bytes_uploaded, r.traffic.requests, r.resumed_chunks
    );
    assert!(r.resumed_chunks > 0, "{r:?}");
    assert!(
        r.traffic.bytes_uploaded < bytes.len() as u64 * 3 / 10,
        "the second attempt uploaded {} of {} bytes again",
        r.traffic.bytes_uploaded,
        bytes.len()
    );
    assert!(read_back(&store, r.id.as_ref(), bytes.len()) == bytes);
    assert!(store.verify(&Default::default()).unwrap().ok);
    let mut v = vhdkit::store::VacuumOptions::immediate();
    v.threshold = 0.0;
    store.vacuum(&v).unwrap();
    assert!(read_back(&store, r.id.as_ref(), bytes.len()) == bytes, "the adopted copies survive vacuum");
    assert!(store.verify(&Default::default()).unwrap().ok);
}

/// A vacuum between the attempts condemns the interrupted attempt's packs,
/// unless told to keep unfinished ones for a while.
#[test]
fn vacuum_keeps_an_interrupted_backups_packs_when_asked() {
    for keep in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let options = common::init_options(64 * 1024, 256 * 1024);
        let store = Store::init(dir.path().join("store"), &options).unwrap();
        let bytes = common::noise(7, 8 * MIB);
        let token = vhdkit::CancelToken::new();
        let first =
            Interrupted { disk: raw(&bytes, "disk"), stop: (bytes.len() as u64) * 9 / 10, token: token.clone() };
        let mut o = BackupOptions::new("vm");
        o.cancel = token;
        assert_eq!(store.backup(&first, &o).unwrap_err().kind(), ErrorKind::Cancelled);
        let mut v = vhdkit::store::VacuumOptions::immediate();
        if keep {
            v.keep_unfinished = std::time::Duration::from_secs(3600);
        }
        store.vacuum(&v).unwrap();
        let r = store.backup(&raw(&bytes, "disk"), &BackupOptions::new("vm")).unwrap();
        assert_eq!(r.resumed_chunks > 0, keep, "keep_unfinished {keep}: {r:?}");
        assert!(read_back(&store, r.id.as_ref(), bytes.len()) == bytes);
        assert!(store.verify(&Default::default()).unwrap().ok);
    }
}

/// Raw disks have no identity: a new label never continues another raw
/// disk's chain (snapshot device names change from job to job; a wrong
/// parent would restore another disk's bytes).
#[test]
fn raw_disks_with_new_labels_start_new_chains() {
    let store = Store::init_backend(Arc::new(MemoryBackend::new()), &options()).unwrap();
    let (a, b) = (common::sparse_noise(10, 2 * MIB), common::sparse_noise(11, 2 * MIB));
    let (da, db) = (raw(&a, "a"), raw(&b, "b"));
    store.backup_point(&[DiskJob::new("sdb", &da), DiskJob::new("sdc", &db)], &BackupOptions::new("vm")).unwrap();
    let second =
        store.backup_point(&[DiskJob::new("sdd", &da), DiskJob::new("sde", &db)], &BackupOptions::new("vm")).unwrap();
    for r in &second.disks {
        assert_eq!(r.kind, Kind::Full, "{r:?}");
        assert!(r.continues_label.is_none() && r.parent.is_none(), "{r:?}");
    }
}
