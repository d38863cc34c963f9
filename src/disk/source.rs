//! An image file's bytes plus its name, with reads that turn failures into
//! [`DiskError`]s naming the file and the offset.

use std::path::{Path, PathBuf};

use super::error::{DiskError, Result};
use crate::format::FormatError;
use crate::io::ReadAt;

/// One image's byte source.
pub(crate) struct Source {
    reader: Box<dyn ReadAt>,
    path: PathBuf,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").field("path", &self.path).field("size", &self.reader.size()).finish()
    }
}

impl Source {
    pub(crate) fn new(reader: Box<dyn ReadAt>, path: PathBuf) -> Self {
        Source { reader, path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn size(&self) -> u64 {
        self.reader.size()
    }

    /// Replaces the reader (a replayed log's overlay over the file).
    pub(crate) fn replace_reader(&mut self, f: impl FnOnce(Box<dyn ReadAt>) -> Box<dyn ReadAt>) {
        let old = std::mem::replace(&mut self.reader, Box::new(Vec::new()));
        self.reader = f(old);
    }

    /// The file's bytes at `offset`, borrowed, where the reader holds them
    /// in memory (see [`ReadAt::bytes_at`]).
    pub(crate) fn bytes_at(&self, offset: u64, len: usize) -> Option<&[u8]> {
        self.reader.bytes_at(offset, len)
    }

    /// Whether the reader can lend bytes at all.
    pub(crate) fn lends(&self) -> bool {
        self.reader.lends()
    }

    /// Fills `buf` from `offset`.
    pub(crate) fn read_exact(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.reader.read_exact_at(buf, offset).map_err(|e| DiskError::io(&self.path, offset, e))
    }

    /// Reads `len` bytes of `structure` at `offset`, first checking that they
    /// lie inside the source, so a length taken from a damaged header can
    /// never make us allocate more than the file holds.
    pub(crate) fn read_structure(&self, offset: u64, len: u64, structure: &'static str) -> Result<Vec<u8>> {
        let size = self.size();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(DiskError::format(
                &self.path,
                FormatError::Truncated { structure, offset, needed: len, available: size.saturating_sub(offset) },
            ));
        }
        let len = usize::try_from(len).map_err(|_| {
            DiskError::format(
                &self.path,
                FormatError::unsupported(format!("a {len}-byte {structure} on this platform")),
            )
        })?;
        let mut buf = vec![0u8; len];
        self.read_exact(&mut buf, offset)?;
        Ok(buf)
    }

    /// Wraps a format error with this file's name.
    pub(crate) fn err(&self, e: FormatError) -> DiskError {
        DiskError::format(&self.path, e)
    }
}

/// Scans a sector bitmap stored in `source` at `bitmap_offset` for the run of
/// equal bits starting at bit `start`, at most `max` bits long. Reads the
/// bitmap in 512-byte windows on the stack: no allocation per call.
pub(crate) fn scan_bitmap(
    source: &Source,
    bitmap_offset: u64,
    order: crate::format::bits::BitOrder,
    start: u64,
    max: u64,
) -> Result<(bool, u64)> {
    const WINDOW: u64 = 512;
    let mut buf = [0u8; WINDOW as usize];
    let mut value = None;
    let mut len = 0u64;
    while len < max {
        let bit = start + len;
        let first_byte = bit / 8;
        let skip = bit % 8;
        let bytes = (skip + (max - len)).div_ceil(8).min(WINDOW);
        let window = &mut buf[..bytes as usize];
        source.read_exact(window, bitmap_offset + first_byte)?;
        let bits = (bytes * 8 - skip).min(max - len);
        let (v, n) = crate::format::bits::run_at(window, order, skip, bits);
        match value {
            None => value = Some(v),
            Some(prev) if prev != v => break,
            Some(_) => {}
        }
        len += n;
        if n < bits {
            break;
        }
    }
    Ok((value.unwrap_or(false), len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::bits::BitOrder;

    #[test]
    fn bitmap_runs_cross_windows() {
        // 2048 set bits (256 bytes) starting at bit 4096 of a bitmap at byte 100.
        let mut file = vec![0u8; 100 + 2048];
        file[100 + 512..100 + 768].fill(0xFF);
        let src = Source::new(Box::new(file), "t".into());
        assert_eq!(scan_bitmap(&src, 100, BitOrder::MsbFirst, 0, 8192).unwrap(), (false, 4096));
        assert_eq!(scan_bitmap(&src, 100, BitOrder::MsbFirst, 4096, 8192).unwrap(), (true, 2048));
        assert_eq!(scan_bitmap(&src, 100, BitOrder::MsbFirst, 4100, 10).unwrap(), (true, 10));
        assert_eq!(scan_bitmap(&src, 100, BitOrder::LsbFirst, 6144, 1000).unwrap(), (false, 1000));
        // A run that starts mid-window and crosses into the next window.
        assert_eq!(scan_bitmap(&src, 100, BitOrder::MsbFirst, 4000, 5000).unwrap(), (false, 96));
        assert_eq!(scan_bitmap(&src, 100, BitOrder::MsbFirst, 6000, 3000).unwrap(), (true, 144));
    }
}
