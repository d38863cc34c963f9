//! Positional reads: the one way every layer above `format` gets bytes.
//!
//! Parsers never see a file handle. Images are read through [`ReadAt`], which a
//! [`std::fs::File`] (via `pread`), a byte slice (tests and fuzzers), an in-memory
//! overlay (a replayed VHDX log) or, with the `mmap` feature, a memory map all
//! implement. Reads take `&self` so one open image serves many threads at once
//! without a lock or a seek position to share.
//!
//! May import: the standard library only (and `memmap2` for maps).

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

#[cfg(windows)]
pub(crate) mod device;
pub(crate) mod durable;
#[cfg(feature = "mmap")]
mod mmap;
mod overlay;
#[cfg(feature = "mmap")]
pub use mmap::MmapReader;
pub use overlay::LogOverlay;

/// A source of bytes addressed by absolute offset.
///
/// Implementations must be safe to call from several threads at once.
pub trait ReadAt: Send + Sync {
    /// Reads up to `buf.len()` bytes starting at `offset` and returns how many
    /// were read. Returns 0 only at or past the end of the source.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// The size of the source in bytes, as seen when it was opened.
    fn size(&self) -> u64;

    /// The `len` bytes at `offset` without copying them, where the source
    /// already holds them in memory (a memory map, a byte slice); `None`
    /// where it does not or the range is not all inside it. Hashing a chunk
    /// in place saves a copy that costs as much as the hash itself.
    fn bytes_at(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let _ = (offset, len);
        None
    }

    /// Whether [`ReadAt::bytes_at`] can ever return bytes: callers skip the
    /// lookup for sources that never lend (`pread` files, the log overlay).
    fn lends(&self) -> bool {
        false
    }

    /// Fills `buf` from `offset`, failing with `UnexpectedEof` if the source
    /// ends first. Retries short reads and `Interrupted`.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("source ends before byte {offset}"),
                    ));
                }
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A read-only file read with positional reads (`pread` on Unix).
///
/// The size is taken once at open: a file that grows later is read as it was,
/// and one that shrinks produces `UnexpectedEof`, never a signal.
#[derive(Debug)]
pub struct FileReader {
    file: File,
    size: u64,
}

impl FileReader {
    /// Opens `path` read-only. A backup tool must never write to its source.
    ///
    /// Only regular files are accepted, and the open itself cannot block: a
    /// FIFO or device named by a hostile parent locator is refused rather
    /// than hanging the caller.
    ///
    /// On Windows the file is opened sharing read, write and delete, so an
    /// image another process holds open for writing (Hyper-V holds a running
    /// VM's disks so, and lets others read) can still be read, and our open
    /// never locks anyone out. A holder that shares nothing makes the open
    /// fail with the OS's sharing violation (error 32), named in the error.
    pub fn open(path: &Path) -> io::Result<Self> {
        let mut options = File::options();
        options.read(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.custom_flags(libc::O_NONBLOCK);
        }
        #[cfg(windows)]
        {
            use std::os::windows::fs::OpenOptionsExt;
            use windows_sys::Win32::Storage::FileSystem::{FILE_SHARE_DELETE, FILE_SHARE_READ, FILE_SHARE_WRITE};
            options.share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE);
        }
        let file = options.open(path)?;
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
        }
        Self::new(file)
    }

    /// Opens `path` read-only as a regular file or a block device (a
    /// snapshot device a host hands a backup: `/dev/...`, `\\.\PhysicalDriveN`).
    /// Only for a path the caller chose to read raw, never for a name
    /// found inside an image. A device's size is where a seek to its end
    /// lands, since its metadata says 0.
    pub fn open_device(path: &Path) -> io::Result<Self> {
        let file = File::options().read(true).open(path)?;
        #[cfg(windows)]
        if device::is_device_path(path) {
            let size = device::length(&file)?;
            return Ok(Self { file, size });
        }
        let meta = file.metadata()?;
        #[cfg(unix)]
        let device = {
            use std::os::unix::fs::FileTypeExt;
            meta.file_type().is_block_device()
        };
        #[cfg(not(unix))]
        let device = !meta.is_file() && !meta.is_dir();
        if meta.is_file() {
            return Self::new(file);
        }
        if !device {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "neither a regular file nor a block device"));
        }
        let size = {
            use std::io::Seek;
            (&file).seek(io::SeekFrom::End(0))?
        };
        Ok(Self { file, size })
    }

    /// Wraps an already open file.
    pub fn new(file: File) -> io::Result<Self> {
        let size = file.metadata()?.len();
        Ok(Self { file, size })
    }

    /// The underlying file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl ReadAt for FileReader {
    #[cfg(unix)]
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        self.file.read_at(buf, offset)
    }

    #[cfg(windows)]
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        use std::os::windows::fs::FileExt;
        self.file.seek_read(buf, offset)
    }

    fn size(&self) -> u64 {
        self.size
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        let Some(src) = self.get(start..) else {
            return Ok(0);
        };
        let n = src.len().min(buf.len());
        buf[..n].copy_from_slice(&src[..n]);
        Ok(n)
    }

    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn bytes_at(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(offset).ok()?;
        self.get(start..start.checked_add(len)?)
    }

    fn lends(&self) -> bool {
        true
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.as_slice().read_at(buf, offset)
    }

    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn bytes_at(&self, offset: u64, len: usize) -> Option<&[u8]> {
        self.as_slice().bytes_at(offset, len)
    }

    fn lends(&self) -> bool {
        true
    }
}

/// Shared and boxed readers read as the reader they hold.
macro_rules! forward_read_at {
    ($($holder:ty),*) => {
        $(
            impl<T: ReadAt + ?Sized> ReadAt for $holder {
                fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
                    (**self).read_at(buf, offset)
                }

                fn size(&self) -> u64 {
                    (**self).size()
                }

                fn bytes_at(&self, offset: u64, len: usize) -> Option<&[u8]> {
                    (**self).bytes_at(offset, len)
                }

                fn lends(&self) -> bool {
                    (**self).lends()
                }
            }
        )*
    };
}

forward_read_at!(Arc<T>, Box<T>, &T);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_reads_stop_at_the_end() {
        let data = [1u8, 2, 3, 4];
        let mut buf = [0u8; 3];
        assert_eq!(data[..].read_at(&mut buf, 2).unwrap(), 2);
        assert_eq!(&buf[..2], &[3, 4]);
        assert_eq!(data[..].read_at(&mut buf, 4).unwrap(), 0);
        assert_eq!(data[..].read_at(&mut buf, u64::MAX).unwrap(), 0);
        let err = data[..].read_exact_at(&mut buf, 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn file_reads_match_the_bytes_written() {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut tmp, b"hello, positional world").unwrap();
        let reader = FileReader::open(tmp.path()).unwrap();
        assert_eq!(reader.size(), 23);
        let mut buf = [0u8; 10];
        reader.read_exact_at(&mut buf, 7).unwrap();
        assert_eq!(&buf, b"positional");
    }
}
