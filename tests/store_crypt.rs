//! Encrypted stores: what the storage reveals, what tampering does, keys.
//!
//! Against material we did not write: an ext4 file system that mke2fs
//! fills with system libraries, turned into a VHDX by qemu-img; markers
//! are strings those libraries hold. Every test that changes stored bytes
//! checks that verify names the change and that no restore returns a wrong
//! byte.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use proptest::prelude::*;
use vhdkit::VirtualDisk;
use vhdkit::disk::OpenOptions;
use vhdkit::store::{
    Argon2Params, BackupId, BackupOptions, ChangeList, Compression, InitOptions, Store, StoreError, StoreKey,
    VerifyOptions, VerifyReport,
};

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether any 32-byte window of `bytes` is one of `hashes` (a prefilter on
/// the first 8 bytes keeps this linear).
fn holds_any(bytes: &[u8], hashes: &HashSet<[u8; 32]>) -> bool {
    let prefixes: HashSet<u64> = hashes.iter().map(|h| u64::from_le_bytes(h[..8].try_into().unwrap())).collect();
    bytes.windows(32).any(|w| {
        prefixes.contains(&u64::from_le_bytes(w[..8].try_into().unwrap()))
            && hashes.contains::<[u8; 32]>(w.try_into().unwrap())
    })
}

/// An ext4 file system of real shared libraries (libc first), made by
/// mke2fs, as raw bytes and as a VHDX qemu-img wrote; `None` (skipped)
/// without qemu.
fn library_disk(dir: &Path) -> Option<(Vec<u8>, PathBuf)> {
    if !common::have_qemu() {
        return None;
    }
    let libs = Path::new("/usr/lib/x86_64-linux-gnu");
    let src = dir.join("fs");
    std::fs::create_dir_all(&src).unwrap();
    let mut names: Vec<PathBuf> = std::fs::read_dir(libs)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && !p.is_symlink() && p.to_string_lossy().contains(".so"))
        .collect();
    names.sort();
    names.sort_by_key(|p| !p.ends_with("libc.so.6"));
    let mut total = 0u64;
    for p in names {
        let len = std::fs::metadata(&p).unwrap().len();
        if total + len > 20 << 20 {
            continue;
        }
        std::fs::copy(&p, src.join(p.file_name().unwrap())).unwrap();
        total += len;
    }
    let raw = dir.join("disk.raw");
    let made = Command::new("mke2fs").args(["-q", "-F", "-t", "ext4", "-d"]).arg(&src).arg(&raw).arg("32M").status();
    assert!(made.is_ok_and(|s| s.success()), "mke2fs (e2fsprogs) is needed to build the file system");
    let vhdx = dir.join("disk.vhdx");
    common::run(Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "vhdx"]).arg(&raw).arg(&vhdx));
    Some((std::fs::read(&raw).unwrap(), vhdx))
}

#[test]
fn an_encrypted_store_shows_neither_the_disks_bytes_nor_their_plain_hashes() {
    let dir = common::scratch("crypt-markers");
    let Some((raw, vhdx)) = library_disk(&dir) else {
        eprintln!("SKIPPED: qemu-img is not installed");
        return;
    };
    // Strings libc holds, which the file system holds too.
    let markers: [&[u8]; 3] = [b"GNU C Library", b"GLIBC_PRIVATE", b"malloc_trim"];
    for m in markers {
        assert!(contains(&raw, m), "the disk lacks the marker {:?}", String::from_utf8_lossy(m));
    }
    let chunk = 512 * 1024;
    let hashes: HashSet<[u8; 32]> =
        raw.chunks(chunk).filter(|c| c.iter().any(|&b| b != 0)).map(|c| *blake3::hash(c).as_bytes()).collect();
    let hex: HashSet<String> = hashes.iter().map(|h| common::hex(h)).collect();
    let disk = vhdkit::open(&vhdx).unwrap();
    for (name, compression, encrypt) in [
        ("plain", Compression::None, false),
        ("sealed", Compression::None, true),
        ("sealed-zstd", Compression::Zstd, true),
    ] {
        let at = dir.join(name);
        let mut options = common::tweak(InitOptions::default(), |o| o.compression = compression);
        if encrypt {
            options = common::encrypted(options);
        }
        let store = Store::init(&at, &options).unwrap();
        let report = store.backup(&disk, &BackupOptions::new("libs")).unwrap();
        // A second job of the same disk stores nothing new: dedup works
        // with keyed ids too.
        let again = store.backup(&disk, &common::tweak(BackupOptions::new("libs2"), |o| o.full = true)).unwrap();
        assert_eq!((again.new_chunks, again.dedup_chunks), (0, report.new_chunks));
        let mut back = vec![0u8; raw.len()];
        store.reader(report.id.as_str()).unwrap().read_at(&mut back, 0).unwrap();
        assert!(back == raw, "{name}: the backup does not read back as the disk");
        drop(store);

        let stored = common::files(&at);
        let joined: Vec<u8> = stored.values().flatten().copied().collect();
        let names: String = stored.keys().map(|p| p.to_string_lossy().into_owned()).collect::<Vec<_>>().join("\n");
        let shows_marker = markers.iter().any(|m| contains(&joined, m));
        let shows_hash = holds_any(&joined, &hashes) || hex.iter().any(|h| names.contains(h.as_str()));
        if encrypt {
            for m in markers {
                assert!(!contains(&joined, m), "{name}: {:?} is readable in the store", String::from_utf8_lossy(m));
            }
            assert!(!shows_hash, "{name}: a chunk's plain BLAKE3 is stored");
            assert!(!contains(&joined, b"libs"), "{name}: the backup's name is readable");
        } else {
            assert!(shows_marker && shows_hash, "the plain store should show both (the test would be blind)");
        }
    }
}

/// A small encrypted store with three backups (two of disk a, one of b),
/// and what each restores to.
fn small_store(dir: &Path) -> (PathBuf, Vec<(BackupId, Vec<u8>)>) {
    let at = dir.join("pristine");
    let _ = std::fs::remove_dir_all(&at);
    let store = Store::init(&at, &common::encrypted(common::init_options(64 * 1024, 256 * 1024))).unwrap();
    let mut known = Vec::new();
    let mut a = common::sparse_noise(7, 1 << 20);
    for round in 0..2u64 {
        a[(round as usize) * 300_000..][..100_000].copy_from_slice(&common::noise(20 + round, 100_000));
        let disk = OpenOptions::new().open_raw_reader(Box::new(a.clone()), "a.raw");
        known.push((store.backup(&disk, &BackupOptions::new("a")).unwrap().id, a.clone()));
    }
    let b = common::noise(9, 700_000);
    let disk = OpenOptions::new().open_raw_reader(Box::new(b.clone()), "b.raw");
    let tags = common::tweak(BackupOptions::new("b"), |o| {
        o.tags.insert("vm".into(), "b".into());
    });
    known.push((store.backup(&disk, &tags).unwrap().id, b));
    (at, known)
}

fn open(at: &Path) -> Store {
    Store::open_with(at, &common::key_options()).unwrap()
}

/// What restoring each backup gives: the bytes, or the error. A restore
/// that returns bytes must return the right ones.
fn restores(store: &Store, known: &[(BackupId, Vec<u8>)]) -> Vec<Result<(), String>> {
    known
        .iter()
        .map(|(id, want)| {
            let reader = store.reader(id.as_str()).map_err(|e| e.to_string())?;
            let mut got = vec![0u8; want.len()];
            reader.read_at(&mut got, 0).map_err(|e| e.to_string())?;
            assert!(got == *want, "backup {id} restored wrong bytes");
            Ok(())
        })
        .collect()
}

fn verify(store: &Store) -> VerifyReport {
    store.verify(&VerifyOptions::default()).unwrap()
}

/// Whether the report points at `name` (a pack, an index file, a backup...).
fn names(report: &VerifyReport, name: &str) -> bool {
    let text = format!(
        "{:?} {:?} {:?} {:?}",
        report.problems, report.damaged_chunks, report.damaged_backups, report.damaged_points
    );
    text.contains(name)
}

/// The file stem that names an object in reports: a pack's id, a backup's.
fn stem(rel: &Path) -> String {
    let s = rel.file_stem().unwrap().to_string_lossy().into_owned();
    s.split('~').next().unwrap().to_string()
}

/// A fresh copy of `pristine` at `dir/work`.
fn work(dir: &Path, pristine: &Path) -> PathBuf {
    let w = dir.join("work");
    let _ = std::fs::remove_dir_all(&w);
    common::copy_dir(pristine, &w);
    w
}

#[test]
fn a_flipped_byte_anywhere_is_named_by_verify_with_and_without_the_key_and_never_restored() {
    let dir = common::scratch("crypt-flips");
    let (pristine, known) = small_store(&dir);
    assert!(verify(&open(&pristine)).ok);
    let objects: Vec<PathBuf> = common::files(&pristine)
        .into_keys()
        .filter(|p| ["packs", "index", "manifests", "points", "log"].iter().any(|d| p.starts_with(d)))
        .collect();
    assert!(objects.iter().any(|p| p.starts_with("points")), "no restore point to tamper with");
    let mut restores_failed = 0;
    let mut records_hit = 0;
    for rel in &objects {
        let len = std::fs::metadata(pristine.join(rel)).unwrap().len() as usize;
        // In a pack, 72 is the first record's CRC field: a restore relies on
        // the tag there, verify checks both.
        for at in [0, 13, 30, 60, 72, len / 2, len.saturating_sub(20), len.saturating_sub(1)]
            .into_iter()
            .filter(|&at| at < len)
        {
            let w = work(&dir, &pristine);
            let mut bytes = std::fs::read(w.join(rel)).unwrap();
            bytes[at] ^= 0x20;
            std::fs::write(w.join(rel), &bytes).unwrap();
            // Restore first, on its own: verify records what it finds
            // under damaged/, and a restore after it would only be
            // refusing what verify marked, not catching the flip itself.
            let outcome = restores(&open(&w), &known);
            let in_record = rel.starts_with("packs")
                && records(&std::fs::read(pristine.join(rel)).unwrap()).iter().any(|r| {
                    // A record's header before its CRC, or its sealed payload:
                    // what a restore itself must catch (the CRC is verify's).
                    (r.start..r.start + 48).contains(&at) || (r.start + 52..r.end).contains(&at)
                });
            records_hit += usize::from(in_record);
            if in_record || rel.starts_with("manifests") {
                assert!(outcome.iter().any(Result::is_err), "{}: a flip at {at} restored everything", rel.display());
            }
            let keyless =
                Store::open_with(&w, &common::tweak(vhdkit::store::OpenOptions::default(), |o| o.without_key = true))
                    .unwrap()
                    .verify(&VerifyOptions::default())
                    .unwrap();
            assert!(keyless.structure_only && !keyless.ok, "{}: a flip at {at} passed verify --no-key", rel.display());
            let store = open(&w);
            let report = verify(&store);
            assert!(!report.ok, "{}: a flip at {at} passed verify", rel.display());
            if !rel.starts_with("log") {
                assert!(names(&report, &stem(rel)), "{}: verify does not name it: {report:?}", rel.display());
            }
            if rel.starts_with("packs") || rel.starts_with("manifests") || rel.starts_with("index") {
                // After verify, whatever it found damaged is refused.
                assert!(
                    restores(&store, &known).iter().any(Result::is_err),
                    "{}: a flip at {at} restored everything after verify",
                    rel.display()
                );
            }
            restores_failed += outcome.iter().filter(|r| r.is_err()).count();
        }
    }
    assert!(restores_failed > 0);
    assert!(records_hit >= 3, "only {records_hit} flips landed in a record");
}

/// Byte ranges of the records in a pack, from its own headers.
fn records(pack: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut at = 24;
    while pack.get(at..at + 4) == Some(b"VKCH") {
        let stored = u32::from_le_bytes(pack[at + 12..at + 16].try_into().unwrap()) as usize;
        out.push(at..at + 52 + stored);
        at += 52 + stored;
    }
    out
}

/// A pack with two records of equal length, and those records.
fn twin_records(store: &Path) -> (PathBuf, std::ops::Range<usize>, std::ops::Range<usize>) {
    for (rel, bytes) in common::files(store) {
        if !rel.starts_with("packs") {
            continue;
        }
        let r = records(&bytes);
        for (i, a) in r.iter().enumerate() {
            if let Some(b) = r[i + 1..].iter().find(|b| b.len() == a.len()) {
                return (rel, a.clone(), b.clone());
            }
        }
    }
    panic!("no pack with two records of equal length");
}

#[test]
fn swapped_records_are_found_even_with_their_crcs_fixed() {
    let dir = common::scratch("crypt-swaps");
    let (pristine, known) = small_store(&dir);
    let (rel, a, b) = twin_records(&pristine);
    for fix_crcs in [false, true] {
        let w = work(&dir, &pristine);
        let mut pack = std::fs::read(w.join(&rel)).unwrap();
        let (ra, rb) = (pack[a.clone()].to_vec(), pack[b.clone()].to_vec());
        if fix_crcs {
            // An attacker who knows the format: keep each header (its chunk
            // id), swap the sealed payloads, and make the CRCs agree.
            pack[a.start + 52..a.end].copy_from_slice(&rb[52..]);
            pack[b.start + 52..b.end].copy_from_slice(&ra[52..]);
            for r in [&a, &b] {
                let crc = crc32c_of(&pack[r.start..r.start + 48], &pack[r.start + 52..r.end]);
                pack[r.start + 48..r.start + 52].copy_from_slice(&crc.to_le_bytes());
            }
        } else {
            pack[a.clone()].copy_from_slice(&rb);
            pack[b.clone()].copy_from_slice(&ra);
        }
        std::fs::write(w.join(&rel), &pack).unwrap();
        // Restore before verify marks anything: the tags alone must refuse.
        assert!(restores(&open(&w), &known).iter().any(Result::is_err), "swapped records restored");
        let keyless =
            Store::open_with(&w, &common::tweak(vhdkit::store::OpenOptions::default(), |o| o.without_key = true))
                .unwrap()
                .verify(&VerifyOptions::default())
                .unwrap();
        // Without the key, records moved whole, or with their CRCs made to
        // agree, look sound (the keyless check's documented limit: it
        // cannot read the sealed pack index); with the key, they do not.
        assert!(keyless.ok, "verify --no-key: {keyless:?}");
        let store = open(&w);
        let report = verify(&store);
        assert!(!report.ok && report.damaged_chunks.len() >= 2, "swapped records passed verify: {report:?}");
        assert!(names(&report, &stem(&rel)));
        if fix_crcs {
            assert!(report.damaged_chunks.iter().all(|d| d.reason.contains("authentication")), "{report:?}");
        }
        assert!(restores(&store, &known).iter().any(Result::is_err));
    }
}

/// CRC-32C of a record header's first 48 bytes and its stored bytes.
fn crc32c_of(head: &[u8], stored: &[u8]) -> u32 {
    // CRC-32C (Castagnoli), bitwise: a second implementation, not ours.
    let mut crc = !0u32;
    for &byte in head.iter().chain(stored) {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn swapped_manifests_and_truncated_objects_are_named_and_never_restored() {
    let dir = common::scratch("crypt-moves");
    let (pristine, known) = small_store(&dir);
    // Two manifests swapped under each other's names.
    let w = work(&dir, &pristine);
    let (m1, m2) =
        (w.join(format!("manifests/{}.manifest", known[0].0)), w.join(format!("manifests/{}.manifest", known[2].0)));
    let (b1, b2) = (std::fs::read(&m1).unwrap(), std::fs::read(&m2).unwrap());
    std::fs::write(&m1, &b2).unwrap();
    std::fs::write(&m2, &b1).unwrap();
    // Restore before verify marks anything: the envelopes alone refuse.
    let outcome = restores(&open(&w), &known);
    assert!(outcome[0].is_err() && outcome[2].is_err(), "{outcome:?}");
    let store = open(&w);
    let report = verify(&store);
    assert!(!report.ok && names(&report, known[0].0.as_str()) && names(&report, known[2].0.as_str()), "{report:?}");

    // Each kind of object cut short.
    for prefix in ["packs", "manifests", "index", "points"] {
        let w = work(&dir, &pristine);
        let rel = common::files(&w).into_keys().find(|p| p.starts_with(prefix)).unwrap();
        let bytes = std::fs::read(w.join(&rel)).unwrap();
        for cut in [bytes.len() - 1, bytes.len() / 2] {
            std::fs::write(w.join(&rel), &bytes[..cut]).unwrap();
            // Restore first (verify's marks would refuse for it), and it
            // never returns a wrong byte. A restore point is not read by
            // it, nor the last byte of a pack (its index's trailer, which
            // restore finds in the index files).
            let outcome = restores(&open(&w), &known);
            if prefix != "points" && !(prefix == "packs" && cut == bytes.len() - 1) {
                assert!(outcome.iter().any(Result::is_err), "{} cut to {cut}", rel.display());
            }
            let report = verify(&open(&w));
            assert!(!report.ok && names(&report, &stem(&rel)), "{} cut to {cut}: {report:?}", rel.display());
        }
    }
}

#[test]
fn a_wrong_key_is_refused_at_open_and_writes_nothing() {
    let dir = common::scratch("crypt-keys");
    let at = dir.join("s");
    let pass = StoreKey::passphrase("correct horse battery staple");
    let options = common::tweak(InitOptions::default(), |o| {
        o.encryption = Some(common::tweak(vhdkit::store::Encryption::new(pass.clone()), |e| {
            e.argon2 = Argon2Params::insecure_for_tests();
        }));
    });
    let store = Store::init(&at, &options).unwrap();
    let disk = OpenOptions::new().open_raw_reader(Box::new(common::sparse_noise(3, 300_000)), "d.raw");
    let first = store.backup(&disk, &BackupOptions::new("d")).unwrap().id;
    drop(store);
    let before = common::files(&at);
    let with = |key: Option<StoreKey>| {
        Store::open_with(&at, &common::tweak(vhdkit::store::OpenOptions::default(), |o| o.key = key))
    };
    let wrong = with(Some(StoreKey::passphrase("correct horse battery stapler"))).unwrap_err();
    assert!(matches!(wrong, StoreError::WrongKey { tried: 1, .. }), "{wrong}");
    assert_eq!(wrong.kind(), vhdkit::ErrorKind::Unauthorized);
    assert!(wrong.to_string().contains(&at.display().to_string()), "the error does not name the store: {wrong}");
    assert!(matches!(with(Some(common::test_key())).unwrap_err(), StoreError::WrongKey { tried: 0, .. }));
    assert!(matches!(with(None).unwrap_err(), StoreError::KeyRequired { .. }));
    assert!(common::files(&at) == before, "a refused open wrote to the store");

    // A second key; the first removed; the last one stays.
    let store = with(Some(pass.clone())).unwrap();
    let file_key = StoreKey::key_file_bytes(vec![0x42; 48]).unwrap();
    let added = store.add_key(&file_key, &Argon2Params::default()).unwrap();
    let keys = store.keys().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys.iter().any(|k| k.in_use && k.id != added));
    let first_key = keys.iter().find(|k| k.id != added).unwrap().id.clone();
    drop(store);
    let store = with(Some(file_key.clone())).unwrap();
    store.remove_key(&first_key[..8]).unwrap();
    assert!(matches!(with(Some(pass)).unwrap_err(), StoreError::WrongKey { .. }));
    let last = store.remove_key(&added).unwrap_err();
    assert!(last.to_string().contains("only key"), "{last}");
    let mut back = vec![0u8; 300_000];
    store.reader(first.as_str()).unwrap().read_at(&mut back, 0).unwrap();
    assert!(back == common::sparse_noise(3, 300_000));
    drop(store);

    // A key given for a plain store is refused (it may have been swapped).
    let plain = dir.join("plain");
    drop(Store::init(&plain, &InitOptions::default()).unwrap());
    let err =
        Store::open_with(&plain, &common::tweak(vhdkit::store::OpenOptions::default(), |o| o.key = Some(file_key)))
            .unwrap_err();
    assert!(matches!(err, StoreError::NotEncrypted { .. }), "{err}");
}

#[test]
fn an_altered_config_or_key_object_is_refused() {
    let dir = common::scratch("crypt-config");
    let at = dir.join("s");
    drop(Store::init(&at, &common::encrypted(InitOptions::default())).unwrap());
    let original = std::fs::read(at.join("config")).unwrap();
    // Settings changed and the (public) checksum made to agree: only the
    // MAC, which needs the key, tells.
    // The checksum is the BLAKE3 of the compact JSON in the struct's order.
    let resum = |mut c: vhdkit::store::StoreConfig| {
        c.checksum = String::new();
        c.checksum = blake3::hash(&serde_json::to_vec(&c).unwrap()).to_hex().to_string();
        serde_json::to_vec_pretty(&c).unwrap()
    };
    let config: vhdkit::store::StoreConfig = serde_json::from_slice(&original).unwrap();
    std::fs::write(at.join("config"), resum(common::tweak(config.clone(), |c| c.zstd_level = 19))).unwrap();
    let err = Store::open_with(&at, &common::key_options()).unwrap_err();
    assert!(err.to_string().contains("MAC"), "{err}");
    // A downgrade to a plain store (whose checksum anyone can compute) is
    // refused by a reader that brings a key.
    let plain = common::tweak(config, |c| {
        c.version = 2;
        c.encryption = None;
        c.mac = None;
    });
    std::fs::write(at.join("config"), resum(plain)).unwrap();
    let err = Store::open_with(&at, &common::key_options()).unwrap_err();
    assert!(matches!(err, StoreError::NotEncrypted { .. }), "{err}");
    std::fs::write(at.join("config"), &original).unwrap();
    Store::open_with(&at, &common::key_options()).unwrap();

    // The only key object damaged: the error names it.
    let key = common::files(&at).into_keys().find(|p| p.starts_with("keys")).unwrap();
    let mut bytes = std::fs::read(at.join(&key)).unwrap();
    let i = bytes.iter().position(|&b| b == b'{').unwrap();
    bytes[i] = b'[';
    std::fs::write(at.join(&key), &bytes).unwrap();
    let err = Store::open_with(&at, &common::key_options()).unwrap_err();
    assert!(err.to_string().contains(&stem(&key)), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// A random disk and a random change set round-trip through an
    /// encrypted store: the full backup and the incremental that reads only
    /// the changed ranges.
    #[test]
    fn random_change_sets_round_trip_encrypted(
        seed in 0u64..1000,
        changes in prop::collection::vec((0u64..(1 << 21), 1u64..200_000, any::<u8>()), 1..8),
        compress in any::<bool>(),
    ) {
        let size = 2usize << 20;
        let dir = common::scratch(&format!("crypt-prop-{seed}"));
        let at = dir.join("s");
        let _ = std::fs::remove_dir_all(&at);
        let options = common::tweak(common::init_options(64 * 1024, 512 * 1024), |o| {
            o.compression = if compress { Compression::Zstd } else { Compression::None };
        });
        let store = Store::init(&at, &common::encrypted(options)).unwrap();
        let mut bytes = common::sparse_noise(seed, size);
        let full = store.backup(&OpenOptions::new().open_raw_reader(Box::new(bytes.clone()), "d"), &BackupOptions::new("d")).unwrap();
        let before = bytes.clone();
        let mut ranges = Vec::new();
        for (offset, len, fill) in changes {
            let end = (offset + len).min(size as u64);
            bytes[offset as usize..end as usize].fill(fill);
            ranges.push(offset..end);
        }
        let opts = common::tweak(BackupOptions::new("d"), |o| o.changes = Some(ChangeList::from_ranges(ranges)));
        let incr = store.backup(&OpenOptions::new().open_raw_reader(Box::new(bytes.clone()), "d"), &opts).unwrap();
        for (id, want) in [(full.id, before), (incr.id, bytes)] {
            let mut got = vec![0u8; size];
            store.reader(id.as_str()).unwrap().read_at(&mut got, 0).unwrap();
            prop_assert!(got == want, "backup {} of seed {} restores wrong bytes", id, seed);
        }
        prop_assert!(verify(&store).ok);
    }
}

#[test]
fn a_store_opened_without_its_key_writes_nothing_but_its_lease() {
    let dir = common::scratch("crypt-keyless");
    let (pristine, known) = small_store(&dir);
    let w = work(&dir, &pristine);
    let before = common::files(&w);
    let keyless =
        Store::open_with(&w, &common::tweak(vhdkit::store::OpenOptions::default(), |o| o.without_key = true)).unwrap();
    // Every writing operation is refused up front, naming why.
    let err = keyless.reindex(&vhdkit::store::ReindexOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::KeyRequired { .. }), "{err}");
    let err = keyless.vacuum(&vhdkit::store::VacuumOptions::immediate()).unwrap_err();
    assert!(matches!(err, StoreError::KeyRequired { .. }), "{err}");
    let disk = OpenOptions::new().open_raw_reader(Box::new(vec![0u8; 1 << 20]), "zero.raw");
    let err = keyless.backup(&disk, &BackupOptions::new("z")).unwrap_err();
    assert!(matches!(err, StoreError::KeyRequired { .. }), "{err}");
    assert!(keyless.verify(&VerifyOptions::default()).unwrap().ok);
    let keys = keyless.keys().unwrap();
    assert!(keys.len() == 1 && keys[0].authentic.is_none(), "{keys:?}");
    drop(keyless);
    let after = common::files(&w);
    let changed: Vec<&PathBuf> = after.keys().filter(|k| before.get(*k) != after.get(*k)).collect();
    assert!(changed.iter().all(|k| k.starts_with("locks")), "written without the key: {changed:?}");
    assert!(before.keys().all(|k| after.contains_key(k)), "deleted without the key");
    // A key and "without a key" together is a mistake, not a choice.
    let both = common::tweak(common::key_options(), |o| o.without_key = true);
    let err = Store::open_with(&w, &both).unwrap_err();
    assert!(err.to_string().contains("together"), "{err}");
    restores(&open(&w), &known).into_iter().for_each(|r| r.unwrap());
}

#[test]
fn a_forged_tombstone_hides_nothing_and_a_planted_key_counts_for_nothing() {
    let dir = common::scratch("crypt-forgery");
    let (pristine, known) = small_store(&dir);
    let w = work(&dir, &pristine);
    // Someone who can only write: a tombstone for backup b, in the clear.
    std::fs::write(w.join(format!("dropped/{}", known[2].0)), b"dropped by prune").unwrap();
    // And one far too large to be a tombstone (sparse: no disk is used),
    // which must be refused by its size, never fetched.
    std::fs::File::create(w.join(format!("dropped/{}", known[1].0))).unwrap().set_len(8 << 30).unwrap();
    let store = open(&w);
    let listed: Vec<BackupId> = store.list().unwrap().into_iter().map(|b| b.id).collect();
    assert!(listed.contains(&known[2].0), "a forged tombstone hid a backup");
    assert!(listed.contains(&known[1].0), "an oversized tombstone hid a backup");
    let report = verify(&store);
    assert!(!report.ok && names(&report, &format!("dropped/{}", known[2].0)), "{report:?}");
    assert!(names(&report, "more than a sealed tombstone's 4096"), "{report:?}");
    std::fs::remove_file(w.join(format!("dropped/{}", known[1].0))).unwrap();
    // Backups and vacuum go on past it, and delete nothing of b.
    let disk = OpenOptions::new().open_raw_reader(Box::new(common::sparse_noise(8, 1 << 20)), "c.raw");
    store.backup(&disk, &BackupOptions::new("c")).unwrap();
    store.vacuum(&vhdkit::store::VacuumOptions::immediate()).unwrap();
    assert!(store.list().unwrap().iter().any(|b| b.id == known[2].0));
    restores(&store, &known).into_iter().for_each(|r| r.unwrap());
    // A real prune's tombstone is sealed, and honoured.
    std::fs::remove_file(w.join(format!("dropped/{}", known[2].0))).unwrap();
    store.prune("a", &vhdkit::store::PruneOptions::new(vhdkit::store::Retention::keep_last(1))).unwrap();
    assert!(!store.list().unwrap().iter().any(|b| b.id == known[0].0));
    let stored = std::fs::read(w.join(format!("dropped/{}", known[0].0))).unwrap();
    assert!(stored.starts_with(b"VKSEAL01"), "a tombstone in the clear");
    drop(store);

    // A key object planted beside the real one: a copy with its host
    // changed still unwraps (the wrapping does not cover the host) but its
    // MAC fails; it counts for nothing.
    let real = common::files(&w).into_keys().find(|p| p.starts_with("keys")).unwrap();
    let mut planted: serde_json::Value = serde_json::from_slice(&std::fs::read(w.join(&real)).unwrap()).unwrap();
    planted["host"] = "attacker".into();
    planted["id"] = "0".repeat(32).into();
    std::fs::write(w.join(format!("keys/{}.key", "0".repeat(32))), serde_json::to_vec(&planted).unwrap()).unwrap();
    let store = open(&w);
    let keys = store.keys().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys.iter().filter(|k| k.authentic == Some(false)).count(), 1, "{keys:?}");
    let report = verify(&store);
    assert!(!report.ok && names(&report, &"0".repeat(32)), "verify passed a planted key object: {report:?}");
    let real_id = stem(&real);
    let err = store.remove_key(&real_id).unwrap_err();
    assert!(err.to_string().contains("only key"), "the planted key counted: {err}");
    drop(store);

    // A planted key object far too large to be one (sparse): the store
    // still opens, and both verifies name it, without reading it.
    let huge = w.join(format!("keys/{}.key", "1".repeat(32)));
    std::fs::File::create(&huge).unwrap().set_len(8 << 30).unwrap();
    let store = open(&w);
    assert_eq!(store.keys().unwrap().len(), 2, "the oversized object counted as a key");
    let report = verify(&store);
    assert!(names(&report, "too large for a key object"), "{report:?}");
    let keyless = Store::open_with(&w, &common::tweak(vhdkit::store::OpenOptions::default(), |o| o.without_key = true))
        .unwrap()
        .verify(&VerifyOptions::default())
        .unwrap();
    assert!(!keyless.ok && format!("{:?}", keyless.problems).contains("too large for a key object"), "{keyless:?}");
}

/// Whether python3 has what `tests/spec_reader.py` needs; without it the
/// test says so and passes, unless `VHDKIT_REQUIRE_SPEC_READER=1`.
fn spec_reader_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import blake3, crc32c, zstandard, cryptography, argon2"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("VHDKIT_REQUIRE_SPEC_READER").as_deref() != Ok("1"),
            "VHDKIT_REQUIRE_SPEC_READER=1, but python3 lacks blake3, crc32c, zstandard, cryptography or argon2-cffi"
        );
        eprintln!("SKIPPED: pip install blake3 crc32c zstandard cryptography argon2-cffi to run the spec reader");
    }
    ok
}

/// Restores backup `id` with the independent reader; its bytes.
fn spec_read(store: &Path, key: &[&str], id: &str, out: &Path) -> Vec<u8> {
    let reader = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("spec_reader.py");
    let run = Command::new("python3")
        .arg(&reader)
        .arg(store)
        .args(key)
        .arg("--verify-packs")
        .arg(id)
        .arg(out)
        .output()
        .unwrap();
    assert!(run.status.success(), "the spec reader failed on {id}: {}", String::from_utf8_lossy(&run.stderr));
    std::fs::read(out).unwrap()
}

#[test]
fn a_reader_written_from_the_format_document_alone_restores_every_backup() {
    if !spec_reader_available() {
        return;
    }
    let dir = common::scratch("crypt-spec-reader");
    // Key file, zstd, 64 KiB chunks: 2,400 data slots make manifests of
    // several 64 KiB segments; half the chunks compress.
    let at = dir.join("zstd");
    let _ = std::fs::remove_dir_all(&at);
    let options = common::tweak(common::init_options(64 * 1024, 8 << 20), |o| o.compression = Compression::Zstd);
    let store = Store::init(&at, &common::encrypted(options)).unwrap();
    let mut bytes = Vec::new();
    for i in 0..2400u64 {
        let piece = common::noise(100 + i, 64 * 1024);
        bytes.extend_from_slice(if i % 2 == 0 { &piece } else { &piece[..4096] });
        if i % 2 == 1 {
            bytes.extend(std::iter::repeat_n(i as u8, 60 * 1024));
        }
    }
    let full = store
        .backup(&OpenOptions::new().open_raw_reader(Box::new(bytes.clone()), "d"), &BackupOptions::new("d"))
        .unwrap();
    let first = bytes.clone();
    bytes[5_000_000..5_300_000].fill(0xab);
    let changes = ChangeList::from_ranges(std::iter::once(5_000_000..5_300_000));
    let opts = common::tweak(BackupOptions::new("d"), |o| o.changes = Some(changes));
    let incr = store.backup(&OpenOptions::new().open_raw_reader(Box::new(bytes.clone()), "d"), &opts).unwrap();
    let manifest = std::fs::metadata(at.join(format!("manifests/{}.manifest", full.id))).unwrap().len();
    assert!(manifest > 64 * 1024, "a manifest of {manifest} bytes is one segment");
    let key = dir.join("key");
    std::fs::write(&key, [0x5e; 32]).unwrap();
    let key_arg = ["--key-file", key.to_str().unwrap()];
    // Before the merge, the incremental's unchanged slots come from its
    // parent: the document's chain walk.
    assert!(spec_read(&at, &key_arg, incr.id.as_str(), &dir.join("chain.raw")) == bytes, "the chain differs");
    store.merge(incr.id.as_str(), &vhdkit::store::MergeOptions::default()).unwrap();
    drop(store);
    assert!(spec_read(&at, &key_arg, full.id.as_str(), &dir.join("full.raw")) == first, "the full backup differs");
    assert!(spec_read(&at, &key_arg, incr.id.as_str(), &dir.join("incr.raw")) == bytes, "the merged backup differs");

    // A passphrase (Argon2id), no compression.
    let at = dir.join("pass");
    let _ = std::fs::remove_dir_all(&at);
    let options = common::tweak(common::init_options(64 * 1024, 1 << 20), |o| {
        o.encryption = Some(common::tweak(vhdkit::store::Encryption::new(StoreKey::passphrase("spec reader")), |e| {
            e.argon2 = Argon2Params::insecure_for_tests();
        }));
    });
    let store = Store::init(&at, &options).unwrap();
    let disk = common::sparse_noise(21, 3 << 20);
    let id = store
        .backup(&OpenOptions::new().open_raw_reader(Box::new(disk.clone()), "p"), &BackupOptions::new("p"))
        .unwrap()
        .id;
    drop(store);
    let pw = dir.join("pw");
    std::fs::write(&pw, "spec reader\n").unwrap();
    let pw_arg = ["--password-file", pw.to_str().unwrap()];
    assert!(spec_read(&at, &pw_arg, id.as_str(), &dir.join("p.raw")) == disk, "the passphrase store's backup differs");
}

/// A store of the encryption preview (version 3: plain tombstones, key
/// objects without a MAC) is refused by name, never read as a version 4
/// store whose tombstones and keys would all look forged.
#[test]
fn a_version_3_preview_store_is_refused_by_name() {
    let dir = common::scratch("crypt-preview");
    let (pristine, _) = small_store(&dir);
    let w = work(&dir, &pristine);
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(w.join("config")).unwrap()).unwrap();
    assert_eq!(config["version"], 4);
    config["version"] = 3.into();
    std::fs::write(w.join("config"), serde_json::to_vec(&config).unwrap()).unwrap();
    let err = Store::open_with(&w, &common::key_options()).unwrap_err();
    assert!(matches!(err, StoreError::UnsupportedStore { .. }) && err.to_string().contains("8f8a734"), "{err}");
}
