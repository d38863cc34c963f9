//! Differencing chains, VHD and VHDX, built by hand with chosen bitmaps
//! (tests/common/build.rs) on top of bases qemu wrote, checked against a
//! model of the chain computed here, sector by sector: which layer supplies
//! each sector and what it holds. Never against the reader's own output.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::build::{self, Block, GARBAGE, MIB, VhdSpec, VhdxSpec};
use common::run;
use vhdkit::disk::{OpenOptions, ParentLink, ParentResolver};
use vhdkit::{DiskError, ExtentState};

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8 | 1).collect()
    }

    /// Alternating runs of 1..=max sectors, starting with `first`.
    fn runs(&mut self, n: usize, max: u64, first: bool) -> Vec<bool> {
        let mut out = Vec::with_capacity(n);
        let mut v = first;
        while out.len() < n {
            let len = 1 + (self.next() % max) as usize;
            out.extend(std::iter::repeat_n(v, len.min(n - out.len())));
            v = !v;
        }
        out
    }
}

/// One layer of the model: its blocks, or (for a base) its whole view.
enum Layer {
    Blocks { block: u64, sector: u64, blocks: BTreeMap<u64, Block> },
    View(Vec<u8>),
}

/// The chain as the tests understand it, top first.
struct Model {
    layers: Vec<Layer>,
    size: u64,
}

impl Model {
    /// Which layer supplies the byte at `offset`, and its value; a layer
    /// that says "zero" supplies a zero.
    fn byte(&self, offset: u64) -> (usize, u8, ExtentState) {
        for (depth, layer) in self.layers.iter().enumerate() {
            match layer {
                Layer::View(v) => return (depth, v[offset as usize], ExtentState::Data),
                Layer::Blocks { block, sector, blocks } => {
                    let (b, within) = (offset / block, offset % block);
                    match blocks.get(&b) {
                        None => continue,
                        Some(Block::Full(d)) => return (depth, d[within as usize], ExtentState::Data),
                        Some(Block::Partial { present, data }) => {
                            if present[(within / sector) as usize] {
                                return (depth, data[within as usize], ExtentState::Data);
                            }
                        }
                        Some(Block::Zero | Block::Unmapped | Block::Undefined) => {
                            return (depth, 0, ExtentState::Zero);
                        }
                    }
                }
            }
        }
        (self.layers.len() - 1, 0, ExtentState::Unallocated)
    }

    /// Compares the disk with the model over `range`: bytes, and for every
    /// byte which layer supplies it and in what state.
    fn check(&self, disk: &vhdkit::Disk, range: std::ops::Range<u64>) {
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        disk.read_at(&mut buf, range.start).unwrap();
        let extents = disk.extents(range.clone()).unwrap();
        let mut e = extents.iter().peekable();
        for (i, &got) in buf.iter().enumerate() {
            let off = range.start + i as u64;
            let (depth, want, state) = self.byte(off);
            assert_eq!(got, want, "byte {off}: read {got:#04x}, model {want:#04x} from depth {depth}");
            while e.peek().is_some_and(|x| x.offset + x.length <= off) {
                e.next();
            }
            let x = e.peek().unwrap_or_else(|| panic!("no extent covers {off}"));
            assert_eq!((x.state, x.depth as usize), (state, depth), "extent at byte {off}: {x:?}");
        }
        assert!(!buf.contains(&GARBAGE) || self.layers.iter().any(|l| matches!(l, Layer::View(_))));
    }
}

fn qemu_view(format: &str, image: &Path) -> Vec<u8> {
    let raw = image.with_extension("raw");
    run(Command::new("qemu-img").args(["convert", "-f", format, "-O", "raw"]).arg(image).arg(&raw));
    std::fs::read(raw).unwrap()
}

/// A 3-deep VHDX chain: a qemu-written base, and two hand-built children with
/// every payload state, partially present blocks with random bitmaps, and a
/// short last block.
#[test]
fn a_three_deep_vhdx_chain_reads_as_the_model_says() {
    if !common::have_qemu() {
        return;
    }
    let dir = common::scratch("chain-vhdx");
    let size = 6 * MIB + 7 * 512;
    let bs = MIB;
    let base = dir.join("base.vhdx");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "vhdx", "-o", "block_size=1M"])
        .arg(&base)
        .arg(size.to_string()));
    run(Command::new("qemu-io")
        .args(["-f", "vhdx", "-c", "write -P 0x61 0 6M", "-c", "write -P 0x62 6291456 3584"])
        .arg(&base));
    let base_view = qemu_view("vhdx", &base);

    let mut rng = Rng(42);
    let spb = (bs / 512) as usize;
    let mut c1 = BTreeMap::new();
    c1.insert(0, Block::Full(rng.bytes(bs as usize)));
    c1.insert(1, Block::Partial { present: rng.runs(spb, 40, true), data: rng.bytes(bs as usize) });
    c1.insert(2, Block::Zero);
    c1.insert(3, Block::Unmapped);
    c1.insert(5, Block::Partial { present: rng.runs(spb, 300, false), data: rng.bytes(bs as usize) });
    c1.insert(6, Block::Partial { present: rng.runs(spb, 2, true), data: rng.bytes(bs as usize) });
    let g1 = build::guid_from_seed(1001);
    let child1 = dir.join("child1.avhdx");
    let spec1 = VhdxSpec {
        virtual_size: size,
        block_size: bs,
        logical_sector: 512,
        data_write_guid: g1.clone(),
        parent: Some((
            format!("{{{}}}", build::vhdx_data_write_guid(&base)),
            None,
            ".\\base.vhdx".into(),
            "C:\\nowhere\\base.vhdx".into(),
        )),
        blocks: c1.clone(),
    };
    build::write_vhdx(&child1, &spec1);

    let mut c2 = BTreeMap::new();
    c2.insert(1, Block::Partial { present: rng.runs(spb, 25, false), data: rng.bytes(bs as usize) });
    c2.insert(3, Block::Full(rng.bytes(bs as usize)));
    c2.insert(4, Block::Partial { present: rng.runs(spb, 90, true), data: rng.bytes(bs as usize) });
    c2.insert(6, Block::Undefined);
    let child2 = dir.join("child2.avhdx");
    build::write_vhdx(
        &child2,
        &VhdxSpec {
            virtual_size: size,
            block_size: bs,
            logical_sector: 512,
            data_write_guid: build::guid_from_seed(1002),
            parent: Some((format!("{{{}}}", g1.to_uppercase()), None, "child1.avhdx".into(), String::new())),
            blocks: c2.clone(),
        },
    );

    let disk = vhdkit::open(&child2).unwrap();
    assert_eq!(disk.depth(), 3);
    let chain: Vec<PathBuf> = disk.chain().map(|i| i.path.clone()).collect();
    assert_eq!(chain, vec![child2.clone(), child1.clone(), base.clone()]);
    let model = Model {
        layers: vec![
            Layer::Blocks { block: bs, sector: 512, blocks: c2 },
            Layer::Blocks { block: bs, sector: 512, blocks: c1 },
            Layer::View(base_view),
        ],
        size,
    };
    model.check(&disk, 0..model.size);

    // The child's own allocation is exactly what it holds itself.
    let own = disk.own_extents(0..size).unwrap();
    let own_bytes: u64 = own.iter().filter(|e| e.depth == 0).map(|e| e.length).sum();
    let spb_present = |p: &Block| match p {
        Block::Partial { present, .. } => present.iter().filter(|&&x| x).count() as u64 * 512,
        _ => unreachable!(),
    };
    let model2 = &model.layers[0];
    let Layer::Blocks { blocks, .. } = model2 else { unreachable!() };
    let want = spb_present(&blocks[&1]) + MIB + spb_present(&blocks[&4]) + 3584;
    assert_eq!(own_bytes, want);
    assert!(own.iter().all(|e| e.depth == 0 || e.state == ExtentState::Parent));
}

/// 4096-byte logical sectors (which qemu cannot make) and a disk larger than
/// one sector-bitmap chunk, so the BAT's interleaved bitmap entries matter.
#[test]
fn vhdx_children_with_4k_sectors_and_many_chunks() {
    let dir = common::scratch("chain-vhdx-4k");
    let mut rng = Rng(7);
    for (sector, size) in [(4096u64, 40 * MIB), (512, (4 << 30) + 3 * MIB)] {
        let bs = MIB;
        let spb = (bs / sector) as usize;
        let chunk_ratio = (1u64 << 23) * sector / bs;
        let last = size.div_ceil(bs) - 1;
        let base = dir.join(format!("base-{sector}.vhdx"));
        let mut b0 = BTreeMap::new();
        for b in [0, 1, chunk_ratio.min(last), last] {
            b0.insert(b, Block::Full(rng.bytes(bs as usize)));
        }
        b0.insert(2, Block::Zero);
        let g0 = build::guid_from_seed(sector);
        build::write_vhdx(
            &base,
            &VhdxSpec {
                virtual_size: size,
                block_size: bs,
                logical_sector: sector,
                data_write_guid: g0.clone(),
                parent: None,
                blocks: b0.clone(),
            },
        );
        let mut b1 = BTreeMap::new();
        for b in [1, 2, 3, chunk_ratio.min(last), last] {
            b1.insert(b, Block::Partial { present: rng.runs(spb, 9, b % 2 == 0), data: rng.bytes(bs as usize) });
        }
        let child = dir.join(format!("child-{sector}.avhdx"));
        build::write_vhdx(
            &child,
            &VhdxSpec {
                virtual_size: size,
                block_size: bs,
                logical_sector: sector,
                data_write_guid: build::guid_from_seed(sector + 1),
                parent: Some((format!("{{{g0}}}"), None, format!("base-{sector}.vhdx"), String::new())),
                blocks: b1.clone(),
            },
        );
        let disk = vhdkit::open(&child).unwrap();
        assert_eq!(disk.info().logical_sector_size, sector as u32);
        let model = Model {
            layers: vec![
                Layer::Blocks { block: bs, sector, blocks: b1 },
                Layer::Blocks { block: bs, sector, blocks: b0 },
            ],
            size,
        };
        for b in [0, 1, 2, 3, 4, chunk_ratio.min(last), last] {
            let start = b * bs;
            model.check(&disk, start..(start + bs).min(size));
        }
    }
}

/// A 3-deep VHD chain: a qemu-written base, a child with 512 KiB blocks and a
/// grandchild with 2 MiB blocks, both with W2ru/W2ku locators.
#[test]
fn a_three_deep_vhd_chain_reads_as_the_model_says() {
    if !common::have_qemu() {
        return;
    }
    let dir = common::scratch("chain-vhd");
    let size = 10 * MIB + 3 * 512;
    let base = dir.join("base.vhd");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "vpc", "-o", "force_size=on"])
        .arg(&base)
        .arg(size.to_string()));
    run(Command::new("qemu-io")
        .args(["-f", "vpc", "-c", "write -P 0x71 0 5M", "-c", "write -P 0x72 8M 1536", "-c"])
        .arg(format!("write -P 0x73 {} 512", size - 512))
        .arg(&base));
    let base_view = qemu_view("vpc", &base);
    assert_eq!(base_view.len() as u64, size);

    let mut rng = Rng(99);
    let (bs1, bs2) = (512 * 1024u64, 2 * MIB);
    let mut c1 = BTreeMap::new();
    c1.insert(0, Block::Full(rng.bytes(bs1 as usize)));
    c1.insert(3, Block::Partial { present: rng.runs(1024, 30, true), data: rng.bytes(bs1 as usize) });
    c1.insert(16, Block::Partial { present: rng.runs(1024, 200, false), data: rng.bytes(bs1 as usize) });
    c1.insert(20, Block::Partial { present: rng.runs(1024, 3, true), data: rng.bytes(bs1 as usize) });
    let id0 = build::vhd_unique_id(&base);
    let id1 = build::guid_from_seed(3001);
    let child1 = dir.join("child1.vhd");
    build::write_vhd(
        &child1,
        &VhdSpec {
            virtual_size: size,
            block_size: bs1,
            unique_id: id1.clone(),
            parent: Some((id0, ".\\base.vhd".into(), "D:\\vms\\base.vhd".into(), "base.vhd".into())),
            blocks: c1.clone(),
        },
    );
    let mut c2 = BTreeMap::new();
    c2.insert(0, Block::Partial { present: rng.runs(4096, 500, false), data: rng.bytes(bs2 as usize) });
    c2.insert(5, Block::Partial { present: rng.runs(4096, 7, true), data: rng.bytes(bs2 as usize) });
    let child2 = dir.join("child2.vhd");
    build::write_vhd(
        &child2,
        &VhdSpec {
            virtual_size: size,
            block_size: bs2,
            unique_id: build::guid_from_seed(3002),
            parent: Some((id1, ".\\child1.vhd".into(), "D:\\vms\\child1.vhd".into(), "child1.vhd".into())),
            blocks: c2.clone(),
        },
    );
    let disk = vhdkit::open(&child2).unwrap();
    assert_eq!(disk.depth(), 3);
    let model = Model {
        layers: vec![
            Layer::Blocks { block: bs2, sector: 512, blocks: c2 },
            Layer::Blocks { block: bs1, sector: 512, blocks: c1 },
            Layer::View(base_view),
        ],
        size,
    };
    // The base's own map says data for written blocks only; the model's View
    // layer says data everywhere, so compare bytes over the whole disk and
    // attribution over the children's blocks.
    let mut whole = vec![0u8; size as usize];
    disk.read_at(&mut whole, 0).unwrap();
    for (i, &b) in whole.iter().enumerate() {
        assert_eq!(b, model.byte(i as u64).1, "byte {i}");
    }
    for e in disk.extents(0..size).unwrap() {
        if e.depth < 2 {
            for off in (e.offset..e.offset + e.length).step_by(512) {
                let (depth, _, state) = model.byte(off);
                assert_eq!((e.state, e.depth as usize), (state, depth), "sector at {off}");
            }
        }
    }
}

fn vhdx_child(
    dir: &Path,
    name: &str,
    linkage: &str,
    linkage2: Option<&str>,
    relative: &str,
    absolute: &str,
) -> PathBuf {
    let path = dir.join(name);
    build::write_vhdx(
        &path,
        &VhdxSpec {
            virtual_size: 4 * MIB,
            block_size: MIB,
            logical_sector: 512,
            data_write_guid: build::guid_from_seed(name.len() as u64 + 500),
            parent: Some((linkage.to_string(), linkage2.map(str::to_string), relative.into(), absolute.into())),
            blocks: BTreeMap::from([(0, Block::Full(vec![0x42; MIB as usize]))]),
        },
    );
    path
}

fn base_vhdx(dir: &Path) -> (PathBuf, String) {
    let base = dir.join("base.vhdx");
    let g = build::guid_from_seed(77);
    build::write_vhdx(
        &base,
        &VhdxSpec {
            virtual_size: 4 * MIB,
            block_size: MIB,
            logical_sector: 512,
            data_write_guid: g.clone(),
            parent: None,
            blocks: BTreeMap::from([(1, Block::Full(vec![0x24; MIB as usize]))]),
        },
    );
    (base, g)
}

#[test]
fn a_parent_with_another_identity_is_refused_naming_both_ids() {
    let dir = common::scratch("chain-mismatch");
    let (_, real) = base_vhdx(&dir);
    let wrong = build::guid_from_seed(123_456);
    let child = vhdx_child(&dir, "c.avhdx", &format!("{{{wrong}}}"), None, "base.vhdx", "");
    let err = vhdkit::open(&child).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, DiskError::ParentMismatch { .. }), "{err:?}");
    assert!(text.contains(&wrong) && text.contains(&real), "{text}");
    // The alternate linkage (a merge in progress) is accepted.
    let child2 = vhdx_child(&dir, "c2.avhdx", &format!("{{{wrong}}}"), Some(&format!("{{{real}}}")), "base.vhdx", "");
    assert_eq!(vhdkit::open(&child2).unwrap().depth(), 2);
}

#[test]
fn a_missing_parent_is_reported_with_every_path_tried() {
    let dir = common::scratch("chain-missing");
    let child = vhdx_child(
        &dir,
        "c.avhdx",
        "{00000000-1111-2222-3333-444444444444}",
        None,
        "..\\gone\\p.vhdx",
        "\\\\?\\E:\\vms\\p.vhdx",
    );
    match vhdkit::open(&child) {
        Err(DiskError::ParentNotFound { tried, .. }) => {
            let tried: Vec<String> = tried.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            assert!(tried.iter().any(|p| p.ends_with("chain-missing/../gone/p.vhdx")), "{tried:?}");
            assert!(tried.iter().any(|p| p == "E:/vms/p.vhdx"), "{tried:?}");
            assert!(tried.iter().any(|p| p.ends_with("chain-missing/p.vhdx")), "{tried:?}");
        }
        other => panic!("expected ParentNotFound, got {other:?}"),
    }
}

#[test]
fn a_moved_chain_is_found_by_file_name_and_checked_by_identity() {
    let dir = common::scratch("chain-moved");
    let (_, g) = base_vhdx(&dir);
    let child =
        vhdx_child(&dir, "c.avhdx", &format!("{{{g}}}"), None, "..\\old\\place\\base.vhdx", "\\\\?\\C:\\x\\base.vhdx");
    let disk = vhdkit::open(&child).unwrap();
    assert_eq!(disk.depth(), 2);
    let mut b = [0u8; 2];
    disk.read_at(&mut b, MIB - 1).unwrap();
    assert_eq!(b, [0x42, 0x24]);
}

#[test]
fn a_chain_that_loops_is_refused() {
    let dir = common::scratch("chain-loop");
    // A child whose linkage is its own DataWriteGuid and whose path is itself.
    let me = build::guid_from_seed("self.avhdx".len() as u64 + 500);
    let child = vhdx_child(&dir, "self.avhdx", &format!("{{{me}}}"), None, "self.avhdx", "");
    assert!(matches!(vhdkit::open(&child), Err(DiskError::BadChain { .. })));
}

#[test]
fn a_custom_resolver_finds_parents_elsewhere() {
    struct Catalogue(PathBuf);
    impl ParentResolver for Catalogue {
        fn candidates(&self, _child: &Path, _link: &ParentLink) -> Vec<PathBuf> {
            vec![self.0.clone()]
        }
    }
    let dir = common::scratch("chain-resolver");
    let store = dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let (base, g) = base_vhdx(&dir);
    let moved = store.join("renamed-base.vhdx");
    std::fs::rename(&base, &moved).unwrap();
    let child = vhdx_child(&dir, "c.avhdx", &format!("{{{g}}}"), None, "base.vhdx", "");
    assert!(vhdkit::open(&child).is_err());
    let disk = OpenOptions::new().resolver(Catalogue(moved.clone())).open(&child).unwrap();
    assert_eq!(disk.info().parent.as_ref().unwrap().resolved.as_deref(), Some(moved.as_path()));
}
