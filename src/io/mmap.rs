//! Memory-mapped reads (feature `mmap`).
//!
//! Faster than `pread` for many small reads, but a file truncated by another
//! process while mapped raises SIGBUS on access, which no error type can report.
//! Use it only for files nothing else writes.

use std::io;
use std::path::Path;

use memmap2::Mmap;

use super::ReadAt;

/// A read-only memory map of a whole file.
#[derive(Debug)]
pub struct MmapReader {
    map: Mmap,
}

impl MmapReader {
    /// Maps `path` read-only.
    pub fn open(path: &Path) -> io::Result<Self> {
        // Opened like every image: non-blocking, regular files only, so a
        // FIFO named by a parent locator cannot hang the open.
        let reader = super::FileReader::open(path)?;
        // SAFETY: the map is read-only; the caller accepts (see the module doc)
        // that truncation by another process is outside what Rust can guard.
        let map = unsafe { Mmap::map(reader.file())? };
        Ok(Self { map })
    }
}

impl ReadAt for MmapReader {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.map[..].read_at(buf, offset)
    }

    fn size(&self) -> u64 {
        self.map.len() as u64
    }

    fn bytes_at(&self, offset: u64, len: usize) -> Option<&[u8]> {
        self.map[..].bytes_at(offset, len)
    }

    fn lends(&self) -> bool {
        true
    }
}
