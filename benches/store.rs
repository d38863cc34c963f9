//! The store, each measurement beside its baseline on the same bytes:
//!
//! - backup into a fresh store, and of data the store already holds,
//!   against BLAKE3 over the same bytes on every core, and the fresh store
//!   also against writing the same bytes to a file and flushing it;
//! - backup into a zstd store against zstd level 1 alone on every core;
//! - an incremental of 1 % scattered changes (range list) against a full backup;
//! - restore to raw against copying the raw bytes with plain reads and writes;
//! - vacuum at several chunk counts;
//! - encryption: sealing and opening a chunk against BLAKE3 of it on one
//!   core, and a full backup into an encrypted store against a plain one.
//!
//! `scripts/bench-ratios.py` prints the ratios from criterion's output.

mod common;

use common::FileExt;
use std::hint::black_box;
use std::path::Path;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use vhdkit::disk::OpenOptions;
use vhdkit::export::Target;
use vhdkit::store::{BackupOptions, Compression, InitOptions, Retention, Store, VacuumOptions};

const CHUNK: usize = 512 * 1024;

fn fresh(dir: &Path, name: &str, compression: Compression) -> Store {
    let path = dir.join(name);
    let _ = std::fs::remove_dir_all(&path);
    Store::init(&path, &{
        let mut o = InitOptions::default();
        o.compression = compression;
        o.zstd_level = 1;
        o
    })
    .unwrap()
}

fn backup(c: &mut Criterion) {
    let dir = common::scratch("backup");
    let bytes = common::noise(1, common::dense());
    let (vhdx, _) = common::dense_images(&dir, &bytes);
    let disk = vhdkit::open(&vhdx).unwrap();
    let mut g = c.benchmark_group("backup");
    g.throughput(Throughput::Bytes(common::dense() as u64));
    g.sample_size(10);
    g.bench_function("baseline_blake3_all_cores", |b| b.iter(|| black_box(common::blake3_all_cores(&bytes, CHUNK))));
    // What a fresh store cannot beat: writing the same bytes to a file and
    // flushing them to the device, as sealing packs must.
    let sink = dir.join("sink");
    g.bench_function("baseline_write_and_fsync", |b| {
        b.iter(|| {
            let _ = std::fs::remove_file(&sink);
            let mut f = std::fs::File::create(&sink).unwrap();
            for piece in bytes.chunks(CHUNK) {
                std::io::Write::write_all(&mut f, piece).unwrap();
            }
            f.sync_all().unwrap();
        })
    });
    g.bench_function("full_into_fresh_store", |b| {
        b.iter_batched(
            || fresh(&dir, "fresh", Compression::None),
            |store| black_box(store.backup(&disk, &BackupOptions::new("d")).unwrap().new_chunks),
            BatchSize::PerIteration,
        )
    });
    let warm = fresh(&dir, "warm", Compression::None);
    warm.backup(&disk, &BackupOptions::new("d")).unwrap();
    g.bench_function("full_of_stored_data", |b| {
        b.iter(|| black_box(warm.backup(&disk, &common::full("d")).unwrap().dedup_chunks))
    });
    // The same through a memory map: chunks are hashed in place, without
    // the copy a read makes.
    let mapped = OpenOptions::new().mmap(true).open(&vhdx).unwrap();
    g.bench_function("full_of_stored_data_mmap", |b| {
        b.iter(|| black_box(warm.backup(&mapped, &common::full("d")).unwrap().dedup_chunks))
    });
    g.finish();

    // zstd: against compressing the same chunks at level 1 on every core.
    let text = common::mixed(2, common::dense());
    let (zvhdx, _) = common::dense_images(&dir, &text);
    let zdisk = vhdkit::open(&zvhdx).unwrap();
    let mut g = c.benchmark_group("backup_zstd");
    g.throughput(Throughput::Bytes(common::dense() as u64));
    g.sample_size(10);
    g.bench_function("baseline_zstd1_all_cores", |b| {
        b.iter(|| {
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            let per = text.len().div_ceil(threads).div_ceil(CHUNK) * CHUNK;
            std::thread::scope(|s| {
                let hs: Vec<_> = text
                    .chunks(per)
                    .map(|part| {
                        s.spawn(move || {
                            let mut z = zstd::bulk::Compressor::new(1).unwrap();
                            part.chunks(CHUNK).map(|c| z.compress(c).unwrap().len()).sum::<usize>()
                        })
                    })
                    .collect();
                black_box(hs.into_iter().map(|h| h.join().unwrap()).sum::<usize>())
            })
        })
    });
    g.bench_function("full_into_fresh_zstd1_store", |b| {
        b.iter_batched(
            || fresh(&dir, "zfresh", Compression::Zstd),
            |store| black_box(store.backup(&zdisk, &BackupOptions::new("d")).unwrap().stored_bytes),
            BatchSize::PerIteration,
        )
    });
    g.finish();
    let _ = std::fs::remove_dir_all(dir);
}

fn incremental(c: &mut Criterion) {
    let dir = common::scratch("incremental");
    let base = common::noise(3, common::dense());
    // 1 % of the disk changed, in 64 KiB pieces scattered across it.
    let mut changed = base.clone();
    let mut ranges = Vec::new();
    let pieces = common::dense() / 100 / 65536;
    for i in 0..pieces {
        let at = (i * 7919 * 65536 + 12345) % (common::dense() - 65536) / 4096 * 4096;
        changed[at..at + 65536].copy_from_slice(&common::noise(100 + i as u64, 65536));
        ranges.push(at as u64..at as u64 + 65536);
    }
    let (v0, _) = common::dense_images(&dir, &base);
    // The same disk later: the range list is checked against its disk id.
    let disk_id = Some(vhdkit::open(&v0).unwrap().info().disk_id);
    let v1 = dir.join("changed.vhdx");
    let changed_disk = OpenOptions::new().open_raw_reader(Box::new(changed), "changed");
    let mut o = common::no_sync();
    o.disk_id = disk_id;
    vhdkit::export::export(&changed_disk, &v1, Target::Vhdx, &o).unwrap();
    let (d0, d1) = (vhdkit::open(&v0).unwrap(), vhdkit::open(&v1).unwrap());
    let mut g = c.benchmark_group("incremental");
    g.sample_size(10);
    g.bench_function("full_backup", |b| {
        b.iter_batched(
            || fresh(&dir, "full", Compression::None),
            |store| black_box(store.backup(&d1, &BackupOptions::new("d")).unwrap().new_chunks),
            BatchSize::PerIteration,
        )
    });
    let pristine = dir.join("pristine");
    let store = Store::init(&pristine, &InitOptions::default()).unwrap();
    store.backup(&d0, &BackupOptions::new("d")).unwrap();
    drop(store);
    g.bench_function("ranges_1pct", |b| {
        b.iter_batched(
            || {
                let work = dir.join("work");
                let _ = std::fs::remove_dir_all(&work);
                copy_dir(&pristine, &work);
                Store::open(&work).unwrap()
            },
            |store| {
                let mut o = BackupOptions::new("d");
                o.changes = Some(ranges.clone().into());
                black_box(store.backup(&d1, &o).unwrap().bytes_read)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
    let _ = std::fs::remove_dir_all(dir);
}

fn copy_dir(from: &Path, to: &Path) {
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

fn restore(c: &mut Criterion) {
    let dir = common::scratch("restore");
    let bytes = common::noise(4, common::dense());
    let (vhdx, raw) = common::dense_images(&dir, &bytes);
    drop(bytes);
    let store = fresh(&dir, "s", Compression::None);
    let id = store.backup(&vhdkit::open(&vhdx).unwrap(), &BackupOptions::new("d")).unwrap().id;
    let out = dir.join("out.raw");
    let mut g = c.benchmark_group("restore");
    g.throughput(Throughput::Bytes(common::dense() as u64));
    g.sample_size(10);
    g.bench_function("restore_to_raw", |b| {
        b.iter(|| {
            let _ = std::fs::remove_file(&out);
            let mut o = vhdkit::store::RestoreOptions::default();
            o.export = common::no_sync();
            black_box(store.restore(&id, &out, Target::Raw, &o).unwrap().export.bytes_written)
        })
    });
    let src = std::fs::File::open(&raw).unwrap();
    let mut buf = vec![0u8; 4 << 20];
    g.bench_function("baseline_copy_raw", |b| {
        b.iter(|| {
            let _ = std::fs::remove_file(&out);
            let dst = std::fs::File::create(&out).unwrap();
            for off in (0..common::dense() as u64).step_by(buf.len()) {
                src.read_exact_at(&mut buf, off).unwrap();
                dst.write_all_at(&buf, off).unwrap();
            }
            black_box(buf[0])
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(dir);
}

fn vacuum(c: &mut Criterion) {
    let dir = common::scratch("vacuum");
    let mut g = c.benchmark_group("vacuum");
    g.sample_size(10);
    for chunks in [1024usize, 4096, 16384] {
        // `chunks` 64 KiB chunks over four backups; prune keeps the newest
        // two, so vacuum has dead chunks to drop and packs to rewrite.
        let pristine = dir.join(format!("p{chunks}"));
        let store = Store::init(&pristine, &common::init_options(64 * 1024, 4 << 20)).unwrap();
        let size = chunks / 4 * 64 * 1024;
        for v in 0..4u64 {
            let d = OpenOptions::new().open_raw_reader(Box::new(common::noise(10 + v, size)), "d");
            store.backup(&d, &common::full("d")).unwrap();
        }
        store.prune("d", &vhdkit::store::PruneOptions::new(Retention::keep_last(2))).unwrap();
        drop(store);
        g.throughput(Throughput::Elements(chunks as u64));
        g.bench_with_input(BenchmarkId::new("chunks", chunks), &chunks, |b, _| {
            b.iter_batched(
                || {
                    let work = dir.join("work");
                    let _ = std::fs::remove_dir_all(&work);
                    copy_dir(&pristine, &work);
                    Store::open(&work).unwrap()
                },
                |store| black_box(store.vacuum(&VacuumOptions::immediate()).unwrap().bytes_reclaimed),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(dir);
}

/// Encryption: the AEAD's own speed per chunk beside BLAKE3's (the step it
/// joins), and what it costs a whole backup.
fn crypt(c: &mut Criterion) {
    use std::sync::Arc;
    use vhdkit::store::crypto::{Crypt, Keys};
    use vhdkit::store::format::record::{decode_record, encode_record, seal_payload};
    use vhdkit::store::model::id::ChunkId;
    let chunk = common::noise(4, CHUNK);
    let keys = Arc::new(Keys::for_tests(1));
    let crypt = Crypt::Sealed(keys.clone());
    let id = crypt.chunk_id(&chunk);
    let mut g = c.benchmark_group("crypt");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    g.bench_function("baseline_blake3_one_core", |b| b.iter(|| black_box(ChunkId::of(black_box(&chunk)))));
    let mut sealed = Vec::new();
    g.bench_function("seal_chunk_one_core", |b| {
        b.iter(|| {
            seal_payload(&keys, id, Compression::None, CHUNK as u32, black_box(&chunk), &mut sealed);
            black_box(sealed.len())
        })
    });
    let mut record = Vec::new();
    seal_payload(&keys, id, Compression::None, CHUNK as u32, &chunk, &mut sealed);
    encode_record(id, Compression::None, CHUNK as u32, &sealed, true, &mut record);
    let mut plain = Vec::new();
    g.bench_function("open_chunk_one_core", |b| {
        b.iter(|| {
            decode_record(black_box(&record), id, &mut plain, &crypt).unwrap();
            black_box(plain.len())
        })
    });
    g.finish();

    let dir = common::scratch("crypt");
    let bytes = common::noise(5, common::dense());
    let (vhdx, _) = common::dense_images(&dir, &bytes);
    let disk = vhdkit::open(&vhdx).unwrap();
    let mut g = c.benchmark_group("backup_encrypted");
    g.throughput(Throughput::Bytes(common::dense() as u64));
    g.sample_size(10);
    for (name, encrypt) in [("full_into_fresh_plain_store", false), ("full_into_fresh_encrypted_store", true)] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let path = dir.join(name);
                    let _ = std::fs::remove_dir_all(&path);
                    let mut o = InitOptions::default();
                    if encrypt {
                        let key = vhdkit::store::StoreKey::key_file_bytes(vec![9; 32]).unwrap();
                        o.encryption = Some(vhdkit::store::Encryption::new(key));
                    }
                    Store::init(&path, &o).unwrap()
                },
                |store| black_box(store.backup(&disk, &BackupOptions::new("d")).unwrap().new_chunks),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(dir);
}

criterion_group!(benches, backup, incremental, restore, vacuum, crypt);
criterion_main!(benches);
