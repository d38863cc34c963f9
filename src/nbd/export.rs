//! An export: one disk served under a name, with its cache of decoded
//! blocks and, when writable, its copy-on-write overlay; and what a session
//! may do to it ([`ExportView`]).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex};

use crate::cow::CowOverlay;
use crate::disk::VirtualDisk;
use crate::nbd::session;

/// One disk served under a name.
pub struct Export {
    /// The export's name (`nbd://host:port/NAME`).
    pub name: String,
    /// A line describing it, sent to clients that ask.
    pub description: String,
    disk: Arc<dyn VirtualDisk>,
    overlay: Option<Arc<CowOverlay>>,
    cache: Mutex<BlockCache>,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export").field("name", &self.name).field("overlay", &self.overlay.is_some()).finish()
    }
}

/// Decoded blocks of the disk recently read, so small random reads do not
/// each decode a whole chunk: least recently used first out.
struct BlockCache {
    block: u64,
    budget: usize,
    blocks: HashMap<u64, Arc<Vec<u8>>>,
    order: VecDeque<u64>,
}

impl BlockCache {
    /// The block at `index` if cached, marked as just used.
    fn lookup(&mut self, index: u64) -> Option<Arc<Vec<u8>>> {
        let b = self.blocks.get(&index)?.clone();
        if let Some(i) = self.order.iter().position(|x| *x == index) {
            self.order.remove(i);
        }
        self.order.push_back(index);
        Some(b)
    }

    /// Keeps `bytes` as the block at `index`, dropping the least recently
    /// used blocks past the budget. Another connection may have decoded
    /// the same block meanwhile: the newer copy replaces it.
    fn insert(&mut self, index: u64, bytes: Arc<Vec<u8>>) {
        if self.budget < self.block as usize {
            return;
        }
        if self.blocks.insert(index, bytes).is_some()
            && let Some(i) = self.order.iter().position(|x| *x == index)
        {
            self.order.remove(i);
        }
        self.order.push_back(index);
        while self.order.len() * self.block as usize > self.budget {
            match self.order.pop_front() {
                Some(old) => self.blocks.remove(&old),
                None => break,
            };
        }
    }
}

/// Reads block `index` (of `block` bytes; the last may be shorter) of
/// `disk`: the decoding a cache miss pays, done without the cache's lock so
/// connections reading cold blocks do not wait for one another.
fn read_block(disk: &dyn VirtualDisk, block: u64, index: u64) -> crate::Result<Arc<Vec<u8>>> {
    let size = disk.info().virtual_size;
    let start = index.checked_mul(block).filter(|s| *s < size).ok_or_else(|| {
        crate::Error::from(crate::disk::DiskError::Io {
            path: disk.info().path.clone(),
            offset: index.saturating_mul(block),
            source: io::Error::from(io::ErrorKind::UnexpectedEof),
        })
    })?;
    let mut bytes = vec![0u8; block.min(size - start) as usize];
    disk.read_at(&mut bytes, start)?;
    Ok(Arc::new(bytes))
}

/// Bytes of decoded blocks an export keeps by default.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

impl Export {
    /// `disk`, read-only, under `name`.
    pub fn new(name: impl Into<String>, disk: Arc<dyn VirtualDisk>) -> Export {
        let block = cache_block(&*disk);
        Export {
            name: name.into(),
            description: String::new(),
            disk,
            overlay: None,
            cache: Mutex::new(BlockCache {
                block,
                budget: DEFAULT_CACHE_BYTES,
                blocks: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    /// The same export, writable through `overlay` (which must be the
    /// disk's size).
    pub fn with_overlay(mut self, overlay: Arc<CowOverlay>) -> io::Result<Export> {
        if overlay.size() != self.size() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the overlay is {} bytes, the disk {}", overlay.size(), self.size()),
            ));
        }
        self.overlay = Some(overlay);
        Ok(self)
    }

    /// The same export with a description.
    pub fn described(mut self, description: impl Into<String>) -> Export {
        self.description = description.into();
        self
    }

    /// The same export caching at most `bytes` of decoded blocks.
    pub fn cache_bytes(self, bytes: usize) -> Export {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).budget = bytes;
        self
    }

    /// Bytes in the export.
    pub fn size(&self) -> u64 {
        self.disk.info().virtual_size
    }

    pub(super) fn writable(&self) -> bool {
        self.overlay.is_some()
    }

    pub(super) fn view(&self) -> ExportView<'_> {
        ExportView { export: self }
    }

    /// Reads the disk served, small reads through the block cache.
    pub(super) fn read_disk(&self, buf: &mut [u8], offset: u64) -> crate::Result<()> {
        let block = self.cache.lock().unwrap_or_else(|p| p.into_inner()).block;
        if buf.len() as u64 >= block {
            return Ok(self.disk.read_at(buf, offset)?);
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let index = pos / block;
            let cached = self.cache.lock().unwrap_or_else(|p| p.into_inner()).lookup(index);
            let bytes = match cached {
                Some(b) => b,
                None => {
                    let b = read_block(&*self.disk, block, index)?;
                    self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(index, b.clone());
                    b
                }
            };
            let at = (pos - index * block) as usize;
            let n = (buf.len() - done).min(bytes.len() - at);
            buf[done..done + n].copy_from_slice(&bytes[at..at + n]);
            done += n;
        }
        Ok(())
    }
}

/// The cache's block: the disk's block size, within 64 KiB to 2 MiB.
fn cache_block(disk: &dyn VirtualDisk) -> u64 {
    u64::from(disk.info().block_size.unwrap_or(512 * 1024)).clamp(64 * 1024, 2 << 20).next_power_of_two()
}

/// What a session does to an export.
pub(crate) struct ExportView<'a> {
    export: &'a Export,
}

impl ExportView<'_> {
    pub(super) fn read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let e = self.export;
        match &e.overlay {
            Some(o) => o.read(&*e.disk, buf, offset, &|b, at| e.read_disk(b, at)),
            None => e.read_disk(buf, offset).map_err(io::Error::other),
        }
    }

    pub(super) fn extents(&self, range: std::ops::Range<u64>) -> io::Result<Vec<(u64, u64, bool)>> {
        let extents = self.merged_extents(range.clone())?;
        Ok(session::read_parts(&extents, range))
    }

    pub(super) fn status(&self, range: std::ops::Range<u64>) -> io::Result<Vec<(u64, u32)>> {
        let extents = self.merged_extents(range.clone())?;
        Ok(session::status_parts(&extents, range))
    }

    pub(super) fn merged_extents(&self, range: std::ops::Range<u64>) -> io::Result<Vec<crate::disk::Extent>> {
        let e = self.export;
        let base = e.disk.extents(range.clone()).map_err(io::Error::other)?;
        Ok(match &e.overlay {
            Some(o) => o.merge_extents(base, range),
            None => base,
        })
    }

    pub(super) fn write(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let e = self.export;
        let o = e.overlay.as_ref().ok_or_else(|| io::Error::from(io::ErrorKind::PermissionDenied))?;
        o.write(offset, bytes, &|b, at| e.read_disk(b, at))
    }

    pub(super) fn zero(&self, offset: u64, length: u64, _may_trim: bool) -> io::Result<()> {
        let e = self.export;
        let o = e.overlay.as_ref().ok_or_else(|| io::Error::from(io::ErrorKind::PermissionDenied))?;
        o.zero(offset, length, &|b, at| e.read_disk(b, at))
    }

    pub(super) fn flush(&self) -> io::Result<()> {
        match &self.export.overlay {
            Some(o) => o.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(budget_blocks: usize) -> BlockCache {
        BlockCache { block: 4, budget: budget_blocks * 4, blocks: HashMap::new(), order: VecDeque::new() }
    }

    #[test]
    fn the_cache_keeps_the_most_recently_used_blocks_within_its_budget() {
        let mut c = cache(2);
        c.insert(1, Arc::new(vec![1; 4]));
        c.insert(2, Arc::new(vec![2; 4]));
        assert_eq!(c.lookup(1).as_deref(), Some(&vec![1; 4]));
        // 2 is now the least recently used: it goes.
        c.insert(3, Arc::new(vec![3; 4]));
        assert!(c.lookup(2).is_none());
        assert!(c.lookup(1).is_some() && c.lookup(3).is_some());
        // A block decoded twice (two connections missed at once) is held once.
        c.insert(3, Arc::new(vec![9; 4]));
        assert_eq!((c.blocks.len(), c.order.len()), (2, 2));
        assert_eq!(c.lookup(3).as_deref(), Some(&vec![9; 4]));
        // A budget under one block caches nothing.
        let mut none = cache(0);
        none.insert(1, Arc::new(vec![1; 4]));
        assert!(none.lookup(1).is_none());
    }
}
