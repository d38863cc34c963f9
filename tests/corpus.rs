//! Every whole image of the real-image corpus, against ground truth we did
//! not compute: qemu's raw view (corpus.json) where qemu is right, and the
//! documented contents in MANIFEST.md where qemu refuses or is wrong
//! (bad checksums, differencing VHDs, dirty logs).

mod common;

use std::path::Path;

use serde_json::Value;
use vhdkit::disk::{ChecksumPolicy, ExtentState, OpenOptions};
use vhdkit::{DiskError, FormatError, VirtualDisk};

fn manifest(corpus: &Path) -> Vec<Value> {
    common::corpus_manifest(corpus)
}

/// Checks our view of `disk` against qemu's as corpus.json records it: every
/// range qemu found non-zero hashes the same, and every byte we hold outside
/// those ranges is zero. Together that is byte-for-byte equality.
fn assert_matches_qemu(disk: &dyn VirtualDisk, image: &Value) {
    let name = image["path"].as_str().unwrap();
    assert_eq!(disk.size(), image["virtual_size"].as_u64().unwrap(), "{name}: virtual size");
    let extents: Vec<(u64, u64, String)> = common::data_extents(image);
    for (off, len, sha) in &extents {
        let mut buf = vec![0u8; *len as usize];
        disk.read_at(&mut buf, *off).unwrap();
        assert_eq!(&common::sha256(&buf), sha, "{name}: bytes {off}..{}", off + len);
    }
    let inside = |a: u64, b: u64| extents.iter().any(|(o, l, _)| *o <= a && b <= o + l);
    let mut buf = vec![0u8; 1 << 20];
    for e in disk.extents(0..disk.size()).unwrap() {
        if e.state != ExtentState::Data {
            continue;
        }
        let mut off = e.offset;
        while off < e.offset + e.length {
            let n = (e.offset + e.length - off).min(buf.len() as u64) as usize;
            disk.read_at(&mut buf[..n], off).unwrap();
            if let Some(first) = buf[..n].iter().position(|&b| b != 0) {
                let last = buf[..n].iter().rposition(|&b| b != 0).unwrap();
                let (a, b) = (off + first as u64, off + last as u64 + 1);
                // Check non-zero bytes run by run, in 4 KiB grains.
                let mut g = a / 4096 * 4096;
                while g < b {
                    let s = g.max(off) - off;
                    let t = (g + 4096).min(off + n as u64) - off;
                    let grain = &buf[s as usize..t as usize];
                    if grain.iter().any(|&x| x != 0) {
                        assert!(
                            inside(g.max(off), g.max(off) + grain.len() as u64),
                            "{name}: non-zero bytes at {g} where qemu reads zeros"
                        );
                    }
                    g += 4096;
                }
            }
            off += n as u64;
        }
    }
}

fn check_all(format: &str, expected: usize) {
    let Some(corpus) = common::corpus() else { return };
    let mut checked = 0;
    for image in manifest(&corpus) {
        let rel = image["path"].as_str().unwrap();
        if image["format"] != format || image.get("virtual_size").is_none() || rel.contains("differential") {
            continue;
        }
        let path = common::corpus_image(&corpus, rel);
        let disk = vhdkit::open(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_matches_qemu(&disk, &image);
        if let Some(sha) = image.get("raw_sha256_qemu").and_then(Value::as_str)
            && disk.size() <= 1 << 30
        {
            assert_eq!(common::sha256_of(&disk), sha, "{rel}: whole raw view");
        }
        checked += 1;
    }
    assert_eq!(checked, expected, "{format} images checked");
}

#[test]
fn every_vhd_matches_qemus_raw_view() {
    check_all("vhd", 9);
}

#[test]
fn every_vhdx_matches_qemus_raw_view() {
    check_all("vhdx", 12);
}

const DFVFS_IMAGE_SHA256: &str = "c6db12a7db548e193c29420c1b4533e4708b20c5033db5cc29ef075d48316d25";

/// dfvfs image.vhd has a hand-edited unique id and a stale footer checksum
/// (both copies): strict opening refuses it with the footer's offset; lenient
/// opening reads the documented ext2 volume.
#[test]
fn a_stale_vhd_checksum_is_refused_strictly_and_read_leniently() {
    let Some(corpus) = common::corpus() else { return };
    let path = corpus.join("vhd/dfvfs/image.vhd");
    match vhdkit::open(&path) {
        Err(DiskError::Format { source: FormatError::BadChecksum { structure, offset, .. }, .. }) => {
            assert_eq!(structure, "VHD footer");
            assert_eq!(offset, std::fs::metadata(&path).unwrap().len() - 512);
        }
        other => panic!("expected a footer checksum error, got {other:?}"),
    }
    let disk = OpenOptions::new().checksums(ChecksumPolicy::Lenient).open(&path).unwrap();
    assert!(disk.info().warnings.iter().any(|w| w.contains("checksum")));
    assert_eq!(common::sha256_of(&disk), DFVFS_IMAGE_SHA256);
}

/// dfvfs image-differential.vhd: a differencing child with no locators whose
/// header names "image.vhd"; its view equals its parent's.
#[test]
fn a_differencing_vhd_finds_its_parent_by_name() {
    let Some(corpus) = common::corpus() else { return };
    let path = corpus.join("vhd/dfvfs/image-differential.vhd");
    let disk = OpenOptions::new().checksums(ChecksumPolicy::Lenient).open(&path).unwrap();
    assert_eq!(disk.depth(), 2);
    let link = disk.info().parent.as_ref().unwrap();
    assert_eq!(link.expected_identity.to_string(), "d49c5c80-350a-4a89-898a-5ad6d10f6578");
    assert_eq!(link.resolved.as_deref(), Some(corpus.join("vhd/dfvfs/image.vhd").as_path()));
    assert_eq!(common::sha256_of(&disk), DFVFS_IMAGE_SHA256);
}

/// dfvfs fat-differential.vhd: a real Windows 10 child whose parent is not in
/// the corpus. Opening names every path tried; its own sectors are exactly
/// those the manifest lists from its bitmap, and hold what qemu reads there.
#[test]
fn a_windows_differencing_vhd_without_its_parent() {
    let Some(corpus) = common::corpus() else { return };
    let path = corpus.join("vhd/dfvfs/fat-differential.vhd");
    match vhdkit::open(&path) {
        Err(DiskError::ParentNotFound { tried, .. }) => {
            assert!(tried.contains(&corpus.join("vhd/dfvfs/fat-parent.vhd")), "{tried:?}");
            // The stored absolute path: mapped to `/` separators, or on
            // Windows tried as stored.
            let stored =
                |p: &std::path::PathBuf| p.to_string_lossy().replace('\\', "/").contains("Projects/dfvfs/test_data");
            assert!(tried.iter().any(stored), "{tried:?}");
        }
        other => panic!("expected ParentNotFound, got {other:?}"),
    }
    let disk = OpenOptions::new().open_parents(false).open(&path).unwrap();
    let own: Vec<(u64, u64)> = disk
        .own_extents(0..disk.size())
        .unwrap()
        .into_iter()
        .filter(|e| e.state == ExtentState::Data)
        .map(|e| (e.offset / 512, e.length / 512))
        .collect();
    // Sectors 134, 143, 152-159, 184-185, 188, 190-192, 194, 196 (MANIFEST.md).
    let want = [(134, 1), (143, 1), (152, 8), (184, 2), (188, 1), (190, 3), (194, 1), (196, 1)];
    assert_eq!(own, want);
    // qemu ignores the parent, so its raw view holds exactly the child's sectors.
    let image = manifest(&corpus).into_iter().find(|i| i["path"] == "vhd/dfvfs/fat-differential.vhd").unwrap();
    for (sector, count) in want {
        let mut ours = vec![0u8; count as usize * 512];
        disk.read_at(&mut ours, sector * 512).unwrap();
        let covered = image["data_extents"].as_array().unwrap().iter().any(|e| {
            let (o, l) = (e[0].as_u64().unwrap(), e[1].as_u64().unwrap());
            o <= sector * 512 && sector * 512 + count * 512 <= o + l
        });
        assert!(covered || ours.iter().all(|&b| b == 0), "sector {sector} holds data qemu does not see");
    }
    let mut one = [0u8; 512];
    assert!(matches!(disk.read_at(&mut one, 0), Err(DiskError::ParentNotOpened { .. })));
}

/// iotest-dirtylog-10G-4M.vhdx: its log holds one entry to replay, which
/// allocates an 18th block; afterwards the disk is 18 MiB of 0xa5 then zeros.
#[test]
fn the_qemu_dirty_log_is_replayed_in_memory() {
    let Some(corpus) = common::corpus() else { return };
    let path = common::corpus_image(&corpus, "vhdx/qemu-iotests/iotest-dirtylog-10G-4M.vhdx.bz2");
    let before = std::fs::read(&path).unwrap();
    let disk = vhdkit::open(&path).unwrap();
    let replay = disk.info().log_replay.clone().expect("the log is dirty");
    assert_eq!((replay.entries, replay.head_sequence), (1, 7));
    let extents = disk.extents(0..disk.size()).unwrap();
    let data: Vec<_> = extents.iter().filter(|e| e.state == ExtentState::Data).collect();
    assert_eq!(data.len(), 1);
    assert_eq!((data[0].offset, data[0].length), (0, 18 << 20));
    let mut buf = vec![0u8; 18 << 20];
    disk.read_at(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|&b| b == 0xa5));
    drop(disk);
    assert!(std::fs::read(&path).unwrap() == before, "the image was modified");
}

/// vhdx-log-replay.vhdx: a log Windows left dirty. After replay the disk has
/// an MBR with two Linux partitions (DiscUtils' LogReplayTest), and the raw
/// view equals qemu's after `qemu-img check -r all` (corpus.json).
#[test]
fn the_windows_dirty_log_is_replayed_in_memory() {
    let Some(corpus) = common::corpus() else { return };
    let path = common::corpus_image(&corpus, "vhdx/discutils/vhdx-log-replay.vhdx.gz");
    let disk = vhdkit::open(&path).unwrap();
    assert!(disk.info().log_replay.is_some());
    let mut mbr = [0u8; 512];
    disk.read_at(&mut mbr, 0).unwrap();
    assert_eq!(&mbr[510..], &[0x55, 0xAA]);
    let partitions: Vec<(u8, u32, u32)> = (0..4)
        .map(|i| {
            let p = &mbr[446 + i * 16..462 + i * 16];
            (p[4], u32::from_le_bytes(p[8..12].try_into().unwrap()), u32::from_le_bytes(p[12..16].try_into().unwrap()))
        })
        .filter(|p| p.0 != 0)
        .collect();
    assert_eq!(partitions, vec![(0x83, 2048, 204800), (0x83, 206848, 409600)]);
}
