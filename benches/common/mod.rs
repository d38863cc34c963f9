//! Fixtures shared by the benchmarks: generated disks and scratch folders.
#![allow(dead_code)]

use std::ops::Range;
use std::path::{Path, PathBuf};

use vhdkit::disk::{DiskInfo, Extent, ExtentState, ImageFormat, OpenOptions, Subformat, VirtualDisk};
use vhdkit::export::{Target, export};
use vhdkit::format::Guid;

/// Bytes of the dense benchmark disk: 256 MiB by default, small enough for
/// CI's quick runs; `VHDKIT_BENCH_DENSE_MIB=2048` measures the 2 GiB disk
/// the targets are stated for.
pub fn dense() -> usize {
    std::env::var("VHDKIT_BENCH_DENSE_MIB").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(256) << 20
}

/// A scratch folder for this benchmark run, under `CARGO_TARGET_TMPDIR`
/// when set, else the system's.
pub fn scratch(name: &str) -> PathBuf {
    let base = std::env::var_os("VHDKIT_BENCH_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("vhdkit-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Incompressible, non-repeating bytes.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = vec![0u8; len];
    for c in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
    out
}

/// Half noise, half text: something zstd can shrink.
pub fn mixed(seed: u64, len: usize) -> Vec<u8> {
    let mut out = noise(seed, len);
    for (i, c) in out.chunks_mut(64 * 1024).enumerate() {
        if i % 2 == 1 {
            for (j, b) in c.iter_mut().enumerate() {
                *b = b"backup software keeps small copies of large disks "[j % 50];
            }
        }
    }
    out
}

/// Writes `bytes` as a dynamic VHDX and a raw file; returns both paths.
pub fn dense_images(dir: &Path, bytes: &[u8]) -> (PathBuf, PathBuf) {
    let raw = dir.join("dense.raw");
    std::fs::write(&raw, bytes).unwrap();
    let vhdx = dir.join("dense.vhdx");
    let disk = OpenOptions::new().open_raw(&raw).unwrap();
    export(&disk, &vhdx, Target::Vhdx, &no_sync()).unwrap();
    (vhdx, raw)
}

/// A huge disk with a few megabytes of data: what a fresh 64 TiB VM disk is.
pub struct SparseDisk {
    info: DiskInfo,
    data: Vec<(u64, Vec<u8>)>,
}

impl SparseDisk {
    pub fn new(size: u64) -> SparseDisk {
        let info = DiskInfo {
            format: ImageFormat::Raw,
            subformat: Subformat::Dynamic,
            virtual_size: size,
            block_size: None,
            logical_sector_size: 512,
            physical_sector_size: 4096,
            disk_id: Guid::new_random(),
            identity: Guid::new_random(),
            file_size: 0,
            path: PathBuf::from("sparse"),
            creator: String::new(),
            parent: None,
            log_replay: None,
            warnings: Vec::new(),
        };
        let data = [0, size / 2, size - (1 << 20)].into_iter().map(|at| (at, noise(at, 1 << 20))).collect();
        SparseDisk { info, data }
    }
}

impl VirtualDisk for SparseDisk {
    fn info(&self) -> &DiskInfo {
        &self.info
    }

    fn extents(&self, range: Range<u64>) -> vhdkit::disk::Result<Vec<Extent>> {
        let mut out = Vec::new();
        let mut at = range.start;
        for (start, bytes) in &self.data {
            let (s, e) = (*start, start + bytes.len() as u64);
            if e <= range.start || s >= range.end {
                continue;
            }
            let (s, e) = (s.max(range.start), e.min(range.end));
            if s > at {
                out.push(Extent { offset: at, length: s - at, state: ExtentState::Unallocated, depth: 0 });
            }
            out.push(Extent { offset: s, length: e - s, state: ExtentState::Data, depth: 0 });
            at = e;
        }
        if at < range.end {
            out.push(Extent { offset: at, length: range.end - at, state: ExtentState::Unallocated, depth: 0 });
        }
        Ok(out)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> vhdkit::disk::Result<()> {
        buf.fill(0);
        let end = offset + buf.len() as u64;
        for (start, bytes) in &self.data {
            let (s, e) = (*start, start + bytes.len() as u64);
            let (a, b) = (s.max(offset), e.min(end));
            if a < b {
                buf[(a - offset) as usize..(b - offset) as usize]
                    .copy_from_slice(&bytes[(a - s) as usize..(b - s) as usize]);
            }
        }
        Ok(())
    }
}

/// Hashes `bytes` as `chunk`-sized pieces on every core, as a backup must:
/// the baseline a backup's throughput is measured against.
pub fn blake3_all_cores(bytes: &[u8], chunk: usize) -> u8 {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let per = bytes.len().div_ceil(threads).div_ceil(chunk) * chunk;
    std::thread::scope(|s| {
        let handles: Vec<_> = bytes
            .chunks(per)
            .map(|part| s.spawn(move || part.chunks(chunk).fold(0u8, |acc, c| acc ^ blake3::hash(c).as_bytes()[0])))
            .collect();
        handles.into_iter().fold(0u8, |acc, h| acc ^ h.join().unwrap())
    })
}

/// Export options that skip the final flush (benchmarks measure the writes).
pub fn no_sync() -> vhdkit::export::ExportOptions {
    let mut o = vhdkit::export::ExportOptions::default();
    o.sync = false;
    o
}

/// Store settings with a chunk and pack size.
pub fn init_options(chunk_size: u32, pack_size: u64) -> vhdkit::store::InitOptions {
    let mut o = vhdkit::store::InitOptions::default();
    o.chunk_size = chunk_size;
    o.pack_size = pack_size;
    o
}

/// A full backup named `name`.
pub fn full(name: &str) -> vhdkit::store::BackupOptions {
    let mut o = vhdkit::store::BackupOptions::new(name);
    o.full = true;
    o
}

/// Positional reads and writes on any platform: the Unix trait, or the
/// same two methods over Windows' `seek_read`/`seek_write`.
#[cfg(unix)]
pub use std::os::unix::fs::FileExt;

/// Positional reads and writes on Windows, named as on Unix.
#[cfg(windows)]
pub trait FileExt {
    /// Fills `buf` from `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()>;
}

#[cfg(windows)]
impl FileExt for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match std::os::windows::fs::FileExt::seek_read(self, &mut buf[done..], offset + done as u64)? {
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                n => done += n,
            }
        }
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            done += std::os::windows::fs::FileExt::seek_write(self, &buf[done..], offset + done as u64)?;
        }
        Ok(())
    }
}
