//! The qemu oracle: images created and written by qemu-img and qemu-io, read
//! by us, compared byte for byte with `qemu-img convert -O raw`, and our
//! allocation map compared with the allocation the writes must have caused.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_same_as_raw, run};
use vhdkit::{Extent, ExtentState};

const MIB: u64 = 1 << 20;

/// One qemu-io write: a pattern byte, or `None` for a zero write (`write -z`).
#[derive(Debug, Clone, Copy)]
struct Write {
    offset: u64,
    len: u64,
    pattern: Option<u8>,
}

/// Scattered writes touching the first and last sectors, a block boundary,
/// a whole-block zero write and zeros over earlier data.
fn writes(size: u64, block: u64) -> Vec<Write> {
    let mut w = vec![
        Write { offset: 0, len: 512, pattern: Some(0x11) },
        Write { offset: size - 512, len: 512, pattern: Some(0x22) },
    ];
    if size > block + 8192 {
        w.push(Write { offset: block - 4096, len: 8192, pattern: Some(0x33) });
        w.push(Write { offset: block + 1024, len: 2048, pattern: None });
    }
    if size > 3 * block {
        w.push(Write { offset: 2 * block, len: block, pattern: None });
        w.push(Write { offset: 2 * block + 3 * 512, len: 3 * 512, pattern: Some(0x44) });
    }
    let mid = (size / 2) / 4096 * 4096;
    w.push(Write { offset: mid, len: 16384, pattern: Some(0x55) });
    w.push(Write { offset: mid + 4096, len: 4096, pattern: None });
    w
}

fn qemu_io(format: &str, image: &Path, writes: &[Write]) {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", format]);
    for w in writes {
        let c = match w.pattern {
            Some(p) => format!("write -P {p:#04x} {} {}", w.offset, w.len),
            None => format!("write -z {} {}", w.offset, w.len),
        };
        cmd.args(["-c", &c]);
    }
    cmd.arg(image);
    run(&mut cmd);
}

fn qemu_size(format: &str, image: &Path) -> u64 {
    let out = run(Command::new("qemu-img").args(["info", "--output=json", "-f", format]).arg(image));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["virtual-size"].as_u64().unwrap()
}

fn qemu_raw(format: &str, image: &Path) -> PathBuf {
    let raw = image.with_extension("raw");
    run(Command::new("qemu-img").args(["convert", "-f", format, "-O", "raw"]).arg(image).arg(&raw));
    raw
}

/// The extents a disk of `size` bytes in `block`-sized blocks must report
/// when the written blocks hold data and the others are in `untouched` state.
fn expected_map(size: u64, block: u64, writes: &[Write], untouched: ExtentState) -> Vec<Extent> {
    let blocks = size.div_ceil(block);
    let mut out: Vec<Extent> = Vec::new();
    for b in 0..blocks {
        let (start, end) = (b * block, ((b + 1) * block).min(size));
        let written = writes.iter().any(|w| w.offset < end && start < w.offset + w.len);
        let state = if written { ExtentState::Data } else { untouched };
        match out.last_mut() {
            Some(last) if last.state == state => last.length += end - start,
            _ => out.push(Extent { offset: start, length: end - start, state, depth: 0 }),
        }
    }
    out
}

#[test]
fn vpc_images_match_qemu() {
    if !common::have_qemu() {
        return;
    }
    let dir = common::scratch("qemu-vpc");
    let mut n = 0;
    for subformat in ["dynamic", "fixed"] {
        for force_size in ["off", "on"] {
            for requested in [10 * MIB + 512, 7 * MIB + 7 * 512, 100 * MIB] {
                let image = dir.join(format!("{subformat}-{force_size}-{requested}.vhd"));
                run(Command::new("qemu-img")
                    .args(["create", "-q", "-f", "vpc", "-o"])
                    .arg(format!("subformat={subformat},force_size={force_size}"))
                    .arg(&image)
                    .arg(requested.to_string()));
                let size = qemu_size("vpc", &image);
                let w = writes(size, 2 * MIB);
                qemu_io("vpc", &image, &w);
                let disk = vhdkit::open(&image).unwrap_or_else(|e| panic!("{}: {e}", image.display()));
                assert_same_as_raw(&disk, &qemu_raw("vpc", &image));
                let map = disk.extents(0..disk.size()).unwrap();
                let want = if subformat == "fixed" {
                    vec![Extent { offset: 0, length: size, state: ExtentState::Data, depth: 0 }]
                } else {
                    expected_map(size, 2 * MIB, &w, ExtentState::Unallocated)
                };
                assert_eq!(map, want, "{}", image.display());
                n += 1;
            }
        }
    }
    assert_eq!(n, 12);
}

fn vhdx_case(dir: &Path, subformat: &str, block_mib: u64, log_mib: u64, zero_state: bool, size: u64) {
    let block = block_mib * MIB;
    let bsz = if zero_state { "on" } else { "off" };
    let image = dir.join(format!("{subformat}-b{block_mib}-l{log_mib}-z{bsz}-{size}.vhdx"));
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "vhdx", "-o"])
        .arg(format!("subformat={subformat},block_size={block},log_size={},block_state_zero={bsz}", log_mib * MIB))
        .arg(&image)
        .arg(size.to_string()));
    let w = writes(size, block);
    qemu_io("vhdx", &image, &w);
    let disk = vhdkit::open(&image).unwrap_or_else(|e| panic!("{}: {e}", image.display()));
    assert_eq!(disk.info().block_size, Some(block as u32));
    assert_same_as_raw(&disk, &qemu_raw("vhdx", &image));
    let map = disk.extents(0..disk.size()).unwrap();
    let want = match (subformat, zero_state) {
        ("fixed", false) => vec![Extent { offset: 0, length: size, state: ExtentState::Data, depth: 0 }],
        (_, true) => expected_map(size, block, &w, ExtentState::Zero),
        (_, false) => expected_map(size, block, &w, ExtentState::Unallocated),
    };
    assert_eq!(map, want, "{}", image.display());
    std::fs::remove_file(image.with_extension("raw")).unwrap();
}

/// Every block size with both log sizes, both zero-block modes and both
/// subformats, on virtual sizes that end inside a block.
fn vhdx_matrix(name: &str, block_sizes: &[u64]) {
    if !common::have_qemu() {
        return;
    }
    let dir = common::scratch(name);
    for &b in block_sizes {
        let size = if b >= 32 { b * MIB + 7 * 512 } else { 3 * b * MIB + 7 * 512 };
        vhdx_case(&dir, "dynamic", b, 1, true, size);
        vhdx_case(&dir, "dynamic", b, 4, false, size);
        vhdx_case(&dir, "fixed", b, 1, false, size);
        vhdx_case(&dir, "fixed", b, 4, true, size);
    }
}

#[test]
fn vhdx_small_blocks_match_qemu() {
    vhdx_matrix("qemu-vhdx-small", &[1, 2, 8]);
}

#[test]
fn vhdx_large_blocks_match_qemu() {
    vhdx_matrix("qemu-vhdx-large", &[32, 256]);
}

/// Makes qemu leave a dirty log: blkdebug fails the BAT-page write that
/// follows the log write, so the header's LogGuid stays set and the log holds
/// the only copy of the BAT update. Returns false if this qemu cannot.
fn make_dirty(image: &Path, log_mib: u64, block: u64, size: u64, writes: &[Write]) -> bool {
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "vhdx", "-o"])
        .arg(format!("block_size={block},log_size={}", log_mib * MIB))
        .arg(image)
        .arg(size.to_string()));
    // The BAT follows the log, which starts at 1 MiB; blkdebug counts 512-byte sectors.
    let bat_sector = (MIB + log_mib * MIB) / 512;
    let spec = serde_json::json!({
        "driver": "vhdx",
        "file": {
            "driver": "blkdebug",
            "inject-error": [{"event": "pwritev", "iotype": "write", "sector": bat_sector, "errno": 5, "once": true}],
            "image": {"driver": "file", "filename": image},
        }
    });
    let mut cmd = Command::new("qemu-io");
    for w in writes {
        cmd.args(["-c", &format!("write -P {:#04x} {} {}", w.pattern.unwrap_or(0), w.offset, w.len)]);
    }
    cmd.arg(format!("json:{spec}"));
    let _ = cmd.output();
    // qemu refuses a read-only open of a dirty image: that is how we know.
    let info = Command::new("qemu-img").args(["info", "-f", "vhdx"]).arg(image).output().unwrap();
    !info.status.success() && String::from_utf8_lossy(&info.stderr).contains("replay")
}

#[test]
fn dirty_logs_replay_like_qemu_check_repair() {
    if !common::have_qemu() {
        return;
    }
    let dir = common::scratch("qemu-dirty");
    for log_mib in [1, 4] {
        let image = dir.join(format!("dirty-l{log_mib}.vhdx"));
        let w = [
            Write { offset: 0, len: 4096, pattern: Some(0x5a) },
            Write { offset: 3 * MIB + 512, len: 1024, pattern: Some(0x6b) },
        ];
        assert!(make_dirty(&image, log_mib, MIB, 16 * MIB, &w), "qemu did not leave a dirty log");
        let before = std::fs::read(&image).unwrap();
        let disk = vhdkit::open(&image).unwrap();
        let replay = disk.info().log_replay.clone().expect("log replayed");
        assert!(replay.writes >= 1);
        // Without the replay, block 0 would read as zeros (the on-disk BAT says ZERO).
        let mut first = [0u8; 4096];
        disk.read_at(&mut first, 0).unwrap();
        assert!(first.iter().all(|&b| b == 0x5a));
        assert_eq!(std::fs::read(&image).unwrap(), before, "the image was modified");
        // qemu's own replay, on a copy.
        let copy = dir.join(format!("repaired-l{log_mib}.vhdx"));
        std::fs::copy(&image, &copy).unwrap();
        run(Command::new("qemu-img").args(["check", "-q", "-r", "all", "-f", "vhdx"]).arg(&copy));
        assert_same_as_raw(&disk, &qemu_raw("vhdx", &copy));
    }
}

/// A log entry torn by a crash (header written, data sector not): the spec
/// says the file is corrupt. qemu ignores such a log; we refuse it, naming
/// the log's offset, rather than guess.
#[test]
fn a_torn_log_is_reported_as_corrupt() {
    if !common::have_qemu() {
        return;
    }
    let dir = common::scratch("qemu-torn");
    let image = dir.join("torn.vhdx");
    run(Command::new("qemu-img").args(["create", "-q", "-f", "vhdx", "-o", "block_size=1M"]).arg(&image).arg("16M"));
    // Fail the log's data sector write (log at 1 MiB; its second sector).
    let spec = serde_json::json!({
        "driver": "vhdx",
        "file": {
            "driver": "blkdebug",
            "inject-error": [{"event": "pwritev", "iotype": "write", "sector": (MIB + 4096) / 512, "errno": 5, "once": true}],
            "image": {"driver": "file", "filename": image},
        }
    });
    let _ = Command::new("qemu-io").args(["-c", "write -P 0x5a 0 4k"]).arg(format!("json:{spec}")).output();
    match vhdkit::open(&image) {
        Err(vhdkit::DiskError::Format { source, .. }) => {
            assert_eq!(source.offset(), Some(MIB), "{source}");
            assert!(source.to_string().contains("log"), "{source}");
        }
        other => panic!("expected a corrupt log, got {other:?}"),
    }
}
