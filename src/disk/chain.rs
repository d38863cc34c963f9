//! A disk as a chain of images: the image opened, then its parent, then the
//! parent's parent. Reads and maps walk down the chain only where an image
//! defers to its parent.

use std::ops::Range;

use super::error::{DiskError, Result};
use super::image::RunKind;
use super::layer::Layer;
use super::{DiskInfo, Extent, ExtentState, VirtualDisk, push_extent};
use crate::format::FormatError;

/// An open disk: one image or a differencing chain, read as one.
///
/// Thread-safe: reads take `&self` and use positional I/O, so one `Disk`
/// serves many threads.
#[derive(Debug)]
pub struct Disk {
    layers: Vec<Layer>,
}

impl Disk {
    pub(crate) fn from_layers(layers: Vec<Layer>) -> Disk {
        debug_assert!(!layers.is_empty());
        Disk { layers }
    }

    /// The image opened (the top of the chain).
    pub fn info(&self) -> &DiskInfo {
        self.layers[0].info()
    }

    /// Every image of the chain, top first.
    pub fn chain(&self) -> impl Iterator<Item = &DiskInfo> {
        self.layers.iter().map(|l| l.info())
    }

    /// Number of images in the chain (1 for a disk without parents).
    pub fn depth(&self) -> usize {
        self.layers.len()
    }

    /// The virtual size in bytes.
    pub fn size(&self) -> u64 {
        self.info().virtual_size
    }

    /// The top image as a VHD, if it is one.
    pub fn as_vhd(&self) -> Option<&super::VhdImage> {
        match &self.layers[0] {
            Layer::Vhd(i) => Some(i),
            _ => None,
        }
    }

    /// The top image as a VHDX, if it is one.
    pub fn as_vhdx(&self) -> Option<&super::VhdxImage> {
        match &self.layers[0] {
            Layer::Vhdx(i) => Some(i),
            _ => None,
        }
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        let size = self.size();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(DiskError::OutOfRange { offset, len, size });
        }
        Ok(())
    }

    /// Fills `buf` with the disk's bytes at `offset`; the range must lie
    /// inside the disk. No allocation; one positional read per run.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        self.read_layer(0, buf, offset)
    }

    /// The disk's `len` bytes at `offset` without copying them, when one
    /// image of the chain stores all of them contiguously and its reader
    /// holds them in memory (a memory map or a byte slice); `None` when they
    /// must be read with [`Disk::read_at`]: zeros, runs not contiguous in
    /// one image's file, a replayed log, or a `pread` reader.
    pub fn borrow_at(&self, offset: u64, len: usize) -> Result<Option<&[u8]>> {
        self.check_range(offset, len as u64)?;
        // Most disks read through pread: skip the block lookups (and the
        // bitmap reads of a child) that a read is about to repeat.
        if len == 0 || !self.layers.iter().any(|l| l.lends()) {
            return Ok(None);
        }
        for layer in &self.layers {
            if offset.checked_add(len as u64).is_none_or(|end| end > layer.info().virtual_size) {
                return Ok(None);
            }
            let run = layer.run_at(offset, len as u64)?;
            if run.len < len as u64 {
                return Ok(None);
            }
            match run.kind {
                RunKind::Data { file_offset } => return Ok(layer.data_bytes(file_offset, len)),
                RunKind::Parent => continue,
                RunKind::Zero | RunKind::Unallocated => return Ok(None),
            }
        }
        Ok(None)
    }

    fn read_layer(&self, depth: usize, buf: &mut [u8], offset: u64) -> Result<()> {
        let layer = &self.layers[depth];
        let size = layer.info().virtual_size;
        let mut done = 0usize;
        while done < buf.len() {
            let off = offset + done as u64;
            let rest = &mut buf[done..];
            if off >= size {
                // A parent smaller than its child: the rest reads as zeros.
                rest.fill(0);
                break;
            }
            let run = layer.run_at(off, rest.len() as u64)?;
            let n = no_progress_guard(layer, run.len, off)?.min(rest.len());
            let dst = &mut rest[..n];
            match run.kind {
                RunKind::Data { file_offset } => layer.read_data(dst, file_offset)?,
                RunKind::Zero | RunKind::Unallocated => dst.fill(0),
                RunKind::Parent => {
                    if depth + 1 < self.layers.len() {
                        self.read_layer(depth + 1, dst, off)?;
                    } else {
                        return Err(DiskError::ParentNotOpened { child: layer.info().path.clone(), offset: off });
                    }
                }
            }
            done += n;
        }
        Ok(())
    }

    /// The allocation map of `range` (clamped to the disk) through the whole
    /// chain: each extent says which layer supplies it (`depth`) and how.
    pub fn extents(&self, range: Range<u64>) -> Result<Vec<Extent>> {
        let range = range.start.min(self.size())..range.end.min(self.size());
        let mut out = Vec::new();
        self.extents_layer(0, range, true, &mut out)?;
        Ok(out)
    }

    /// The top image's own allocation of `range`: what it holds itself
    /// (data, zero, unallocated) and, as `Parent` at depth 1, what it leaves
    /// to its parent. For a differencing child this is exactly its change set.
    pub fn own_extents(&self, range: Range<u64>) -> Result<Vec<Extent>> {
        let range = range.start.min(self.size())..range.end.min(self.size());
        let mut out = Vec::new();
        self.extents_layer(0, range, false, &mut out)?;
        Ok(out)
    }

    fn extents_layer(&self, depth: usize, range: Range<u64>, descend: bool, out: &mut Vec<Extent>) -> Result<()> {
        let layer = &self.layers[depth];
        let size = layer.info().virtual_size;
        let mut off = range.start;
        while off < range.end {
            let d = depth as u32;
            if off >= size {
                push_extent(
                    out,
                    Extent { offset: off, length: range.end - off, state: ExtentState::Unallocated, depth: d },
                );
                break;
            }
            let run = layer.run_at(off, range.end - off)?;
            let len = no_progress_guard(layer, run.len, off)? as u64;
            let state = match run.kind {
                RunKind::Data { .. } => ExtentState::Data,
                RunKind::Zero => ExtentState::Zero,
                RunKind::Unallocated => ExtentState::Unallocated,
                RunKind::Parent if descend && depth + 1 < self.layers.len() => {
                    self.extents_layer(depth + 1, off..off + len, true, out)?;
                    off += len;
                    continue;
                }
                RunKind::Parent => {
                    push_extent(out, Extent { offset: off, length: len, state: ExtentState::Parent, depth: d + 1 });
                    off += len;
                    continue;
                }
            };
            push_extent(out, Extent { offset: off, length: len, state, depth: d });
            off += len;
        }
        Ok(())
    }

    /// Structural problems in every image of the chain (damaged backup copies
    /// of headers, overlapping blocks...) that did not stop the open.
    pub fn check(&self) -> Vec<(std::path::PathBuf, String)> {
        self.layers
            .iter()
            .flat_map(|l| {
                let path = l.info().path.clone();
                l.check().into_iter().map(move |p| (path.clone(), p))
            })
            .collect()
    }
}

/// A lookup must advance; a zero-length run would loop forever.
fn no_progress_guard(layer: &Layer, len: u64, offset: u64) -> Result<usize> {
    if len == 0 {
        return Err(DiskError::Format {
            path: layer.info().path.clone(),
            source: FormatError::corrupt("block lookup", offset, "made no progress"),
        });
    }
    Ok(usize::try_from(len).unwrap_or(usize::MAX))
}

impl VirtualDisk for Disk {
    fn info(&self) -> &DiskInfo {
        Disk::info(self)
    }

    fn extents(&self, range: Range<u64>) -> Result<Vec<Extent>> {
        Disk::extents(self, range)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        Disk::read_at(self, buf, offset)
    }

    fn own_extents(&self, range: Range<u64>) -> Result<Vec<Extent>> {
        Disk::own_extents(self, range)
    }

    fn borrow_at(&self, offset: u64, len: usize) -> Result<Option<&[u8]>> {
        Disk::borrow_at(self, offset, len)
    }

    fn chain_info(&self) -> Vec<&DiskInfo> {
        self.chain().collect()
    }
}
