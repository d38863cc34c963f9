//! Damaged input: flipped bytes in every structure of every format,
//! truncations at every structure boundary, and hostile counts. Whatever the
//! damage, opening and reading must give a typed error (with a byte offset
//! where the damage is in the bytes) or a correct view, never a panic, and
//! never an allocation larger than the file justifies: a global allocator
//! here records the largest allocation each thread makes.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use common::build::{self, Block, MIB, VhdSpec, VhdxSpec};
use vhdkit::disk::{ChecksumPolicy, OpenOptions};
use vhdkit::io::ReadAt;
use vhdkit::{DiskError, ExtentState};

struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: defers to the system allocator; only records sizes in a
// const-initialised thread-local, which never allocates.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(layout.size())));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(new)));
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// An image's bytes with one byte flipped and/or cut short, without copying.
struct Damaged {
    base: Arc<Vec<u8>>,
    flip: Option<(u64, u8)>,
    len: u64,
}

impl ReadAt for Damaged {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let n = buf.len().min((self.len - offset) as usize);
        buf[..n].copy_from_slice(&self.base[offset as usize..offset as usize + n]);
        if let Some((at, xor)) = self.flip
            && at >= offset
            && at < offset + n as u64
        {
            buf[(at - offset) as usize] ^= xor;
        }
        Ok(n)
    }

    fn size(&self) -> u64 {
        self.len
    }
}

/// What happened to one damaged image.
enum Outcome {
    Refused,
    OpenedWithWarnings,
    OpenedClean,
}

/// Opens and reads a damaged image; panics (with the damage described) on
/// any broken promise.
fn exercise(image: &Arc<Vec<u8>>, flip: Option<(u64, u8)>, len: u64, what: &str) -> Outcome {
    let source = Damaged { base: image.clone(), flip, len };
    let options = OpenOptions::new().checksums(ChecksumPolicy::Strict);
    LARGEST.with(|l| l.set(0));
    let result = catch_unwind(AssertUnwindSafe(|| -> Outcome {
        let disk = match options.open_reader(Box::new(source), what) {
            Ok(d) => d,
            Err(e) => {
                let has_place = match &e {
                    DiskError::Format { source, .. } => source.is_unsupported() || source.offset().is_some(),
                    DiskError::Io { .. } | DiskError::UnknownFormat { .. } => true,
                    other => panic!("{what}: unexpected error kind {other:?}"),
                };
                assert!(has_place, "{what}: error without a place: {e}");
                return Outcome::Refused;
            }
        };
        // Walk the whole map and read every extent's first and last sectors,
        // and everything on these small disks.
        let extents = disk.extents(0..disk.size()).expect("a disk that opened maps");
        let mut buf = vec![0u8; 64 * 1024];
        for e in &extents {
            if e.state == ExtentState::Parent {
                continue;
            }
            let mut off = e.offset;
            while off < e.offset + e.length {
                let n = (e.offset + e.length - off).min(buf.len() as u64) as usize;
                match disk.read_at(&mut buf[..n], off) {
                    Ok(()) => {}
                    Err(DiskError::ParentNotOpened { .. }) => {}
                    Err(err) => panic!("{what}: read at {off} of an image that opened failed: {err}"),
                }
                off += n as u64;
            }
        }
        if disk.check().is_empty() { Outcome::OpenedClean } else { Outcome::OpenedWithWarnings }
    }));
    let largest = LARGEST.with(Cell::get);
    let outcome = result.unwrap_or_else(|p| {
        let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
        panic!("{what}: panicked: {}", msg.unwrap_or_default())
    });
    let allowed = (image.len() as u64).max(2 * MIB) + 256 * 1024;
    assert!(largest as u64 <= allowed, "{what}: allocated {largest} bytes for a {}-byte file", image.len());
    outcome
}

/// A structure to damage: where it is, and whether a checksum covers it
/// (then any flip must be refused or at least reported).
struct Region {
    name: &'static str,
    start: u64,
    len: u64,
    checksummed: bool,
    stride: u64,
}

fn flip_regions(image: &Arc<Vec<u8>>, regions: &[Region], label: &str) {
    let mut flips = 0;
    for r in regions {
        let mut at = r.start;
        while at < r.start + r.len {
            for xor in [0x01u8, 0x80] {
                let what = format!("{label}: {} byte {at} ^ {xor:#04x}", r.name);
                let outcome = exercise(image, Some((at, xor)), image.len() as u64, &what);
                if r.checksummed {
                    assert!(!matches!(outcome, Outcome::OpenedClean), "{what}: damage went unnoticed");
                }
                flips += 1;
            }
            at += r.stride;
        }
    }
    assert!(flips > 100, "{label}: only {flips} flips");
}

fn truncations(image: &Arc<Vec<u8>>, boundaries: &[u64], label: &str) {
    let len = image.len() as u64;
    let mut cuts: Vec<u64> = (0..1100).chain((0..len).step_by(4096)).collect();
    for &b in boundaries {
        cuts.extend([b.saturating_sub(1), b, b + 1]);
    }
    cuts.extend([len - 1, len - 511, len - 512, len - 513]);
    cuts.retain(|&c| c < len);
    for cut in cuts {
        exercise(image, None, cut, &format!("{label}: truncated to {cut} bytes"));
    }
}

/// A number no other call in this process gets: tests run in parallel and
/// build their images in folders of their own (a shared folder let one test
/// empty it while another was reading its image back).
fn unique() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn vhd_image(parent: bool) -> Arc<Vec<u8>> {
    let dir = common::scratch(&format!("damage-vhd-{parent}-{}", unique()));
    let path = dir.join("d.vhd");
    let bs = 512 * 1024;
    let mut blocks = BTreeMap::new();
    blocks.insert(0, Block::Full(vec![0x5a; bs as usize]));
    let present: Vec<bool> = (0..1024).map(|s| s % 3 == 0).collect();
    blocks.insert(3, Block::Partial { present, data: vec![0x6b; bs as usize] });
    let parent = parent
        .then(|| (build::guid_from_seed(9), ".\\p.vhd".to_string(), "C:\\p.vhd".to_string(), "p.vhd".to_string()));
    build::write_vhd(
        &path,
        &VhdSpec { virtual_size: 4 * MIB + 1024, block_size: bs, unique_id: build::guid_from_seed(8), parent, blocks },
    );
    Arc::new(std::fs::read(path).unwrap())
}

fn vhd_regions(image: &[u8]) -> Vec<Region> {
    let len = image.len() as u64;
    let bat = u64::from_be_bytes(image[512 + 16..512 + 24].try_into().unwrap());
    let first_block = u32::from_be_bytes(image[bat as usize..bat as usize + 4].try_into().unwrap()) as u64 * 512;
    vec![
        Region { name: "footer", start: len - 512, len: 512, checksummed: true, stride: 1 },
        Region { name: "dynamic header", start: 512, len: 1024, checksummed: true, stride: 1 },
        Region { name: "footer copy", start: 0, len: 512, checksummed: true, stride: 3 },
        Region { name: "BAT", start: bat, len: 40, checksummed: false, stride: 1 },
        Region { name: "locator data", start: bat + 512, len: 64, checksummed: false, stride: 1 },
        Region { name: "bitmap", start: first_block, len: 64, checksummed: false, stride: 1 },
    ]
}

#[test]
fn damaged_dynamic_vhds() {
    let image = vhd_image(false);
    let regions = vhd_regions(&image);
    flip_regions(&image, &regions, "dynamic VHD");
    let b: Vec<u64> = regions.iter().flat_map(|r| [r.start, r.start + r.len]).collect();
    truncations(&image, &b, "dynamic VHD");
}

#[test]
fn damaged_differencing_vhds() {
    let image = vhd_image(true);
    let regions = vhd_regions(&image);
    flip_regions(&image, &regions, "differencing VHD");
    let b: Vec<u64> = regions.iter().flat_map(|r| [r.start, r.start + r.len]).collect();
    truncations(&image, &b, "differencing VHD");
}

#[test]
fn damaged_fixed_vhds() {
    // A fixed VHD: data, then the footer of a dynamic builder image with its
    // type and data offset changed (and the checksum resealed).
    let dynamic = vhd_image(false);
    let mut footer = dynamic[dynamic.len() - 512..].to_vec();
    footer[16..24].copy_from_slice(&u64::MAX.to_be_bytes());
    footer[60..64].copy_from_slice(&2u32.to_be_bytes());
    footer[64..68].fill(0);
    let sum = footer.iter().fold(0u32, |a, &b| a.wrapping_add(u32::from(b)));
    footer[64..68].copy_from_slice(&(!sum).to_be_bytes());
    let size = u64::from_be_bytes(footer[48..56].try_into().unwrap());
    let mut bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    bytes.extend(&footer);
    let image = Arc::new(bytes);
    let disk = OpenOptions::new().open_reader(Box::new(image.clone()), "fixed").unwrap();
    assert_eq!(disk.size(), size);
    let len = image.len() as u64;
    flip_regions(
        &image,
        &[Region { name: "footer", start: len - 512, len: 512, checksummed: true, stride: 1 }],
        "fixed VHD",
    );
    truncations(&image, &[len - 512], "fixed VHD");
}

fn vhdx_image(parent: bool, dirty: bool) -> Arc<Vec<u8>> {
    let dir = common::scratch(&format!("damage-vhdx-{parent}-{dirty}-{}", unique()));
    let path = dir.join("d.vhdx");
    let mut blocks = BTreeMap::new();
    blocks.insert(0, Block::Full(vec![0x5a; MIB as usize]));
    blocks.insert(1, Block::Zero);
    if parent {
        let present: Vec<bool> = (0..2048).map(|s| s % 5 < 2).collect();
        blocks.insert(2, Block::Partial { present, data: vec![0x6b; MIB as usize] });
    }
    let parent = parent
        .then(|| ("{11111111-2222-3333-4444-555555555555}".to_string(), None, "p.vhdx".to_string(), String::new()));
    build::write_vhdx(
        &path,
        &VhdxSpec {
            virtual_size: 3 * MIB + 4096,
            block_size: MIB,
            logical_sector: 512,
            data_write_guid: build::guid_from_seed(4),
            parent,
            blocks,
        },
    );
    let mut bytes = std::fs::read(path).unwrap();
    if dirty {
        make_dirty(&mut bytes);
    }
    Arc::new(bytes)
}

/// Sets a log GUID in both headers and writes one log entry that changes
/// block 3 (the short last block) to FULLY_PRESENT at a new place past the
/// end of the file, and zeroes a range: the replay must extend the file.
fn make_dirty(bytes: &mut Vec<u8>) {
    use vhdkit::format::vhdx::log::{LogWrite, build_entry};
    let guid = vhdkit::Guid::new_random();
    let old_len = bytes.len() as u64;
    let new_block = old_len.div_ceil(MIB) * MIB;
    // The BAT page holding entry 3 (no parent: index 3), at 3 MiB.
    let bat_at = 3 * MIB as usize;
    let mut page = Box::new([0u8; 4096]);
    page.copy_from_slice(&bytes[bat_at..bat_at + 4096]);
    page[24..32].copy_from_slice(&(new_block | 6).to_le_bytes());
    let mut sector = Box::new([0x3cu8; 4096]);
    sector[0] = 0x77;
    let writes = vec![
        LogWrite::Data { file_offset: bat_at as u64, sector: page },
        LogWrite::Data { file_offset: new_block, sector },
        LogWrite::Zero { file_offset: new_block + 8192, length: 8192 },
    ];
    let entry = build_entry(5, 0, guid, old_len.div_ceil(MIB) * MIB, new_block + MIB, &writes);
    let log_at = MIB as usize;
    bytes[log_at..log_at + entry.len()].copy_from_slice(&entry);
    for h in [0x10000usize, 0x20000] {
        bytes[h + 48..h + 64].copy_from_slice(&guid.to_mixed_endian());
        bytes[h + 4..h + 8].fill(0);
        let crc = crc32c::crc32c(&bytes[h..h + 4096]);
        bytes[h + 4..h + 8].copy_from_slice(&crc.to_le_bytes());
    }
    // The flushed file size must not exceed the file: pad to it.
    bytes.resize(old_len.div_ceil(MIB) as usize * MIB as usize, 0);
}

fn vhdx_regions(image: &[u8], dirty: bool) -> Vec<Region> {
    let mut r = vec![
        Region { name: "file identifier", start: 0, len: 16, checksummed: false, stride: 1 },
        Region { name: "header 1", start: 0x10000, len: 4096, checksummed: true, stride: 5 },
        Region { name: "header 2", start: 0x20000, len: 4096, checksummed: true, stride: 5 },
        Region { name: "region table 1", start: 0x30000, len: 128, checksummed: true, stride: 1 },
        Region { name: "region table 1 tail", start: 0x30000 + 128, len: 65536 - 128, checksummed: true, stride: 4093 },
        Region { name: "region table 2", start: 0x40000, len: 128, checksummed: true, stride: 1 },
        Region { name: "metadata table", start: 2 * MIB, len: 256, checksummed: false, stride: 1 },
        Region { name: "metadata items", start: 2 * MIB + 0x10000, len: 400, checksummed: false, stride: 1 },
        Region { name: "BAT", start: 3 * MIB, len: 64, checksummed: false, stride: 1 },
    ];
    if image.len() as u64 > 4 * MIB + 3 * MIB {
        // The sector bitmap block of the differencing image (after two blocks).
        r.push(Region { name: "sector bitmap", start: 6 * MIB, len: 64, checksummed: false, stride: 1 });
    }
    if dirty {
        r.push(Region { name: "log entry", start: MIB, len: 4096 * 3, checksummed: true, stride: 7 });
    }
    r
}

fn damage_vhdx(parent: bool, dirty: bool, label: &str) {
    let image = vhdx_image(parent, dirty);
    // The undamaged image opens (and replays) cleanly.
    let disk = OpenOptions::new().open_reader(Box::new(image.clone()), label).unwrap();
    assert_eq!(disk.info().log_replay.is_some(), dirty);
    let regions = vhdx_regions(&image, dirty);
    flip_regions(&image, &regions, label);
    let b: Vec<u64> = regions.iter().flat_map(|r| [r.start, r.start + r.len]).collect();
    truncations(&image, &b, label);
}

#[test]
fn damaged_dynamic_vhdxs() {
    damage_vhdx(false, false, "dynamic VHDX");
}

#[test]
fn damaged_differencing_vhdxs() {
    damage_vhdx(true, false, "differencing VHDX");
}

#[test]
fn damaged_dirty_vhdxs() {
    let image = vhdx_image(false, true);
    // The replay moved block 3 past the old end of the file.
    let disk = OpenOptions::new().open_reader(Box::new(image.clone()), "dirty").unwrap();
    let mut b = [0u8; 2];
    disk.read_at(&mut b, 3 * MIB).unwrap();
    assert_eq!(b, [0x77, 0x3c]);
    damage_vhdx(false, true, "dirty VHDX");
}

/// Counts that claim far more than the file holds are refused before any
/// allocation: a BAT of 2^32 entries in a small file, a 64 TiB disk with a
/// 1 MiB BAT region, 65535 metadata entries, a log claiming 4 GiB.
#[test]
fn hostile_counts_are_refused_without_allocating() {
    // VHD: max_table_entries = 2^32 - 1 and a disk size that needs them all.
    let mut vhd = (*vhd_image(false)).clone();
    let set_size = |f: &mut [u8], size: u64| {
        f[40..48].copy_from_slice(&size.to_be_bytes());
        f[48..56].copy_from_slice(&size.to_be_bytes());
        f[64..68].fill(0);
        let sum = f.iter().fold(0u32, |a, &b| a.wrapping_add(u32::from(b)));
        f[64..68].copy_from_slice(&(!sum).to_be_bytes());
    };
    let len = vhd.len();
    set_size(&mut vhd[len - 512..], u64::from(u32::MAX) * 512 * 1024);
    let h = &mut vhd[512..1536];
    h[28..32].copy_from_slice(&u32::MAX.to_be_bytes());
    h[36..40].fill(0);
    let sum = h.iter().fold(0u32, |a, &b| a.wrapping_add(u32::from(b)));
    h[36..40].copy_from_slice(&(!sum).to_be_bytes());
    let vhd = Arc::new(vhd);
    assert!(matches!(exercise(&vhd, None, vhd.len() as u64, "VHD with a 2^32-entry BAT"), Outcome::Refused));

    // VHDX: a 64 TiB virtual size with 1 MiB blocks needs a 512 MiB BAT.
    let mut vhdx = (*vhdx_image(false, false)).clone();
    let items = 2 * MIB as usize + 0x10000;
    vhdx[items + 8..items + 16].copy_from_slice(&(64u64 << 40).to_le_bytes());
    let vhdx = Arc::new(vhdx);
    assert!(matches!(exercise(&vhdx, None, vhdx.len() as u64, "64 TiB VHDX"), Outcome::Refused));

    // VHDX: 65535 metadata entries.
    let mut many = (*vhdx_image(false, false)).clone();
    many[2 * MIB as usize + 10..2 * MIB as usize + 12].copy_from_slice(&u16::MAX.to_le_bytes());
    let many = Arc::new(many);
    assert!(matches!(exercise(&many, None, many.len() as u64, "65535 metadata entries"), Outcome::Refused));

    // VHDX: a dirty log claiming 4 GiB - 1 MiB in a small file.
    let mut log = (*vhdx_image(false, true)).clone();
    for h in [0x10000usize, 0x20000] {
        log[h + 68..h + 72].copy_from_slice(&(u32::MAX - (MIB as u32 - 1)).to_le_bytes());
        log[h + 4..h + 8].fill(0);
        let crc = crc32c::crc32c(&log[h..h + 4096]);
        log[h + 4..h + 8].copy_from_slice(&crc.to_le_bytes());
    }
    let log = Arc::new(log);
    assert!(matches!(exercise(&log, None, log.len() as u64, "4 GiB log"), Outcome::Refused));
}

/// A BAT pointing every block at the same bytes is refused at open, so a
/// small file cannot describe an unbounded map of distinct data.
#[test]
fn blocks_sharing_bytes_are_refused() {
    let mut vhd = (*vhd_image(false)).clone();
    let bat = 1536;
    let first = vhd[bat..bat + 4].to_vec();
    vhd[bat + 4..bat + 8].copy_from_slice(&first);
    let vhd = Arc::new(vhd);
    match OpenOptions::new().open_reader(Box::new(vhd), "shared VHD") {
        Err(DiskError::Format { source, .. }) => {
            let m = source.to_string();
            assert!(m.contains("overlaps") || m.contains("share bytes"), "{m}")
        }
        other => panic!("expected an overlap error, got {other:?}"),
    }
    let mut vhdx = (*vhdx_image(false, false)).clone();
    let bat = 3 * MIB as usize;
    let first = vhdx[bat..bat + 8].to_vec();
    vhdx[bat + 8..bat + 16].copy_from_slice(&first);
    let vhdx = Arc::new(vhdx);
    match OpenOptions::new().open_reader(Box::new(vhdx), "shared VHDX") {
        Err(DiskError::Format { source, .. }) => {
            let m = source.to_string();
            assert!(m.contains("overlaps") || m.contains("share bytes"), "{m}")
        }
        other => panic!("expected an overlap error, got {other:?}"),
    }
}

/// Runs `f` and returns the largest single allocation it made.
fn largest_allocation(f: impl FnOnce()) -> usize {
    LARGEST.with(|l| l.set(0));
    f();
    LARGEST.with(Cell::get)
}

/// Review finding: a parent locator whose entries all point at the same
/// long strings would decode to gigabytes. Keys and values must now fit the
/// item together.
#[test]
fn a_parent_locator_cannot_multiply_its_strings() {
    use vhdkit::format::vhdx::ParentLocator;
    let count = 4096usize;
    let table_end = 20 + 12 * count;
    let mut item = vec![0u8; (1 << 20) - 64];
    item[..16].copy_from_slice(&vhdkit::format::vhdx::parent_locator::VHDX_LOCATOR_TYPE.to_mixed_endian());
    item[18..20].copy_from_slice(&(count as u16).to_le_bytes());
    for (i, c) in item[table_end..].chunks_exact_mut(2).enumerate() {
        c.copy_from_slice(&(0x41u16 + (i % 2) as u16).to_le_bytes());
    }
    for i in 0..count {
        let e = 20 + 12 * i;
        item[e..e + 4].copy_from_slice(&((table_end + 2 * i) as u32).to_le_bytes());
        item[e + 4..e + 8].copy_from_slice(&(table_end as u32).to_le_bytes());
        item[e + 8..e + 10].copy_from_slice(&65534u16.to_le_bytes());
        item[e + 10..e + 12].copy_from_slice(&65534u16.to_le_bytes());
    }
    let mut result = None;
    let largest = largest_allocation(|| result = Some(ParentLocator::parse(&item, 0)));
    assert!(result.unwrap().is_err());
    assert!(largest < 1 << 20, "allocated {largest} bytes");
}

/// Review finding: a log where every 4 KiB slot looks like an entry made the
/// scan checksum quadratic bytes. Now structure is checked before any CRC,
/// padding is bounded and CRC work has a budget, so both logs below are
/// refused after linear work.
#[test]
fn an_entry_shaped_log_is_refused_after_linear_work() {
    use vhdkit::Guid;
    use vhdkit::format::Structure;
    use vhdkit::format::vhdx::find_active_sequence;
    use vhdkit::format::vhdx::log::LogEntryHeader;
    let guid = Guid::new_random();
    let len = 16usize << 20;
    for entry_length in [len as u32, 64 * 1024 + 4096] {
        let mut log = vec![0u8; len];
        for slot in (0..len).step_by(4096) {
            let h = LogEntryHeader {
                checksum: 0xDEAD_BEEF,
                entry_length,
                tail: 0,
                sequence_number: 1,
                descriptor_count: 0,
                reserved: 0,
                log_guid: guid,
                flushed_file_offset: 1 << 20,
                last_file_offset: 1 << 20,
            };
            log[slot..slot + 64].copy_from_slice(&h.encode());
        }
        assert!(find_active_sequence(&log, 1 << 20, guid).is_err());
    }
}

/// Review finding: a log whose last file offset points far past the file
/// made every "inside the file" check pass. Offsets must be 1 MiB-aligned,
/// regions must lie in bytes the file holds, and a block that only the
/// log's extension holds is reported.
#[test]
fn a_log_cannot_extend_the_file_under_the_regions() {
    use vhdkit::format::vhdx::log::build_entry;
    let image = vhdx_image(false, false);
    let set_log = |bytes: &mut Vec<u8>, last: u64, writes: &[vhdkit::format::vhdx::LogWrite]| {
        let guid = vhdkit::Guid::new_random();
        let entry = build_entry(1, 0, guid, 1 << 20, last, writes);
        bytes[MIB as usize..MIB as usize + entry.len()].copy_from_slice(&entry);
        for h in [0x10000usize, 0x20000] {
            bytes[h + 48..h + 64].copy_from_slice(&guid.to_mixed_endian());
            bytes[h + 4..h + 8].fill(0);
            let crc = crc32c::crc32c(&bytes[h..h + 4096]);
            bytes[h + 4..h + 8].copy_from_slice(&crc.to_le_bytes());
        }
    };
    // An unaligned last file offset: the entry is invalid, so is the log.
    let mut unaligned = (*image).clone();
    set_log(&mut unaligned, (1 << 50) + 12345, &[]);
    assert!(OpenOptions::new().open_reader(Box::new(unaligned), "unaligned").is_err());
    // The BAT region moved to 1 TiB, inside the implied zeros: refused.
    let mut moved = (*image).clone();
    set_log(&mut moved, 1 << 50, &[]);
    for t in [0x30000usize, 0x40000] {
        moved[t + 32..t + 40].copy_from_slice(&(1u64 << 40).to_le_bytes());
        moved[t + 4..t + 8].fill(0);
        let crc = crc32c::crc32c(&moved[t..t + 65536]);
        moved[t + 4..t + 8].copy_from_slice(&crc.to_le_bytes());
    }
    let moved = Arc::new(moved);
    let outcome = exercise(&moved, None, moved.len() as u64, "BAT region in the log's extension");
    assert!(matches!(outcome, Outcome::Refused));
    // A data block only the extension holds opens with a warning.
    let mut past = (*image).clone();
    let bat = 3 * MIB as usize;
    let mut page = Box::new([0u8; 4096]);
    page.copy_from_slice(&past[bat..bat + 4096]);
    page[8..16].copy_from_slice(&((1u64 << 40) | 6).to_le_bytes());
    set_log(
        &mut past,
        (1 << 40) + (1 << 20),
        &[vhdkit::format::vhdx::LogWrite::Data { file_offset: bat as u64, sector: page }],
    );
    let disk = OpenOptions::new().open_reader(Box::new(past), "past").unwrap();
    assert!(
        disk.info().warnings.iter().any(|w| w.contains("past the end of the file's data")),
        "{:?}",
        disk.info().warnings
    );
}

/// Review finding: a sparse VHD whose zeroed BAT puts every tiny block at
/// sector 0 made the overlap check allocate gigabytes before refusing.
#[test]
fn a_zeroed_bat_is_refused_before_building_spans() {
    let mut vhd = (*vhd_image(false)).clone();
    // 512-byte blocks: every BAT entry 0 ("block at sector 0").
    let entries = (vhd.len() as u32 - 4096) / 4;
    let h = &mut vhd[512..1536];
    h[28..32].copy_from_slice(&entries.to_be_bytes());
    h[32..36].copy_from_slice(&512u32.to_be_bytes());
    h[36..40].fill(0);
    let sum = h.iter().fold(0u32, |a, &b| a.wrapping_add(u32::from(b)));
    h[36..40].copy_from_slice(&(!sum).to_be_bytes());
    let len = vhd.len();
    let size = u64::from(entries) * 512;
    let f = &mut vhd[len - 512..];
    f[40..48].copy_from_slice(&size.to_be_bytes());
    f[48..56].copy_from_slice(&size.to_be_bytes());
    f[64..68].fill(0);
    let sum = f.iter().fold(0u32, |a, &b| a.wrapping_add(u32::from(b)));
    f[64..68].copy_from_slice(&(!sum).to_be_bytes());
    vhd[1536..1536 + entries as usize * 4].fill(0);
    let vhd = Arc::new(vhd);
    assert!(matches!(exercise(&vhd, None, vhd.len() as u64, "zeroed BAT"), Outcome::Refused));
}

/// Review finding: a fixed VHD whose guest data begins with an image's
/// signature is still the fixed VHD.
#[test]
fn a_fixed_vhd_holding_an_image_is_the_fixed_vhd() {
    let inner = vhdx_image(false, false);
    let size = (inner.len() as u64).div_ceil(512) * 512;
    let mut bytes = (*inner).clone();
    bytes.resize(size as usize, 0);
    let dynamic = vhd_image(false);
    let mut footer = dynamic[dynamic.len() - 512..].to_vec();
    footer[16..24].copy_from_slice(&u64::MAX.to_be_bytes());
    footer[40..48].copy_from_slice(&size.to_be_bytes());
    footer[48..56].copy_from_slice(&size.to_be_bytes());
    footer[60..64].copy_from_slice(&2u32.to_be_bytes());
    footer[64..68].fill(0);
    let sum = footer.iter().fold(0u32, |a, &b| a.wrapping_add(u32::from(b)));
    footer[64..68].copy_from_slice(&(!sum).to_be_bytes());
    bytes.extend(&footer);
    let disk = OpenOptions::new().open_reader(Box::new(bytes), "fixed holding vhdx").unwrap();
    assert_eq!(disk.info().format, vhdkit::disk::ImageFormat::Vhd);
    assert_eq!(disk.size(), size);
}
