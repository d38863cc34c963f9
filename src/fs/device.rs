//! A volume's bytes as the file-system crates want them: `Read + Seek`
//! (ntfs, fatfs; fatfs also wants `Write`, which always fails) and
//! `Ext4Read` (ext4-view), over a range of any [`VirtualDisk`].
//!
//! The crates read in small pieces (an NTFS attribute header is a few
//! dozen bytes), so reads smaller than a block go through a bounded cache
//! of 256 KiB blocks shared by every handle on the volume: listing a folder
//! of a backup on object storage costs reads in proportion to the metadata
//! touched, never to the disk. Reads of a block or more go straight to the
//! disk, whose own reader (a store's chunk source) plans them.
//!
//! A failed disk read is kept beside the `io::Error` the crate sees, so the
//! caller gets the disk's own error (its kind, its key or offset) instead
//! of the crate's rewording of it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::rc::Rc;
use std::sync::Arc;

use super::FsKind;
use super::error::FsError;
use crate::disk::{DiskError, VirtualDisk};

/// Cache block: large enough that metadata reads cluster, small enough that
/// a cold directory costs little.
pub(crate) const BLOCK: u64 = 256 * 1024;
/// Blocks kept: 16 MiB per volume.
const CACHE_BLOCKS: usize = 64;

/// What every handle on one volume shares.
struct Shared {
    disk: Arc<dyn VirtualDisk>,
    /// The volume's first byte on the disk, and its length.
    start: u64,
    len: u64,
    cache: RefCell<Cache>,
    /// The first disk error no caller has taken yet.
    error: RefCell<Option<DiskError>>,
    /// Bytes read from the disk (cache misses and direct reads).
    disk_bytes: Cell<u64>,
    disk_reads: Cell<u64>,
    /// Reads left to the current call (see [`Device::set_budget`]).
    budget: Cell<u64>,
}

#[derive(Default)]
struct Cache {
    blocks: HashMap<u64, (Rc<[u8]>, u64)>,
    clock: u64,
}

/// A cursor on a volume; clones share the cache.
#[derive(Clone)]
pub(crate) struct Device {
    shared: Rc<Shared>,
    pos: u64,
}

impl Device {
    /// The volume `len` bytes long at `start` on `disk`.
    pub(crate) fn new(disk: Arc<dyn VirtualDisk>, start: u64, len: u64) -> Device {
        let shared = Shared {
            disk,
            start,
            len,
            cache: RefCell::new(Cache::default()),
            error: RefCell::new(None),
            disk_bytes: Cell::new(0),
            disk_reads: Cell::new(0),
            budget: Cell::new(u64::MAX),
        };
        Device { shared: Rc::new(shared), pos: 0 }
    }

    /// The disk error behind the last failed read, if any (taken once).
    pub(crate) fn take_error(&self) -> Option<DiskError> {
        self.shared.error.borrow_mut().take()
    }

    /// The error for a reader's failure at `path`: the disk's own error
    /// when a disk read caused it, else the file system is damaged there.
    pub(crate) fn fail(&self, fs: FsKind, path: &str, reason: impl std::fmt::Display) -> FsError {
        match self.take_error() {
            Some(e) => FsError::Disk(e),
            None => FsError::Corrupt {
                fs,
                volume_offset: self.shared.start,
                path: path.to_string(),
                reason: reason.to_string(),
            },
        }
    }

    /// Bytes and reads sent to the disk so far.
    pub(crate) fn disk_traffic(&self) -> (u64, u64) {
        (self.shared.disk_bytes.get(), self.shared.disk_reads.get())
    }

    /// Allows the next call into a reader crate `reads` reads of the
    /// volume (cache hits included). A crate that loops on damaged
    /// structures inside one call (a cluster chain or index that points
    /// back at itself) then fails instead of hanging: no real call comes
    /// near the budgets the volume sets.
    pub(crate) fn set_budget(&self, reads: u64) {
        self.shared.budget.set(reads);
    }

    /// Fills `buf` from volume byte `offset`; the range must lie inside.
    pub(crate) fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let left = self.shared.budget.get();
        if left == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "more reads in one call than any sound volume needs (a loop in its structures?)",
            ));
        }
        self.shared.budget.set(left - 1);
        let end = offset.checked_add(buf.len() as u64).filter(|&e| e <= self.shared.len);
        if end.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("read of {} bytes at volume byte {offset} passes its end ({})", buf.len(), self.shared.len),
            ));
        }
        if buf.len() as u64 >= BLOCK {
            return self.disk_read(buf, offset);
        }
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let index = at / BLOCK;
            let block = self.block(index)?;
            let inner = (at - index * BLOCK) as usize;
            let n = (block.len() - inner).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&block[inner..inner + n]);
            done += n;
        }
        Ok(())
    }

    fn block(&self, index: u64) -> io::Result<Rc<[u8]>> {
        {
            let mut cache = self.shared.cache.borrow_mut();
            cache.clock += 1;
            let clock = cache.clock;
            if let Some((block, used)) = cache.blocks.get_mut(&index) {
                *used = clock;
                return Ok(block.clone());
            }
        }
        let start = index * BLOCK;
        let len = BLOCK.min(self.shared.len - start) as usize;
        let mut bytes = vec![0u8; len];
        self.disk_read(&mut bytes, start)?;
        let block: Rc<[u8]> = bytes.into();
        let mut cache = self.shared.cache.borrow_mut();
        if cache.blocks.len() >= CACHE_BLOCKS {
            let oldest = cache.blocks.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| *k);
            if let Some(k) = oldest {
                cache.blocks.remove(&k);
            }
        }
        let clock = cache.clock;
        cache.blocks.insert(index, (block.clone(), clock));
        Ok(block)
    }

    fn disk_read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let s = &self.shared;
        s.disk_reads.set(s.disk_reads.get() + 1);
        s.disk_bytes.set(s.disk_bytes.get() + buf.len() as u64);
        match s.disk.read_at(buf, s.start + offset) {
            Ok(()) => Ok(()),
            Err(e) => {
                let message = e.to_string();
                s.error.borrow_mut().get_or_insert(e);
                Err(io::Error::other(message))
            }
        }
    }
}

/// Reads are whole or fail: a read past the volume's end is an error, not
/// a short count, since a crate that takes a short count for the end of a
/// data run would go on to place the next run's bytes at the wrong offset.
impl Read for Device {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_exact_at(buf, self.pos)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
}

impl Seek for Device {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.shared.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(io::ErrorKind::InvalidInput, "seek before the volume's start")),
        }
    }
}

/// fatfs opens volumes read-write; nothing here ever writes.
impl Write for Device {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "vhdkit reads file systems read-only"))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ext4_view::Ext4Read for Device {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        Ok(self.read_exact_at(dst, start_byte)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_through_the_cache_match_the_disk_and_stop_at_the_end() {
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let disk: Arc<dyn VirtualDisk> =
            Arc::new(crate::disk::OpenOptions::default().open_raw_reader(Box::new(bytes.clone()), "t"));
        let mut dev = Device::new(disk, 1000, 250_000);
        let mut small = [0u8; 100];
        dev.read_exact_at(&mut small, 65_500).unwrap();
        assert_eq!(&small[..], &bytes[66_500..66_600]);
        let mut big = vec![0u8; 70_000];
        dev.read_exact_at(&mut big, 5).unwrap();
        assert_eq!(&big[..], &bytes[1005..71_005]);
        assert!(dev.read_exact_at(&mut small, 249_950).is_err());
        dev.seek(SeekFrom::Start(249_990)).unwrap();
        let mut tail = [0u8; 100];
        assert!(dev.read(&mut tail).is_err(), "a read past the end fails whole");
        assert_eq!(dev.read(&mut tail[..10]).unwrap(), 10);
        assert_eq!(&tail[..10], &bytes[250_990..251_000]);
        assert!(dev.write(b"x").is_err());
        dev.set_budget(2);
        assert!(dev.read_exact_at(&mut small, 0).is_ok() && dev.read_exact_at(&mut small, 0).is_ok());
        assert!(dev.read_exact_at(&mut small, 0).is_err(), "the budget ends the call");
    }
}
