//! A file system opened on a partition: one type over the three readers,
//! with every call behind a guard that turns a reader crate's panic into
//! [`FsError::Panicked`] and closes the volume.

use std::cell::RefCell;
use std::io::{self, Read, Seek, SeekFrom};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use super::device::Device;
use super::error::{FsError, Result};
use super::ext_volume::ExtVolume;
use super::fat_volume::FatVolume;
use super::ntfs_volume::NtfsVolume;
use super::partition::{Partition, partitions};
use super::path::{FsPath, parse};
use super::probe::{PROBE_BYTES, probe};
use super::{DirEntry, FsKind, Metadata};
use crate::disk::VirtualDisk;

enum Reader {
    Ntfs(NtfsVolume),
    Ext(ExtVolume),
    Fat(FatVolume),
}

/// An open file system. Paths are absolute or relative to the root, `/`
/// separated (`\` too on NTFS and FAT); on NTFS `file:name` reads a
/// named stream. Lookups are case-insensitive on NTFS and FAT.
pub struct Volume {
    kind: FsKind,
    partition: Partition,
    device: Device,
    reader: Reader,
    /// The message of a reader panic, after which the volume is closed.
    closed: RefCell<Option<String>>,
}

impl Volume {
    /// Opens the file system on `partition` of `disk`.
    pub fn open(disk: Arc<dyn VirtualDisk>, partition: &Partition) -> Result<Volume> {
        let spec = partition.number.to_string();
        let end = partition.offset.checked_add(partition.length).filter(|&e| e <= disk.size());
        if end.is_none() {
            return Err(FsError::Partition { spec, reason: format!("it ends past the disk's {} bytes", disk.size()) });
        }
        let device = Device::new(disk, partition.offset, partition.length);
        let kind = match partition.filesystem {
            Some(kind) => kind,
            None => {
                let mut head = vec![0u8; PROBE_BYTES.min(partition.length as usize)];
                device.read_exact_at(&mut head, 0).map_err(|e| device.fail(FsKind::Unreadable("?"), "", e))?;
                probe(&head)
                    .ok_or_else(|| FsError::Partition { spec, reason: "it holds no file system vhdkit knows".into() })?
            }
        };
        device.set_budget(read_budget(kind));
        let guard = |f: &mut dyn FnMut() -> Result<Reader>| match catch_unwind(AssertUnwindSafe(f)) {
            Ok(r) => r,
            Err(panic) => Err(FsError::Panicked { fs: kind, path: "/".into(), message: message(&*panic) }),
        };
        let reader = match kind {
            FsKind::Ntfs => guard(&mut || NtfsVolume::open(device.clone()).map(Reader::Ntfs))?,
            FsKind::Ext { .. } => guard(&mut || ExtVolume::open(device.clone(), kind).map(Reader::Ext))?,
            FsKind::Fat { .. } => guard(&mut || FatVolume::open(device.clone(), kind).map(Reader::Fat))?,
            FsKind::Unreadable(name) => {
                return Err(FsError::Unsupported { fs: kind, path: "/".into(), what: format!("a {name} volume") });
            }
        };
        let kind = match &reader {
            Reader::Fat(f) => f.kind(),
            _ => kind,
        };
        Ok(Volume { kind, partition: partition.clone(), device, reader, closed: RefCell::new(None) })
    }

    /// Opens the file system `part` names on `disk`: a partition number
    /// (0 for a bare whole-disk file system), a GPT partition name or a
    /// volume label (without case); with `None`, the disk's only readable
    /// file system (an error lists them when there are several).
    pub fn open_spec(disk: Arc<dyn VirtualDisk>, part: Option<&str>) -> Result<Volume> {
        let table = partitions(&*disk)?;
        let readable: Vec<&Partition> = table
            .partitions
            .iter()
            .filter(|p| matches!(p.filesystem, Some(k) if !matches!(k, FsKind::Unreadable(_))))
            .collect();
        let list = || {
            let names: Vec<String> = table
                .partitions
                .iter()
                .map(|p| {
                    let fs = p.filesystem.map_or("no file system".to_string(), |k| k.to_string());
                    let name =
                        p.name.as_deref().filter(|n| !n.is_empty()).map(|n| format!(" \"{n}\"")).unwrap_or_default();
                    format!("{}{name} ({fs})", p.number)
                })
                .collect();
            if names.is_empty() {
                "the disk has no partitions".to_string()
            } else {
                format!("partitions: {}", names.join(", "))
            }
        };
        let Some(spec) = part else {
            return match readable[..] {
                [one] => Volume::open(disk, one),
                [] => Err(FsError::Partition {
                    spec: String::new(),
                    reason: format!("no readable file system; {}", list()),
                }),
                _ => Err(FsError::Partition {
                    spec: String::new(),
                    reason: format!("several file systems, name one as PART:PATH; {}", list()),
                }),
            };
        };
        if let Ok(n) = spec.parse::<u32>() {
            let p = table.partitions.iter().find(|p| p.number == n);
            let p = p.ok_or_else(|| FsError::Partition {
                spec: spec.into(),
                reason: format!("no such partition; {}", list()),
            })?;
            return Volume::open(disk, p);
        }
        if let Some(p) =
            table.partitions.iter().find(|p| p.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(spec)))
        {
            return Volume::open(disk, p);
        }
        for p in readable {
            if let Ok(v) = Volume::open(disk.clone(), p)
                && v.label().is_some_and(|l| l.eq_ignore_ascii_case(spec))
            {
                return Ok(v);
            }
        }
        Err(FsError::Partition {
            spec: spec.into(),
            reason: format!("no partition has this number, name or label; {}", list()),
        })
    }

    /// The file system's kind.
    pub fn kind(&self) -> FsKind {
        self.kind
    }

    /// The partition it was opened on.
    pub fn partition(&self) -> &Partition {
        &self.partition
    }

    /// The volume label, where it has one.
    pub fn label(&self) -> Option<String> {
        self.guard("/", || {
            Ok(match &self.reader {
                Reader::Ntfs(r) => r.label(),
                Reader::Ext(r) => r.label(),
                Reader::Fat(r) => r.label(),
            })
        })
        .ok()
        .flatten()
    }

    /// Bytes and reads this volume has asked of the disk so far (after its
    /// cache): what listing or reading cost.
    pub fn disk_traffic(&self) -> (u64, u64) {
        self.device.disk_traffic()
    }

    fn parse(&self, path: &str) -> Result<FsPath> {
        match self.reader {
            Reader::Ntfs(_) => parse(path, true, true),
            Reader::Fat(_) => parse(path, true, false),
            Reader::Ext(_) => parse(path, false, false),
        }
    }

    /// What `path` is; a symbolic link is described, not followed.
    pub fn metadata(&self, path: &str) -> Result<Metadata> {
        let p = self.parse(path)?;
        self.guard(path, || match &self.reader {
            Reader::Ntfs(r) => r.metadata(&p),
            Reader::Ext(r) => r.metadata(&p),
            Reader::Fat(r) => r.metadata(&p),
        })
    }

    /// The entries of the folder at `path`, sorted by name, without `.`
    /// and `..` (and, at an NTFS root, without the $-metafiles).
    pub fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        let p = self.parse(path)?;
        self.guard(path, || match &self.reader {
            Reader::Ntfs(r) => r.read_dir(&p),
            Reader::Ext(r) => r.read_dir(&p),
            Reader::Fat(r) => r.read_dir(&p),
        })
    }

    /// Where the symbolic link at `path` points (on NTFS, a symbolic link's
    /// or junction's print name).
    pub fn read_link(&self, path: &str) -> Result<String> {
        let p = self.parse(path)?;
        self.guard(path, || match &self.reader {
            Reader::Ntfs(r) => r.read_link(&p),
            Reader::Ext(r) => r.read_link(&p),
            Reader::Fat(_) => {
                Err(FsError::WrongKind { fs: self.kind, path: p.display(), reason: "not a symbolic link" })
            }
        })
    }

    /// The data of the file at `path`, for reading at any offset.
    pub fn open_file(&self, path: &str) -> Result<FileReader<'_>> {
        let p = self.parse(path)?;
        let (data, len) = self.guard(path, || match &self.reader {
            Reader::Ntfs(r) => r.open_data(&p).map(|(record, len)| (Data::Ntfs(record), len)),
            Reader::Ext(r) => r.open_data(&p).map(|(f, len)| (Data::Ext(Box::new(f)), len)),
            Reader::Fat(r) => r.open_data(&p).map(|(f, len)| (Data::Fat(Box::new(f)), len)),
        })?;
        Ok(FileReader { volume: self, path: p, data, len, pos: 0 })
    }

    /// Runs `f`, turning a panic inside a reader crate into an error and
    /// closing the volume after one.
    fn guard<T>(&self, path: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if let Some(message) = self.closed.borrow().clone() {
            return Err(FsError::Panicked { fs: self.kind, path: path.into(), message });
        }
        self.device.set_budget(read_budget(self.kind));
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(r) => r,
            Err(panic) => {
                let message = message(&*panic);
                *self.closed.borrow_mut() = Some(message.clone());
                Err(FsError::Panicked { fs: self.kind, path: path.into(), message })
            }
        }
    }
}

/// Reads one call may make before the volume is taken to loop: a FAT
/// folder holds at most 65,536 entries (2 MiB), and listing a folder of
/// millions of NTFS or ext files makes a few reads per entry.
fn read_budget(kind: FsKind) -> u64 {
    match kind {
        FsKind::Fat { .. } => 1 << 22,
        _ => 1 << 27,
    }
}

fn message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

enum Data<'v> {
    Ntfs(u64),
    Ext(Box<ext4_view::File>),
    Fat(Box<fatfs::File<'v, Device>>),
}

/// A file's data: `Read + Seek`, and [`FileReader::read_at`] for any
/// offset. I/O errors from `Read` carry the [`FsError`] inside
/// (`io::Error::get_ref` and downcast).
pub struct FileReader<'v> {
    volume: &'v Volume,
    path: FsPath,
    data: Data<'v>,
    len: u64,
    pos: u64,
}

impl FileReader<'_> {
    /// The file's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads up to `buf.len()` bytes at `offset`: fewer only at the end.
    pub fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let want = (self.len - offset).min(buf.len() as u64) as usize;
        let buf = &mut buf[..want];
        let v = self.volume;
        let path = &self.path;
        let data = &mut self.data;
        let n = v.guard(&path.display(), || match (&v.reader, data) {
            (Reader::Ntfs(r), Data::Ntfs(record)) => r.read_data(path, *record, offset, buf),
            (Reader::Ext(r), Data::Ext(f)) => r.read_data(path, f, offset, buf),
            (Reader::Fat(r), Data::Fat(f)) => r.read_data(path, f, offset, buf),
            _ => Err(FsError::Corrupt {
                fs: v.kind,
                volume_offset: 0,
                path: path.display(),
                reason: "reader mismatch".into(),
            }),
        })?;
        // The length was known when the file was opened: data that ends
        // sooner (a cluster chain or extent map cut short) is damage, never
        // a short file.
        if n < want {
            let reason = format!("its data ends at byte {} of {}", offset + n as u64, self.len);
            return Err(FsError::Corrupt {
                fs: v.kind,
                volume_offset: v.partition.offset,
                path: path.display(),
                reason,
            });
        }
        Ok(n)
    }
}

impl Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.read_at(buf, self.pos).map_err(io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for FileReader<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the file's start"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::disk::{Disk, DiskInfo, Extent};

    /// A disk whose reads panic from the `after`-th on: a stand-in for a
    /// reader crate that panics on damaged bytes, inside the guard.
    struct Flaky {
        inner: Disk,
        reads: AtomicU32,
        after: AtomicU32,
    }

    impl VirtualDisk for Flaky {
        fn info(&self) -> &DiskInfo {
            self.inner.info()
        }
        fn extents(&self, range: std::ops::Range<u64>) -> crate::disk::Result<Vec<Extent>> {
            self.inner.extents(range)
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> crate::disk::Result<()> {
            if self.reads.fetch_add(1, Ordering::SeqCst) >= self.after.load(Ordering::SeqCst) {
                panic!("reader crate gave up at byte {offset}");
            }
            self.inner.read_at(buf, offset)
        }
    }

    /// A FAT volume fatfs formats and fills: /folder/file.txt.
    fn fat_image() -> Vec<u8> {
        let mut cursor = std::io::Cursor::new(vec![0u8; 2 << 20]);
        fatfs::format_volume(&mut cursor, fatfs::FormatVolumeOptions::new()).unwrap();
        {
            let fs = fatfs::FileSystem::new(&mut cursor, fatfs::FsOptions::new()).unwrap();
            fs.root_dir().create_dir("folder").unwrap();
            let mut f = fs.root_dir().create_file("folder/file.txt").unwrap();
            std::io::Write::write_all(&mut f, b"inside").unwrap();
            drop(f);
            let mut big = fs.root_dir().create_file("big.bin").unwrap();
            std::io::Write::write_all(&mut big, &[7u8; 1 << 20]).unwrap();
            drop(big);
            fs.unmount().unwrap();
        }
        cursor.into_inner()
    }

    #[test]
    fn a_panic_inside_a_reader_becomes_an_error_and_closes_the_volume() {
        let inner = crate::disk::OpenOptions::default().open_raw_reader(Box::new(fat_image()), "fat");
        let clean = Volume::open_spec(
            Arc::new(crate::disk::OpenOptions::default().open_raw_reader(Box::new(fat_image()), "fat")),
            None,
        )
        .unwrap();
        let mut text = String::new();
        clean.open_file("/FOLDER/File.TXT").unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "inside");

        // Reads work while the volume opens and its file is found; the
        // file's data (1 MiB, read straight from the disk) panics.
        let flaky = Arc::new(Flaky { inner, reads: AtomicU32::new(0), after: AtomicU32::new(u32::MAX) });
        let partition = Partition::whole(flaky.size(), Some(FsKind::Fat { bits: 12 }));
        let volume = Volume::open(flaky.clone(), &partition).unwrap();
        let mut file = volume.open_file("/big.bin").unwrap();
        flaky.after.store(flaky.reads.load(Ordering::SeqCst), Ordering::SeqCst);
        let e = file.read_at(&mut vec![0u8; 1 << 20], 0).expect_err("the panic must surface as an error");
        assert!(matches!(&e, FsError::Panicked { message, .. } if message.contains("gave up")), "{e}");
        assert_eq!(e.kind(), crate::ErrorKind::Corrupt);
        // Closed: no further call reaches the reader's state.
        let reads = flaky.reads.load(Ordering::SeqCst);
        assert!(matches!(volume.metadata("/"), Err(FsError::Panicked { .. })));
        assert!(matches!(volume.open_file("/folder/file.txt").err(), Some(FsError::Panicked { .. })));
        assert_eq!(flaky.reads.load(Ordering::SeqCst), reads);
    }
}
