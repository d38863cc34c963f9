//! A copy-on-write overlay over any [`VirtualDisk`]: what was written to
//! it (an NBD client writing to an export, a product writing to a mounted
//! backup), kept in a local sparse file beside its map, never in the disk
//! underneath. [`CowDisk`] is the merged view, which a backup can capture
//! as an incremental whose change set is the overlay's map. Not specific to
//! NBD, and on every platform. (The other overlay, `io::LogOverlay`,
//! replays a VHDX log in memory.)
//!
//! The overlay tracks 64 KiB blocks, each either `data` (its bytes are in
//! the file, at the block's own offset) or `zero`. A write or zero that
//! covers part of a block first copies the block in (from the overlay or
//! the disk), so the map never describes half a block. The map is written
//! to `FILE.map` (JSON, replaced atomically) on every flush; an overlay
//! opened again over the same disk carries on where it stopped.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::disk::{DiskInfo, Extent, ExtentState, VirtualDisk};
use crate::io::durable::{PendingFile, Placement, write_all_at};

/// Bytes per overlay block.
pub const COW_BLOCK: u64 = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Block {
    Data,
    Zero,
}

/// The map file's contents.
#[derive(Debug, Serialize, Deserialize)]
struct MapFile {
    size: u64,
    block: u64,
    /// `[first block, count]` runs.
    data: Vec<(u64, u64)>,
    zero: Vec<(u64, u64)>,
}

/// A copy-on-write overlay over a disk of a given size.
#[derive(Debug)]
pub struct CowOverlay {
    size: u64,
    file: File,
    map_path: PathBuf,
    blocks: RwLock<BTreeMap<u64, Block>>,
}

/// How a partial block gets its other bytes: reads of the disk served.
pub(crate) type BaseRead<'a> = &'a dyn Fn(&mut [u8], u64) -> crate::Result<()>;

fn runs(blocks: &BTreeMap<u64, Block>, want: Block) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (&b, &s) in blocks {
        if s != want {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.0 + last.1 == b => last.1 += 1,
            _ => out.push((b, 1)),
        }
    }
    out
}

impl CowOverlay {
    /// Opens the overlay at `path` for a disk of `size` bytes: a new one if
    /// there is none, else the one there (its map must be for that size).
    pub fn open(path: &Path, size: u64) -> io::Result<CowOverlay> {
        let map_path = PathBuf::from(format!("{}.map", path.display()));
        let mut blocks = BTreeMap::new();
        if map_path.exists() {
            let text = std::fs::read(&map_path)?;
            let map: MapFile = serde_json::from_slice(&text)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", map_path.display())))?;
            if map.size != size || map.block != COW_BLOCK {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is an overlay of a {}-byte disk, not of this {size}-byte one",
                        map_path.display(),
                        map.size
                    ),
                ));
            }
            let last = size.div_ceil(COW_BLOCK);
            for (runs, state) in [(map.data, Block::Data), (map.zero, Block::Zero)] {
                for (first, count) in runs {
                    let end = first.checked_add(count).filter(|e| *e <= last).ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("{}: a run past the disk", map_path.display()),
                        )
                    })?;
                    for b in first..end {
                        blocks.insert(b, state);
                    }
                }
            }
        }
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        if file.metadata()?.len() < size {
            file.set_len(size)?;
        }
        Ok(CowOverlay { size, file, map_path, blocks: RwLock::new(blocks) })
    }

    /// Bytes of the disk it overlays.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The byte ranges written, zeroed or trimmed since the overlay began,
    /// in order: a backup's change set.
    pub fn changed_ranges(&self) -> Vec<Range<u64>> {
        let blocks = self.blocks.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Range<u64>> = Vec::new();
        for &b in blocks.keys() {
            let start = b * COW_BLOCK;
            let end = (start + COW_BLOCK).min(self.size);
            match out.last_mut() {
                Some(last) if last.end == start => last.end = end,
                _ => out.push(start..end),
            }
        }
        out
    }

    fn block_len(&self, b: u64) -> usize {
        (COW_BLOCK.min(self.size - b * COW_BLOCK)) as usize
    }

    #[cfg(unix)]
    fn pread(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset)
    }

    #[cfg(windows)]
    fn pread(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        use std::os::windows::fs::FileExt;
        while !buf.is_empty() {
            match self.file.seek_read(buf, offset)? {
                0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                n => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
            }
        }
        Ok(())
    }

    fn pwrite(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        write_all_at(&self.file, buf, offset)
    }

    /// Reads the merged view.
    pub(crate) fn read(
        &self,
        _disk: &dyn VirtualDisk,
        buf: &mut [u8],
        offset: u64,
        base: BaseRead<'_>,
    ) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64).filter(|e| *e <= self.size).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("a read of {} bytes at {offset} past the disk", buf.len()),
            )
        })?;
        let blocks = self.blocks.read().unwrap_or_else(|p| p.into_inner());
        let mut pos = offset;
        while pos < end {
            let b = pos / COW_BLOCK;
            let state = blocks.get(&b).copied();
            // A run of blocks in the same state, read at once.
            let mut stop = ((b + 1) * COW_BLOCK).min(end);
            while stop < end && blocks.get(&(stop / COW_BLOCK)).copied() == state {
                stop = ((stop / COW_BLOCK + 1) * COW_BLOCK).min(end);
            }
            let out = &mut buf[(pos - offset) as usize..(stop - offset) as usize];
            match state {
                Some(Block::Data) => self.pread(out, pos)?,
                Some(Block::Zero) => out.fill(0),
                None => base(out, pos).map_err(io::Error::other)?,
            }
            pos = stop;
        }
        Ok(())
    }

    /// The current bytes of block `b`.
    fn current(&self, blocks: &BTreeMap<u64, Block>, b: u64, base: BaseRead<'_>) -> io::Result<Vec<u8>> {
        let mut bytes = vec![0u8; self.block_len(b)];
        match blocks.get(&b) {
            Some(Block::Data) => self.pread(&mut bytes, b * COW_BLOCK)?,
            Some(Block::Zero) => {}
            None => base(&mut bytes, b * COW_BLOCK).map_err(io::Error::other)?,
        }
        Ok(bytes)
    }

    /// Writes `bytes` at `offset` (inside the disk).
    pub(crate) fn write(&self, offset: u64, bytes: &[u8], base: BaseRead<'_>) -> io::Result<()> {
        self.change(offset, bytes.len() as u64, base, |block, at, out| {
            let from = (at - offset) as usize;
            out.copy_from_slice(&bytes[from..from + out.len()]);
            let _ = block;
        })
    }

    /// Zeroes `length` bytes at `offset`.
    pub(crate) fn zero(&self, offset: u64, length: u64, base: BaseRead<'_>) -> io::Result<()> {
        self.change(offset, length, base, |_, _, out| out.fill(0))
    }

    /// Applies `fill` to every byte of the range, block by block: whole
    /// zeroed blocks become `zero`, the rest `data`.
    fn change(
        &self,
        offset: u64,
        length: u64,
        base: BaseRead<'_>,
        fill: impl Fn(u64, u64, &mut [u8]),
    ) -> io::Result<()> {
        let end = offset
            .checked_add(length)
            .filter(|e| *e <= self.size)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a change past the end of the disk"))?;
        let mut blocks = self.blocks.write().unwrap_or_else(|p| p.into_inner());
        let mut pos = offset;
        while pos < end {
            let b = pos / COW_BLOCK;
            let start = b * COW_BLOCK;
            let len = self.block_len(b) as u64;
            let stop = (start + len).min(end);
            let whole = pos == start && stop == start + len;
            let mut bytes = if whole { vec![0u8; len as usize] } else { self.current(&blocks, b, base)? };
            let (from, to) = ((pos - start) as usize, (stop - start) as usize);
            fill(b, pos, &mut bytes[from..to]);
            if crate::is_all_zero(&bytes) {
                blocks.insert(b, Block::Zero);
            } else {
                self.pwrite(&bytes, start)?;
                blocks.insert(b, Block::Data);
            }
            pos = stop;
        }
        Ok(())
    }

    /// Makes what was written durable: the file, then its map.
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()?;
        let blocks = self.blocks.read().unwrap_or_else(|p| p.into_inner());
        let map = MapFile {
            size: self.size,
            block: COW_BLOCK,
            data: runs(&blocks, Block::Data),
            zero: runs(&blocks, Block::Zero),
        };
        drop(blocks);
        let text = serde_json::to_vec(&map).map_err(io::Error::other)?;
        let pending = PendingFile::create(&self.map_path)?;
        pending.write_at(&text, 0)?;
        Ok(pending.commit(true, Placement::Replace)?)
    }

    /// `base` (the disk's extents of `range`) with the overlay's blocks over it.
    pub(crate) fn merge_extents(&self, base: Vec<Extent>, range: Range<u64>) -> Vec<Extent> {
        let blocks = self.blocks.read().unwrap_or_else(|p| p.into_inner());
        let first = range.start / COW_BLOCK;
        let last = range.end.div_ceil(COW_BLOCK);
        let mut paint: Vec<(u64, u64, ExtentState)> = Vec::new();
        for (&b, &s) in blocks.range(first..last) {
            let start = (b * COW_BLOCK).max(range.start);
            let end = ((b + 1) * COW_BLOCK).min(range.end).min(self.size);
            let state = if s == Block::Data { ExtentState::Data } else { ExtentState::Zero };
            match paint.last_mut() {
                Some(p) if p.1 == start && p.2 == state => p.1 = end,
                _ => paint.push((start, end, state)),
            }
        }
        if paint.is_empty() {
            return base;
        }
        let mut out: Vec<Extent> = Vec::new();
        let mut push = |start: u64, end: u64, state: ExtentState, depth: u32| {
            if start >= end {
                return;
            }
            match out.last_mut() {
                Some(l) if l.offset + l.length == start && l.state == state && l.depth == depth => {
                    l.length += end - start
                }
                _ => out.push(Extent { offset: start, length: end - start, state, depth }),
            }
        };
        let mut p = paint.iter().peekable();
        for e in &base {
            let (mut pos, end) = (e.offset, e.offset + e.length);
            while pos < end {
                // Skip paint that ends before pos.
                while p.peek().is_some_and(|x| x.1 <= pos) {
                    p.next();
                }
                match p.peek() {
                    Some(&&(ps, pe, state)) if ps <= pos => {
                        let stop = pe.min(end);
                        push(pos, stop, state, 0);
                        pos = stop;
                    }
                    Some(&&(ps, _, _)) if ps < end => {
                        push(pos, ps, e.state, e.depth);
                        pos = ps;
                    }
                    _ => {
                        push(pos, end, e.state, e.depth);
                        pos = end;
                    }
                }
            }
        }
        out
    }
}

/// A disk and its overlay, read as one: what a VM served the export sees
/// now, and what `vhdkit backup --overlay` captures.
pub struct CowDisk {
    base: Arc<dyn VirtualDisk>,
    overlay: Arc<CowOverlay>,
    info: DiskInfo,
}

impl CowDisk {
    /// `base` seen through `overlay` (of the same size).
    pub fn new(base: Arc<dyn VirtualDisk>, overlay: Arc<CowOverlay>) -> io::Result<CowDisk> {
        if overlay.size() != base.info().virtual_size {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "the overlay is not the disk's size"));
        }
        let info = base.info().clone();
        Ok(CowDisk { base, overlay, info })
    }

    /// The overlay.
    pub fn overlay(&self) -> &CowOverlay {
        &self.overlay
    }
}

impl VirtualDisk for CowDisk {
    fn info(&self) -> &DiskInfo {
        &self.info
    }
    fn extents(&self, range: Range<u64>) -> crate::disk::Result<Vec<Extent>> {
        let range = range.start.min(self.info.virtual_size)..range.end.min(self.info.virtual_size);
        let base = self.base.extents(range.clone())?;
        Ok(self.overlay.merge_extents(base, range))
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> crate::disk::Result<()> {
        let base = &*self.base;
        self.overlay
            .read(base, buf, offset, &|b, at| Ok(base.read_at(b, at)?))
            .map_err(|e| crate::disk::DiskError::Io { path: self.info.path.clone(), offset, source: e })
    }
}
