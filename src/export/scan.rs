//! Walking a source disk one output block at a time: what must be stored.
//!
//! Without a base, a block must be stored where it holds non-zero bytes.
//! With a base (a differencing child), a sector must be stored where the
//! source differs from the base, even if the source's bytes are zero (they
//! hide the base's). Ranges the allocation maps say hold nothing are never
//! read.
//!
//! Reading runs one step ahead on its own thread, so the source is read
//! while the previous step is checked and written. Memory: a fixed pool of
//! 4 MiB buffers (four, or eight with a base) and one window of extents.

use std::ops::Range;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use crate::disk::{Extent, ExtentState, VirtualDisk};
use crate::zero::is_all_zero;

/// Bytes read per step.
pub(crate) const STEP: u64 = 4 << 20;
/// Steps read ahead of the one being written.
const DEPTH: usize = 3;
/// The allocation maps are fetched this much at a time.
const MAP_WINDOW: u64 = 1 << 30;
/// Zero runs shorter than this inside data are still written: holes below a
/// file system block save nothing.
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

/// One step's bytes, as read ahead. `None`: the map says nothing is there.
struct Step {
    start: u64,
    len: u64,
    src: Option<Vec<u8>>,
    base: Option<Vec<u8>>,
}

/// The schedule of steps: each block of `block` bytes in order, cut into
/// pieces of at most `STEP`.
fn schedule(size: u64, block: u64) -> impl Iterator<Item = (u64, u64)> {
    let blocks = size.div_ceil(block);
    (0..blocks).flat_map(move |b| {
        let start = b * block;
        let end = (start + block).min(size);
        (start..end).step_by(STEP as usize).map(move |s| (s, (end - s).min(STEP)))
    })
}

/// The reading side: runs on its own thread, sends steps in schedule order.
fn read_ahead(
    src: &dyn VirtualDisk,
    base: Option<&dyn VirtualDisk>,
    block: u64,
    out: SyncSender<crate::Result<Step>>,
    free: Receiver<Vec<u8>>,
) {
    let mut src_map = MapCursor::new();
    let mut base_map = MapCursor::new();
    let read = |disk: &dyn VirtualDisk, map: &mut MapCursor, start: u64, len: u64| -> crate::Result<Option<Vec<u8>>> {
        if !map.may_hold_data(disk, start..start + len)? {
            return Ok(None);
        }
        let mut buf = free.recv().unwrap_or_else(|_| vec![0u8; STEP as usize]);
        buf.resize(len as usize, 0);
        disk.read_at(&mut buf, start)?;
        Ok(Some(buf))
    };
    for (start, len) in schedule(src.size(), block) {
        let step = (|| -> crate::Result<Step> {
            let s = read(src, &mut src_map, start, len)?;
            let b = match base {
                Some(b) => read(b, &mut base_map, start, len)?,
                None => None,
            };
            Ok(Step { start, len, src: s, base: b })
        })();
        let failed = step.is_err();
        if out.send(step).is_err() || failed {
            return;
        }
    }
}

/// Walks a source (and optionally a base of the same size) block by block,
/// with reads running ahead on a second thread. Create it with
/// [`Scanner::run`].
pub(crate) struct Scanner {
    base: bool,
    sector: u64,
    steps: Receiver<crate::Result<Step>>,
    free: SyncSender<Vec<u8>>,
    zeros: Vec<u8>,
    /// Bytes read from the source (and base).
    pub(crate) bytes_read: u64,
}

impl Scanner {
    /// Runs `body` with a scanner over `src` (and `base`), whose blocks of
    /// `block` bytes must then be scanned in order with [`Scanner::block`].
    /// `sector` is the granularity of a differencing bitmap.
    pub(crate) fn run<T>(
        src: &dyn VirtualDisk,
        base: Option<&dyn VirtualDisk>,
        sector: u64,
        block: u64,
        body: impl FnOnce(&mut Scanner) -> crate::Result<T>,
    ) -> crate::Result<T> {
        let buffers = (DEPTH + 1) * if base.is_some() { 2 } else { 1 };
        let (step_tx, step_rx) = sync_channel(DEPTH);
        let (free_tx, free_rx) = sync_channel(buffers);
        for _ in 0..buffers {
            let _ = free_tx.send(vec![0u8; STEP as usize]);
        }
        std::thread::scope(|scope| {
            scope.spawn(move || read_ahead(src, base, block, step_tx, free_rx));
            let mut scanner = Scanner {
                base: base.is_some(),
                sector,
                steps: step_rx,
                free: free_tx,
                zeros: vec![0u8; STEP as usize],
                bytes_read: 0,
            };
            // Dropping the scanner (even on error) stops the reader.
            body(&mut scanner)
        })
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
        let mut done = 0u64;
        while done < len {
            let step = self.steps.recv().map_err(|_| {
                crate::export::ExportError::Invalid("the reading thread stopped before the disk's end".into())
            })??;
            debug_assert_eq!(step.start, start + done, "steps arrive in schedule order");
            let within = step.start - start;
            if step.src.is_some() || step.base.is_some() {
                self.step(within, &step, &mut plan, &mut on_data)?;
            }
            done += step.len;
            for buf in [step.src, step.base].into_iter().flatten() {
                self.bytes_read += buf.len() as u64;
                let _ = self.free.try_send(buf);
            }
        }
        if !self.base && plan.nonzero {
            plan.present = std::iter::once(0..len.div_ceil(self.sector)).collect();
        }
        Ok(plan)
    }

    fn step(
        &self,
        within: u64,
        step: &Step,
        plan: &mut BlockPlan,
        on_data: &mut impl FnMut(u64, &[u8]) -> crate::Result<()>,
    ) -> crate::Result<()> {
        let n = step.len as usize;
        let src: &[u8] = step.src.as_deref().unwrap_or(&self.zeros[..n]);
        if !self.base {
            // No base: store the non-zero runs, at GRAIN granularity.
            for (s, e) in nonzero_runs(src) {
                on_data(within + s as u64, &src[s..e])?;
                plan.nonzero = true;
                plan.source_zero = false;
            }
            return Ok(());
        }
        let base: &[u8] = step.base.as_deref().unwrap_or(&self.zeros[..n]);
        if !is_all_zero(src) {
            plan.source_zero = false;
        }
        // Sector by sector: differing sectors are stored, in runs.
        let sector = self.sector as usize;
        let first_sector = within / self.sector;
        let mut flush = |from: usize, to: usize, plan: &mut BlockPlan| -> crate::Result<()> {
            let (a, b) = (first_sector + (from / sector) as u64, first_sector + (to / sector) as u64);
            match plan.present.last_mut() {
                Some(last) if last.end == a => last.end = b,
                _ => plan.present.push(a..b),
            }
            // Write the non-zero parts; zero sectors stay holes.
            for (s, e) in nonzero_runs(&src[from..to]) {
                plan.nonzero = true;
                on_data(within + (from + s) as u64, &src[from + s..from + e])?;
            }
            Ok(())
        };
        let mut run: Option<usize> = None;
        let mut pos = 0usize;
        while pos < n {
            let end = (pos + sector).min(n);
            let differs = src[pos..end] != base[pos..end];
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

/// The runs of `bytes` that are not all zero, at GRAIN granularity.
fn nonzero_runs(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut run: Option<usize> = None;
    let mut pos = 0usize;
    while pos < bytes.len() {
        let end = (pos + GRAIN as usize).min(bytes.len());
        match (is_all_zero(&bytes[pos..end]), run) {
            (false, None) => run = Some(pos),
            (true, Some(s)) => {
                out.push((s, pos));
                run = None;
            }
            _ => {}
        }
        pos = end;
    }
    if let Some(s) = run {
        out.push((s, bytes.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_cuts_blocks_into_steps() {
        let steps: Vec<_> = schedule(10 << 20, 8 << 20).collect();
        assert_eq!(steps, vec![(0, 4 << 20), (4 << 20, 4 << 20), (8 << 20, 2 << 20)]);
        let steps: Vec<_> = schedule(5 << 20, 2 << 20).collect();
        assert_eq!(steps, vec![(0, 2 << 20), (2 << 20, 2 << 20), (4 << 20, 1 << 20)]);
    }

    #[test]
    fn nonzero_runs_keep_holes_of_a_grain_or_more() {
        let mut b = vec![0u8; 5 * 4096 + 100];
        b[10] = 1;
        b[4096 * 2 + 5] = 1;
        b[4096 * 3] = 1;
        b[5 * 4096 + 50] = 1;
        assert_eq!(nonzero_runs(&b), vec![(0, 4096), (8192, 16384), (20480, 20580)]);
    }
}
