//! Opening and reading images, each beside its baseline: opening a 64 TiB
//! sparse VHDX against reading its BAT's bytes, and reading a dense VHDX
//! against reading the same bytes from a raw file.

mod common;

use common::FileExt;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vhdkit::export::{Target, export};

fn open(c: &mut Criterion) {
    let dir = common::scratch("open");
    let path = dir.join("64t.vhdx");
    let disk = common::SparseDisk::new(64 << 40);
    export(&disk, &path, Target::Vhdx, &{
        let mut o = common::no_sync();
        o.block_size = Some(32 << 20);
        o
    })
    .unwrap();
    let opened = vhdkit::open(&path).unwrap();
    let bat = opened.as_vhdx().unwrap().regions().bat;
    let bat_bytes = opened.as_vhdx().unwrap().bat().layout().table_bytes() as usize;
    drop(opened);
    let mut g = c.benchmark_group("open");
    g.bench_function("vhdx_64tib_sparse", |b| b.iter(|| black_box(vhdkit::open(&path).unwrap().size())));
    let file = std::fs::File::open(&path).unwrap();
    let mut buf = vec![0u8; bat_bytes];
    g.bench_function("baseline_read_bat_bytes", |b| {
        b.iter(|| {
            file.read_exact_at(&mut buf, bat.file_offset).unwrap();
            black_box(buf[0])
        })
    });
    let d = vhdkit::open(&path).unwrap();
    g.bench_function("vhdx_64tib_full_map", |b| b.iter(|| black_box(d.extents(0..d.size()).unwrap().len())));
    g.finish();
    let _ = std::fs::remove_dir_all(dir);
}

fn read(c: &mut Criterion) {
    let dir = common::scratch("read");
    let bytes = common::noise(7, common::dense());
    let (vhdx, raw) = common::dense_images(&dir, &bytes);
    drop(bytes);
    let disk = vhdkit::open(&vhdx).unwrap();
    let file = std::fs::File::open(&raw).unwrap();
    let mut buf = vec![0u8; 4 << 20];
    let mut g = c.benchmark_group("read");
    g.throughput(Throughput::Bytes(common::dense() as u64));
    g.sample_size(10);
    g.bench_function("vhdx_read_at_4mib", |b| {
        b.iter(|| {
            for off in (0..common::dense() as u64).step_by(buf.len()) {
                disk.read_at(&mut buf, off).unwrap();
            }
            black_box(buf[0])
        })
    });
    g.bench_function("baseline_raw_pread_4mib", |b| {
        b.iter(|| {
            for off in (0..common::dense() as u64).step_by(buf.len()) {
                file.read_exact_at(&mut buf, off).unwrap();
            }
            black_box(buf[0])
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(dir);
}

criterion_group!(benches, open, read);
criterion_main!(benches);
