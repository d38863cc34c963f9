//! Walking a source disk one output block at a time: what must be stored.
//!
//! Without a base, a block must be stored where it holds non-zero bytes.
//! With a base (a differencing child), a sector must be stored where the
//! source differs from the base, even if the source's bytes are zero (they
//! hide the base's). Ranges the allocation maps say hold nothing are never
//! read. Memory: two 4 MiB buffers and one window of extents.

use std::ops::Range;

use crate::disk::{Extent, ExtentState, VirtualDisk};
use crate::zero::is_all_zero;

/// Bytes read per step.
pub(crate) const STEP: u64 = 4 << 20;
/// The allocation maps are fetched this much at a time.
const MAP_WINDOW: u64 = 1 << 30;
/// Without a base, zero runs shorter than this inside data are still written:
/// holes below a file system block save nothing.
const GRAIN: u64 = 4096;

/// What one block held.
#[derive(Debug, Default)]
pub(crate) struct BlockPlan {
    /// Sector ranges (relative to the block, in sectors) to mark present.
    /// Without a base: empty unless `nonzero`, then the whole block.
    pub(crate) present: Vec<Range<u64>>,
    /// Whether any stored byte is non-zero (then `on_data` was called).
    pub(crate) nonzero: bool,
    /// Whether every byte of the source block is zero.
    pub(crate) source_zero: bool,
}

impl BlockPlan {
    /// Whether anything must be stored for this block.
    pub(crate) fn stores(&self) -> bool {
        !self.present.is_empty()
    }

    /// Sectors marked present.
    pub(crate) fn present_sectors(&self) -> u64 {
        self.present.iter().map(|r| r.end - r.start).sum()
    }
}

/// A cursor over one disk's allocation map.
struct MapCursor {
    window: Range<u64>,
    extents: Vec<Extent>,
}

impl MapCursor {
    fn new() -> Self {
        MapCursor { window: 0..0, extents: Vec::new() }
    }

    /// Whether `range` may hold non-zero bytes of `disk`.
    fn may_hold_data(&mut self, disk: &dyn VirtualDisk, range: Range<u64>) -> crate::Result<bool> {
        if range.start < self.window.start || range.end > self.window.end {
            let end = (range.start + MAP_WINDOW).max(range.end).min(disk.size());
            self.extents = disk.extents(range.start..end)?;
            self.window = range.start..end;
        }
        let first = self.extents.partition_point(|e| e.offset + e.length <= range.start);
        Ok(self.extents[first..]
            .iter()
            .take_while(|e| e.offset < range.end)
            .any(|e| matches!(e.state, ExtentState::Data | ExtentState::Parent)))
    }
}

/// Walks a source (and optionally a base of the same size) block by block.
pub(crate) struct Scanner<'a> {
    src: &'a dyn VirtualDisk,
    base: Option<&'a dyn VirtualDisk>,
    sector: u64,
    buf: Vec<u8>,
    base_buf: Vec<u8>,
    src_map: MapCursor,
    base_map: MapCursor,
    /// Bytes read from the source (and base).
    pub(crate) bytes_read: u64,
}

impl<'a> Scanner<'a> {
    /// `sector` is the granularity of a differencing bitmap.
    pub(crate) fn new(src: &'a dyn VirtualDisk, base: Option<&'a dyn VirtualDisk>, sector: u64) -> Self {
        Scanner {
            src,
            base,
            sector,
            buf: vec![0u8; STEP as usize],
            base_buf: if base.is_some() { vec![0u8; STEP as usize] } else { Vec::new() },
            src_map: MapCursor::new(),
            base_map: MapCursor::new(),
            bytes_read: 0,
        }
    }

    /// Scans the block `start..start + len` of the disk. `on_data(within,
    /// bytes)` receives every run of bytes to store that is not all zero,
    /// with its offset inside the block; zero runs are left as holes.
    pub(crate) fn block(
        &mut self,
        start: u64,
        len: u64,
        mut on_data: impl FnMut(u64, &[u8]) -> crate::Result<()>,
    ) -> crate::Result<BlockPlan> {
        let mut plan = BlockPlan { source_zero: true, ..Default::default() };
        let mut step_start = start;
        while step_start < start + len {
            let n = (start + len - step_start).min(STEP);
            let range = step_start..step_start + n;
            let src_data = self.src_map.may_hold_data(self.src, range.clone())?;
            let base_data = match self.base {
                Some(b) => self.base_map.may_hold_data(b, range.clone())?,
                None => false,
            };
            if src_data || base_data {
                self.step(start, range, src_data, base_data, &mut plan, &mut on_data)?;
            }
            step_start += n;
        }
        if self.base.is_none() && plan.nonzero {
            plan.present = std::iter::once(0..len.div_ceil(self.sector)).collect();
        }
        Ok(plan)
    }

    fn step(
        &mut self,
        block_start: u64,
        range: Range<u64>,
        src_data: bool,
        base_data: bool,
        plan: &mut BlockPlan,
        on_data: &mut impl FnMut(u64, &[u8]) -> crate::Result<()>,
    ) -> crate::Result<()> {
        let n = (range.end - range.start) as usize;
        let src = &mut self.buf[..n];
        if src_data {
            self.src.read_at(src, range.start)?;
            self.bytes_read += n as u64;
        } else {
            src.fill(0);
        }
        let within = range.start - block_start;
        let Some(base) = self.base else {
            // No base: store the non-zero runs, at GRAIN granularity.
            let mut run: Option<usize> = None;
            let mut pos = 0usize;
            while pos < n {
                let end = (pos + GRAIN as usize).min(n);
                let zero = is_all_zero(&src[pos..end]);
                match (zero, run) {
                    (false, None) => run = Some(pos),
                    (true, Some(s)) => {
                        on_data(within + s as u64, &src[s..pos])?;
                        run = None;
                    }
                    _ => {}
                }
                pos = end;
            }
            if let Some(s) = run {
                on_data(within + s as u64, &src[s..])?;
            }
            if !is_all_zero(src) {
                plan.nonzero = true;
                plan.source_zero = false;
            }
            return Ok(());
        };
        let base_bytes = &mut self.base_buf[..n];
        if base_data {
            base.read_at(base_bytes, range.start)?;
            self.bytes_read += n as u64;
        } else {
            base_bytes.fill(0);
        }
        if !is_all_zero(src) {
            plan.source_zero = false;
        }
        // Sector by sector: a differing sector is stored; runs of differing
        // sectors are handed over together.
        let sector = self.sector as usize;
        let first_sector = within / self.sector;
        let mut run: Option<usize> = None;
        let mut flush = |from: usize, to: usize, plan: &mut BlockPlan| -> crate::Result<()> {
            let (a, b) = (first_sector + (from / sector) as u64, first_sector + (to / sector) as u64);
            match plan.present.last_mut() {
                Some(last) if last.end == a => last.end = b,
                _ => plan.present.push(a..b),
            }
            // Write the non-zero parts; zero sectors stay holes.
            let bytes = &src[from..to];
            if !is_all_zero(bytes) {
                plan.nonzero = true;
                let mut s = 0;
                while s < bytes.len() {
                    let e = (s + GRAIN as usize).min(bytes.len());
                    if !is_all_zero(&bytes[s..e]) {
                        let mut t = e;
                        while t < bytes.len() {
                            let u = (t + GRAIN as usize).min(bytes.len());
                            if is_all_zero(&bytes[t..u]) {
                                break;
                            }
                            t = u;
                        }
                        on_data(within + (from + s) as u64, &bytes[s..t])?;
                        s = t;
                    } else {
                        s = e;
                    }
                }
            }
            Ok(())
        };
        let mut pos = 0usize;
        while pos < n {
            let end = (pos + sector).min(n);
            let differs = src[pos..end] != base_bytes[pos..end];
            match (differs, run) {
                (true, None) => run = Some(pos),
                (false, Some(s)) => {
                    flush(s, pos, plan)?;
                    run = None;
                }
                _ => {}
            }
            pos = end;
        }
        if let Some(s) = run {
            flush(s, n, plan)?;
        }
        Ok(())
    }
}
