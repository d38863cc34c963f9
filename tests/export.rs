//! Writers, checked by qemu: every output of every corpus image and of
//! qemu-written images passes `qemu-img check` and `qemu-img compare` with
//! its source; differencing children hold exactly the sectors that differ
//! and read back as their source; random sparse disks round-trip in every
//! format.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::run;
use proptest::prelude::*;
use vhdkit::disk::{Disk, OpenOptions};
use vhdkit::export::{ExportOptions, Target, export};
use vhdkit::{ExtentState, VirtualDisk};

const MIB: u64 = 1 << 20;
const TARGETS: [(Target, &str, &str); 5] = [
    (Target::Raw, "raw", "raw"),
    (Target::Vhd, "vhd", "vpc"),
    (Target::VhdFixed, "vhd", "vpc"),
    (Target::Vhdx, "vhdx", "vhdx"),
    (Target::VhdxFixed, "vhdx", "vhdx"),
];

/// `qemu-img check` (where the format has one) and `qemu-img compare`.
fn qemu_agrees(source: &Path, source_format: &str, output: &Path, output_format: &str) {
    if output_format == "vhdx" {
        run(Command::new("qemu-img").args(["check", "-q", "-f", "vhdx"]).arg(output));
    }
    let out = Command::new("qemu-img")
        .args(["compare", "-q", "-f", source_format, "-F", output_format])
        .arg(source)
        .arg(output)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img compare {} {} ({output_format}): rc {:?} {}",
        source.display(),
        output.display(),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn export_all(disk: &Disk, qemu_source: &Path, qemu_format: &str, dir: &Path, label: &str) {
    for (target, ext, format) in TARGETS {
        if matches!(target, Target::Vhd | Target::VhdFixed) && !disk.size().is_multiple_of(512) {
            continue;
        }
        let out = dir.join(format!("{label}-{target:?}.{ext}"));
        let report = export(disk, &out, target, &ExportOptions::default())
            .unwrap_or_else(|e| panic!("{label} → {target:?}: {e}"));
        assert_eq!(report.virtual_size, disk.size());
        assert_eq!(std::fs::metadata(&out).unwrap().len(), report.file_size, "{label} → {target:?}: file size");
        qemu_agrees(qemu_source, qemu_format, &out, format);
        // And our own reader sees the same size and identity of contents.
        let back = if target == Target::Raw {
            OpenOptions::new().open_raw(&out).unwrap()
        } else {
            vhdkit::open(&out).unwrap()
        };
        assert_eq!(back.size(), disk.size(), "{label} → {target:?}");
        std::fs::remove_file(&out).unwrap();
    }
}

/// Whether any byte of `start..end` lies in one of `ranges`.
fn touches(ranges: &[(u64, u64)], start: u64, end: u64) -> bool {
    ranges.iter().any(|&(a, b)| a < end && start < b)
}

/// Checks a VHDX output block by block through qemu: each allocated block
/// (from an independent parse of its BAT) reads, in qemu, as the reference
/// raw image; unallocated blocks hold nothing the reference has. Used where a
/// whole-disk `qemu-img compare` would read hundreds of GiB of zeros.
fn qemu_agrees_by_block(reference_raw: &Path, output: &Path, dir: &Path) {
    run(Command::new("qemu-img").args(["check", "-q", "-f", "vhdx"]).arg(output));
    let raw = std::fs::File::open(reference_raw).unwrap();
    let raw_data = common::file_data_ranges(reference_raw);
    let out_data = common::file_data_ranges(output);
    let mut want = Vec::new();
    for (voff, len, state, foff) in common::vhdx_blocks(output) {
        want.resize(len as usize, 0);
        match state {
            0 => {
                if touches(&raw_data, voff, voff + len) {
                    common::read_exact_at(&raw, &mut want, voff);
                    assert!(
                        want.iter().all(|&x| x == 0),
                        "{}: block at {voff} is unallocated but holds data",
                        output.display()
                    );
                }
            }
            6 => {
                if !touches(&out_data, foff, foff + len) && !touches(&raw_data, voff, voff + len) {
                    continue; // a hole in both files: zeros either way
                }
                common::read_exact_at(&raw, &mut want, voff);
                let got = common::qemu_read(output, "vhdx", voff, len, dir);
                assert!(got == want, "{}: block at {voff} differs in qemu's view", output.display());
            }
            other => panic!("{}: block at {voff} has state {other}", output.display()),
        }
    }
}

/// Every corpus image qemu can read (and both dirty-log images, whose
/// replayed view corpus.json records), to every format. The raw output is
/// checked against corpus.json; the other outputs are read by qemu and
/// compared with that raw output.
#[test]
fn every_corpus_image_exports_to_every_format() {
    let Some(corpus) = common::corpus() else { return };
    if !common::have_qemu() {
        return;
    }
    let dir = common::scratch("export-corpus");
    let mut n = 0;
    for image in &common::corpus_manifest(&corpus) {
        let rel = image["path"].as_str().unwrap();
        if image.get("virtual_size").is_none() || rel.contains("differential") {
            continue;
        }
        let size = image["virtual_size"].as_u64().unwrap();
        let extents: Vec<(u64, u64, String)> = common::data_extents(image);
        let path = common::corpus_image(&corpus, rel);
        let disk = vhdkit::open(&path).unwrap();
        let label = rel.replace('/', "_");
        let raw = dir.join(format!("{label}.raw"));
        export(&disk, &raw, Target::Raw, &ExportOptions::default()).unwrap();
        common::assert_raw_file_matches(&raw, &extents, size);
        for (target, ext, format) in &TARGETS[1..] {
            let out = dir.join(format!("{label}-{target:?}.{ext}"));
            let report = export(&disk, &out, *target, &ExportOptions::default())
                .unwrap_or_else(|e| panic!("{label} → {target:?}: {e}"));
            assert_eq!(std::fs::metadata(&out).unwrap().len(), report.file_size, "{label} → {target:?}: file size");
            if *format == "vhdx" && size > 2 << 30 {
                qemu_agrees_by_block(&raw, &out, &dir);
            } else {
                qemu_agrees(&raw, "raw", &out, format);
            }
            std::fs::remove_file(&out).unwrap();
        }
        std::fs::remove_file(&raw).unwrap();
        n += 1;
    }
    assert_eq!(n, 21, "images exported");
}

/// Images qemu wrote (both formats, odd sizes, several block sizes).
#[test]
fn qemu_written_images_export_to_every_format() {
    if !common::have_qemu() {
        return;
    }
    let dir = common::scratch("export-qemu");
    let cases = [
        ("vpc", "subformat=dynamic,force_size=on", 10 * MIB + 1536),
        ("vpc", "subformat=fixed,force_size=off", 7 * MIB),
        ("vhdx", "block_size=1M,block_state_zero=off", 5 * MIB + 3584),
        ("vhdx", "block_size=8M,subformat=fixed", 17 * MIB),
        ("vhdx", "block_size=32M", 70 * MIB + 512),
    ];
    for (i, (format, opts, size)) in cases.into_iter().enumerate() {
        let src = dir.join(format!("src{i}.{format}"));
        run(Command::new("qemu-img").args(["create", "-q", "-f", format, "-o", opts]).arg(&src).arg(size.to_string()));
        let size = {
            let d = vhdkit::open(&src).unwrap();
            d.size()
        };
        run(Command::new("qemu-io")
            .args(["-f", format, "-c", "write -P 0x3c 0 512", "-c"])
            .arg(format!("write -P 0x4d {} 512", size - 512))
            .args(["-c", "write -P 0x5e 1M 1536", "-c", "write -z 1M 512"])
            .arg(&src));
        let disk = vhdkit::open(&src).unwrap();
        export_all(&disk, &src, format, &dir, &format!("qemu{i}"));
    }
}

/// The sectors where two disks differ, in 512-byte units.
fn differing_sectors(a: &dyn VirtualDisk, b: &dyn VirtualDisk, sector: u64) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    let mut x = vec![0u8; 4 * MIB as usize];
    let mut y = vec![0u8; 4 * MIB as usize];
    let mut off = 0;
    while off < a.size() {
        let n = (a.size() - off).min(x.len() as u64) as usize;
        a.read_at(&mut x[..n], off).unwrap();
        b.read_at(&mut y[..n], off).unwrap();
        for s in 0..n / sector as usize {
            let r = s * sector as usize..(s + 1) * sector as usize;
            if x[r.clone()] != y[r] {
                out.insert(off / sector + s as u64);
            }
        }
        off += n as u64;
    }
    out
}

/// The sectors a child stores itself (its own allocation).
fn own_sectors(child: &Disk, sector: u64) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for e in child.own_extents(0..child.size()).unwrap() {
        if e.depth == 0 && e.state != ExtentState::Unallocated {
            out.extend(e.offset / sector..(e.offset + e.length) / sector);
        }
    }
    out
}

/// A base, a child and a grandchild written with `--parent`: each child holds
/// exactly the sectors where its source differs from its base, and the chain
/// reads back as the newest source.
#[test]
fn a_written_chain_reads_back_as_the_newest_source() {
    if !common::have_qemu() {
        return;
    }
    let dir = common::scratch("export-chain");
    for (format, target, ext) in [("vhdx", Target::Vhdx, "vhdx"), ("vpc", Target::Vhd, "vhd")] {
        let size = 40 * MIB;
        let raw0 = dir.join(format!("gen0-{ext}.raw"));
        std::fs::write(&raw0, vec![0u8; size as usize]).unwrap();
        run(Command::new("qemu-io")
            .args(["-f", "raw", "-c", "write -P 0x11 0 30M", "-c", "write -P 0x12 35M 1M"])
            .arg(&raw0));
        let raw1 = dir.join(format!("gen1-{ext}.raw"));
        std::fs::copy(&raw0, &raw1).unwrap();
        run(Command::new("qemu-io")
            .args(["-f", "raw", "-c", "write -P 0x21 512 512", "-c", "write -z 2M 3M", "-c", "write -P 0x22 33M 4097"])
            .args(["-c", "write -z 35M 4096", "-c"])
            .arg(format!("write -P 0x23 {} 512", size - 512))
            .arg(&raw1));
        let raw2 = dir.join(format!("gen2-{ext}.raw"));
        std::fs::copy(&raw1, &raw2).unwrap();
        run(Command::new("qemu-io")
            .args(["-f", "raw", "-c", "write -P 0x31 1M 64K", "-c", "write -z 0 512", "-c", "write -P 0x32 39M 1M"])
            .arg(&raw2));

        let opts = OpenOptions::new();
        let base = dir.join(format!("base.{ext}"));
        export(&opts.open_raw(&raw0).unwrap(), &base, target, &common::block_size(MIB as u32 * 2)).unwrap();
        let child = dir.join(format!("child.{ext}"));
        let with_parent = |p: &Path| common::child_of(p);
        export(&opts.open_raw(&raw1).unwrap(), &child, target, &with_parent(&base)).unwrap();
        let grandchild = dir.join(format!("grandchild.{ext}"));
        export(&opts.open_raw(&raw2).unwrap(), &grandchild, target, &with_parent(&child)).unwrap();

        let chain = vhdkit::open(&grandchild).unwrap();
        assert_eq!(chain.depth(), 3);
        common::assert_same_as_raw(&chain, &raw2);
        let c = vhdkit::open(&child).unwrap();
        common::assert_same_as_raw(&c, &raw1);
        // Each child stores exactly what differs from its parent.
        let r0 = opts.open_raw(&raw0).unwrap();
        let r1 = opts.open_raw(&raw1).unwrap();
        let r2 = opts.open_raw(&raw2).unwrap();
        assert_eq!(own_sectors(&c, 512), differing_sectors(&r1, &r0, 512), "{format} child");
        assert_eq!(own_sectors(&chain, 512), differing_sectors(&r2, &r1, 512), "{format} grandchild");
        // The base is a plain image qemu reads as the first source.
        qemu_agrees(&raw0, "raw", &base, format);
        if format == "vhdx" {
            run(Command::new("qemu-img").args(["check", "-q", "-f", "vhdx"]).arg(&base));
        }
    }
}

/// Writing a child against a parent of another size or format is refused.
#[test]
fn mismatched_parents_are_refused() {
    let dir = common::scratch("export-mismatch");
    let a = OpenOptions::new().open_raw_reader(Box::new(vec![1u8; 4 * MIB as usize]), "a");
    let b = OpenOptions::new().open_raw_reader(Box::new(vec![1u8; 8 * MIB as usize]), "b");
    let base = dir.join("base.vhdx");
    export(&a, &base, Target::Vhdx, &ExportOptions::default()).unwrap();
    let child = dir.join("child.vhdx");
    let err = export(&b, &child, Target::Vhdx, &common::child_of(&base.clone())).unwrap_err();
    assert!(err.to_string().contains("size"), "{err}");
    let err = export(&a, &dir.join("c.vhd"), Target::Vhd, &common::child_of(&base)).unwrap_err();
    assert!(err.to_string().contains("parent"), "{err}");
    assert!(!child.exists(), "a failed export left its output");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "a failed export left a temporary file");
}

/// A random sparse disk: runs of data, zeros inside data, sector-sized
/// islands, and long gaps.
fn sparse_disk() -> impl Strategy<Value = Vec<u8>> {
    (1u64..48, prop::collection::vec((0u64..48 * MIB, 1u64..3 * MIB, any::<u8>()), 0..12)).prop_map(|(mib, runs)| {
        let size = mib * MIB + 4096 * (mib % 3);
        let mut d = vec![0u8; size as usize];
        for (at, len, fill) in runs {
            let at = (at % size) / 512 * 512;
            let end = (at + len).min(size);
            for (i, b) in d[at as usize..end as usize].iter_mut().enumerate() {
                *b = if (i / 512) % 7 == 3 { 0 } else { fill.wrapping_add((i % 251) as u8) };
            }
        }
        d
    })
}

fn read_all(disk: &dyn VirtualDisk) -> Vec<u8> {
    let mut v = vec![0u8; disk.size() as usize];
    disk.read_at(&mut v, 0).unwrap();
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Random sparse disks survive every format, bit for bit.
    #[test]
    fn random_disks_round_trip_in_every_format(bytes in sparse_disk(), block in prop::sample::select(vec![1u32, 2, 4])) {
        let dir = common::scratch(&format!("export-prop-{}", std::process::id()));
        let source = Arc::new(bytes);
        let disk = OpenOptions::new().open_raw_reader(Box::new(source.clone()), "random");
        for (target, ext, _) in TARGETS {
            let out = dir.join(format!("r.{ext}"));
            let opts = common::block_size(block << 20);
            export(&disk, &out, target, &opts).unwrap();
            let back = if target == Target::Raw { OpenOptions::new().open_raw(&out).unwrap() } else { vhdkit::open(&out).unwrap() };
            prop_assert_eq!(back.size(), source.len() as u64);
            prop_assert!(read_all(&back) == *source, "{:?} differs", target);
            std::fs::remove_file(&out).unwrap();
        }
    }

    /// A random change to a random disk, written as a child: the child reads
    /// back as the changed disk and stores exactly the changed sectors.
    #[test]
    fn random_changes_make_minimal_children(bytes in sparse_disk(), changes in prop::collection::vec((0u64..1 << 40, 1u64..300_000, any::<u8>()), 1..6)) {
        let dir = common::scratch(&format!("export-prop-child-{}", std::process::id()));
        let size = bytes.len() as u64;
        let mut changed = bytes.clone();
        for (at, len, fill) in changes {
            let at = (at % size) as usize;
            let end = (at + len as usize).min(size as usize);
            changed[at..end].fill(fill);
        }
        let base_disk = OpenOptions::new().open_raw_reader(Box::new(bytes), "base");
        let new_disk = OpenOptions::new().open_raw_reader(Box::new(changed.clone()), "new");
        for (target, ext) in [(Target::Vhdx, "vhdx"), (Target::Vhd, "vhd")] {
            let base = dir.join(format!("b.{ext}"));
            export(&base_disk, &base, target, &common::block_size(if ext == "vhd" { 512 << 10 } else { 1 << 20 })).unwrap();
            let child = dir.join(format!("c.{ext}"));
            export(&new_disk, &child, target, &common::child_of(&base.clone())).unwrap();
            let c = vhdkit::open(&child).unwrap();
            prop_assert!(read_all(&c) == changed, "{:?} child differs", target);
            prop_assert_eq!(own_sectors(&c, 512), differing_sectors(&new_disk, &base_disk, 512));
        }
    }
}
