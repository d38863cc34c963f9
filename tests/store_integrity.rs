//! Deduplication and verification.
//!
//! Dedup: two disks sharing most of their data take about the space of
//! their union; the same disk twice adds only a manifest.
//! Verify: a single flipped byte anywhere in a pack or manifest is found,
//! named, and attributed to exactly the backups that depend on it, and a
//! restore of an affected backup fails instead of returning wrong bytes.

mod common;

use common::noise;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vhdkit::VirtualDisk;
use vhdkit::disk::OpenOptions;
use vhdkit::export::Target;
use vhdkit::store::format::pack::read_pack_index;
use vhdkit::store::model::id::PackId;
use vhdkit::store::state::chain::{ChainCursor, Resolved};
use vhdkit::store::{BackupId, BackupOptions, ChunkId, Compression, Store};

const MIB: usize = 1 << 20;
const CHUNK: u32 = 64 * 1024;

fn init(dir: &Path, compression: Compression) -> Store {
    let _ = std::fs::remove_dir_all(dir);
    Store::init(dir, &common::tweak(common::init_options(CHUNK, 1 << 20), |o| o.compression = compression)).unwrap()
}

fn raw(bytes: Vec<u8>, name: &str) -> vhdkit::Disk {
    OpenOptions::new().open_raw_reader(Box::new(Arc::new(bytes)), name)
}

fn backup(store: &Store, disk: &dyn VirtualDisk, name: &str) -> vhdkit::store::BackupReport {
    store.backup(disk, &BackupOptions::new(name)).unwrap()
}

fn dir_bytes(dir: &Path, sub: &str) -> u64 {
    fn walk(p: &Path) -> u64 {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(
                        |e| {
                            if e.path().is_dir() { walk(&e.path()) } else { e.metadata().map(|m| m.len()).unwrap_or(0) }
                        },
                    )
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(&dir.join(sub))
}

#[test]
fn two_similar_disks_cost_about_their_union() {
    let dir = common::scratch("store-dedup");
    let store = init(&dir.join("s"), Compression::None);
    let a = noise(1, 32 * MIB);
    let mut b = a.clone();
    // Change 10 % of b, in 64 KiB-aligned places (whole chunks differ).
    for i in (0..32 * MIB).step_by(640 * 1024) {
        b[i..i + 64 * 1024].copy_from_slice(&noise(i as u64 + 7, 64 * 1024));
    }
    let ra = backup(&store, &raw(a.clone(), "a"), "a");
    let rb = backup(&store, &raw(b.clone(), "b"), "b");
    let chunks = |d: &[u8]| d.chunks(CHUNK as usize).map(ChunkId::of).collect::<BTreeSet<_>>();
    let union = chunks(&a).union(&chunks(&b)).count() as u64;
    assert_eq!(ra.new_chunks + rb.new_chunks, union);
    assert_eq!(rb.dedup_chunks as usize, 512 - (rb.new_chunks as usize));
    let stats = store.stats().unwrap();
    assert_eq!(stats.chunks, union);
    let union_bytes = union * u64::from(CHUNK);
    let packs = dir_bytes(&dir.join("s"), "packs");
    assert!(
        packs >= union_bytes && packs <= union_bytes + union_bytes / 50,
        "packs {packs} for {union_bytes} unique bytes"
    );
    assert!(stats.dedup_ratio > 1.8, "{stats:?}");

    // The same disk again: no new chunk, no new pack or index file.
    let before = (dir_bytes(&dir.join("s"), "packs"), dir_bytes(&dir.join("s"), "index"));
    let again = backup(&store, &raw(a, "a"), "a");
    assert_eq!(again.new_chunks, 0);
    assert_eq!(again.stored_bytes, 0);
    assert_eq!(before, (dir_bytes(&dir.join("s"), "packs"), dir_bytes(&dir.join("s"), "index")));
}

/// Which backups each chunk id appears in (through their chains).
fn users(store: &Store) -> HashMap<ChunkId, BTreeSet<BackupId>> {
    let mut out: HashMap<ChunkId, BTreeSet<BackupId>> = HashMap::new();
    for b in store.list().unwrap() {
        let mut c = ChainCursor::open(store.backend(), &b.id).unwrap();
        while let Some((r, _)) = c.next_run().unwrap() {
            if let Resolved::Data(id) = r {
                out.entry(id).or_default().insert(b.id.clone());
            }
        }
    }
    out
}

/// A store of three backups (full, incremental, another disk) and what it
/// should hold; copies of it are damaged one byte at a time.
fn fixture(dir: &Path, compression: Compression) -> (PathBuf, Vec<(BackupId, Vec<u8>)>) {
    let path = dir.join("pristine");
    let store = init(&path, compression);
    let mut a = noise(11, 3 * MIB);
    a[MIB..MIB + 300_000].fill(0);
    let mut a2 = a.clone();
    a2[2 * MIB..2 * MIB + 100_000].copy_from_slice(&noise(12, 100_000));
    let mut text = b"vhdkit verify ".repeat(100_000);
    text.truncate(2 * MIB);
    let r1 = backup(&store, &raw(a.clone(), "a"), "a");
    let r2 = backup(&store, &raw(a2.clone(), "a"), "a");
    let r3 = backup(&store, &raw(text.clone(), "t"), "t");
    assert!(store.verify(&vhdkit::store::VerifyOptions::default()).unwrap().ok);
    (path, vec![(r1.id, a), (r2.id, a2), (r3.id, text)])
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let t = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), t).unwrap();
        }
    }
}

fn flip(path: &Path, at: u64) {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    common::read_exact_at(&f, &mut b, at);
    b[0] ^= 0x20;
    common::write_all_at(&f, &b, at);
}

fn verify_flips(compression: Compression) {
    let dir = common::scratch(&format!("store-verify-{compression:?}"));
    let (pristine, expected) = fixture(&dir, compression);
    let store = Store::open(&pristine).unwrap();
    let users = users(&store);
    let packs: Vec<PackId> =
        store.backend().list("packs").unwrap().iter().filter_map(|o| PackId::from_key(&o.key)).collect();
    let work = dir.join("work");
    let mut trials = 0;
    for pack in &packs {
        let entries = read_pack_index(store.backend(), *pack, store.codec_crypt()).unwrap();
        let len = std::fs::metadata(pristine.join(pack.key())).unwrap().len();
        // Offsets: the header, every record's header and a stride through
        // its bytes, the pack index and the trailer.
        let mut offsets: Vec<u64> = (0..24).step_by(5).collect();
        for e in entries.iter().take(6) {
            offsets.extend((e.offset..e.offset + u64::from(e.length)).step_by(9973).take(8));
            offsets.push(e.offset + 50);
        }
        offsets.extend([
            len - 1,
            len - 20,
            len - 32,
            len - 40,
            entries.last().map_or(len - 40, |e| e.offset + u64::from(e.length) + 3),
        ]);
        for at in offsets {
            copy_dir(&pristine, &work);
            flip(&work.join(pack.key()), at);
            let damaged = Store::open(&work).unwrap();
            let report = damaged.verify(&vhdkit::store::VerifyOptions::default()).unwrap();
            assert!(!report.ok, "pack {pack} byte {at}: damage went unnoticed");
            // Which chunks the flip hit: the record it fell in, or every
            // record of the pack when it hit the header, index or trailer.
            let hit: Vec<ChunkId> = match entries.iter().find(|e| at >= e.offset && at < e.offset + u64::from(e.length))
            {
                Some(e) => vec![e.id],
                None => entries.iter().map(|e| e.id).collect(),
            };
            let want: BTreeSet<BackupId> =
                hit.iter().flat_map(|id| users.get(id).cloned().unwrap_or_default()).collect();
            let got: BTreeSet<BackupId> = report.damaged_backups.iter().cloned().collect();
            assert_eq!(got, want, "pack {pack} byte {at}: affected backups");
            let named: BTreeSet<String> = report.damaged_chunks.iter().map(|d| d.chunk.clone()).collect();
            for id in &hit {
                assert!(named.contains(&id.to_hex()), "pack {pack} byte {at}: chunk {id} not named");
            }
            // Restores of affected backups fail; the others restore exactly.
            for (id, bytes) in &expected {
                let out = dir.join("restored.raw");
                let _ = std::fs::remove_file(&out);
                let result = damaged.restore(id, &out, Target::Raw, &vhdkit::store::RestoreOptions::default());
                if want.contains(id) {
                    assert!(result.is_err(), "restore of damaged backup {id} succeeded");
                    assert!(!out.exists(), "a failed restore left its output");
                } else {
                    result.unwrap_or_else(|e| panic!("undamaged backup {id}: {e}"));
                    assert!(std::fs::read(&out).unwrap() == *bytes, "backup {id} restored wrong bytes");
                }
            }
            trials += 1;
        }
    }
    // Manifests: a flip anywhere damages that backup and every incremental
    // whose chain runs through it.
    for (id, _) in &expected {
        let key = format!("manifests/{id}.manifest");
        let len = std::fs::metadata(pristine.join(&key)).unwrap().len();
        for at in (0..len).step_by((len / 23).max(1) as usize).chain([len - 1]) {
            copy_dir(&pristine, &work);
            flip(&work.join(&key), at);
            let report = Store::open(&work).unwrap().verify(&vhdkit::store::VerifyOptions::default()).unwrap();
            assert!(!report.ok, "manifest {id} byte {at}: damage went unnoticed");
            assert!(report.damaged_backups.contains(id), "manifest {id} byte {at}: not attributed");
            let unrelated = &expected[2].0;
            if id != unrelated {
                assert!(!report.damaged_backups.contains(unrelated), "manifest {id} byte {at}: blamed {unrelated}");
            }
            trials += 1;
        }
    }
    assert!(trials > 100, "{trials} trials");
}

#[test]
fn verify_finds_and_attributes_every_flipped_byte() {
    verify_flips(Compression::None);
}

#[test]
fn verify_finds_flips_in_compressed_stores_too() {
    verify_flips(Compression::Zstd);
}

/// Self-healing: once verify has marked a damaged copy, the next backup
/// that meets the chunk stores it again, and the new backup restores.
#[test]
fn a_damaged_chunk_is_stored_again_by_the_next_backup() {
    let dir = common::scratch("store-heal");
    let store = init(&dir.join("s"), Compression::None);
    let bytes = noise(5, 2 * MIB);
    let first = backup(&store, &raw(bytes.clone(), "d"), "d");
    // Any record of any pack: how the workers split chunks among their
    // packs varies from run to run (a pack may hold only a few).
    let pack = store.backend().list("packs").unwrap()[0].key.clone();
    let entries = read_pack_index(store.backend(), PackId::from_key(&pack).unwrap(), store.codec_crypt()).unwrap();
    let e = entries[entries.len() / 2];
    flip(&dir.join("s").join(&pack), e.offset + 100);
    let report = store.verify(&vhdkit::store::VerifyOptions::default()).unwrap();
    assert_eq!(report.damaged_backups, vec![first.id.clone()]);
    let second =
        store.backup(&raw(bytes.clone(), "d"), &common::tweak(BackupOptions::new("d"), |o| o.full = true)).unwrap();
    assert_eq!(second.new_chunks, 1, "exactly the damaged chunk is stored again");
    let out = dir.join("r.raw");
    store.restore(&second.id, &out, Target::Raw, &vhdkit::store::RestoreOptions::default()).unwrap();
    assert!(std::fs::read(&out).unwrap() == bytes);
    // The old backup heals too: its chunk now has a sound copy.
    store.restore(&first.id, &out, Target::Raw, &vhdkit::store::RestoreOptions::default()).unwrap();
    assert!(std::fs::read(&out).unwrap() == bytes);
    let after = store.verify(&vhdkit::store::VerifyOptions::default()).unwrap();
    assert!(after.damaged_backups.is_empty(), "{after:?}");
}

/// A sampled verify reads a share of packs chosen by its seed (the same
/// seed, the same packs), finds the damage in those it reads, and says
/// how many it left; `since` leaves out packs written before.
#[test]
fn a_sampled_verify_reads_a_stable_share_and_finds_damage_where_it_reads() {
    use vhdkit::store::{Moment, VerifyOptions};
    let dir = common::scratch("store-verify-sample");
    let store = init(&dir.join("s"), Compression::None);
    backup(&store, &raw(noise(21, 24 * MIB), "d"), "d");
    let verify = |sample: Option<f64>, seed: Option<u64>, since: Option<Moment>| {
        let mut o = VerifyOptions::default();
        o.sample = sample;
        o.seed = seed;
        o.since = since;
        store.verify(&o)
    };
    let all = verify(None, None, None).unwrap();
    let n = all.packs_total;
    assert!(all.ok && n >= 20 && all.packs_checked == n && all.sample_seed.is_none(), "{all:?}");
    let half = verify(Some(50.0), Some(7), None).unwrap();
    assert!(half.ok && half.packs_total == n && half.sample_seed == Some(7));
    assert!(half.packs_checked > n / 5 && half.packs_checked < n * 4 / 5, "{} of {n}", half.packs_checked);
    assert_eq!(verify(Some(50.0), Some(7), None).unwrap().packs_checked, half.packs_checked);
    // Backups are still checked whole: the unread packs' chunks count as sound.
    assert_eq!(half.backups_checked, 1);
    assert_eq!(verify(Some(100.0), None, None).unwrap().packs_checked, n);
    for bad in [0.0, -1.0, 100.5, f64::NAN] {
        assert!(verify(Some(bad), None, None).is_err(), "a sample of {bad} was taken");
    }
    // Damage in every pack: the sample finds it in each pack it reads.
    for o in store.backend().list("packs").unwrap() {
        let id = PackId::from_key(&o.key).unwrap();
        let first = read_pack_index(store.backend(), id, store.codec_crypt()).unwrap()[0].offset;
        flip(&dir.join("s").join(&o.key), first + 100);
    }
    let damaged = verify(Some(50.0), Some(7), None).unwrap();
    assert!(!damaged.ok);
    let packs: BTreeSet<&str> = damaged.damaged_chunks.iter().map(|d| d.pack.as_str()).collect();
    assert_eq!(packs.len() as u64, half.packs_checked);
    // Since: a time after every pack leaves them all unread, and every
    // backup (none was made since); one before reads them all.
    let later = verify(None, None, Some(Moment::now().add_secs(3600))).unwrap();
    assert_eq!((later.packs_checked, later.packs_total, later.backups_checked), (0, n, 0));
    assert!(later.ok);
    let earlier = verify(None, None, Some(Moment::now().add_secs(-3600))).unwrap();
    assert_eq!(earlier.packs_checked, n);
    assert!(!earlier.ok);
}
