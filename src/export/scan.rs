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

use super::ExportOptions;
use crate::cancel::CancelToken;
use crate::disk::{Extent, ExtentState, VirtualDisk};
use crate::progress::Throttled;
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
/// Consecutive steps with nothing on either side travel as one hole step
/// (of any length, across blocks), so a sparse 64 TiB disk costs a few
/// messages rather than one per 4 MiB.
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
    let mut hole: Option<Step> = None;
    for (start, len) in schedule(src.size(), block) {
        let step = (|| -> crate::Result<Step> {
            let s = read(src, &mut src_map, start, len)?;
            let b = match base {
                Some(b) => read(b, &mut base_map, start, len)?,
                None => None,
            };
            Ok(Step { start, len, src: s, base: b })
        })();
        if let Ok(Step { src: None, base: None, .. }) = step {
            match &mut hole {
                Some(h) => h.len += len,
                None => hole = Some(Step { start, len, src: None, base: None }),
            }
            continue;
        }
        if let Some(h) = hole.take()
            && out.send(Ok(h)).is_err()
        {
            return;
        }
        let failed = step.is_err();
        if out.send(step).is_err() || failed {
            return;
        }
    }
    if let Some(h) = hole {
        let _ = out.send(Ok(h));
    }
}

/// Walks a source (and optionally a base of the same size) block by block,
/// with reads running ahead on a second thread. Create it with
/// [`Scanner::run`].
pub(crate) struct Scanner<'o> {
    base: bool,
    sector: u64,
    steps: Receiver<crate::Result<Step>>,
    /// What is left of a hole step that reached past the last block.
    hole: Option<Range<u64>>,
    free: SyncSender<Vec<u8>>,
    zeros: Vec<u8>,
    /// Bytes read from the source (and base).
    pub(crate) bytes_read: u64,
    cancel: &'o CancelToken,
    progress: Throttled<'o>,
}

impl<'o> Scanner<'o> {
    /// Runs `body` with a scanner over `src` (and `base`), whose blocks of
    /// `block` bytes must then be scanned in order with [`Scanner::block`].
    /// `sector` is the granularity of a differencing bitmap. The options'
    /// cancel token is checked, and progress reported, at every step.
    pub(crate) fn run<T>(
        src: &dyn VirtualDisk,
        base: Option<&dyn VirtualDisk>,
        sector: u64,
        block: u64,
        options: &'o ExportOptions,
        body: impl FnOnce(&mut Scanner<'o>) -> crate::Result<T>,
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
                hole: None,
                free: free_tx,
                zeros: vec![0u8; STEP as usize],
                bytes_read: 0,
                cancel: &options.cancel,
                progress: options.progress.throttled(options.operation, src.size()),
            };
            // Dropping the scanner (even on error) stops the reader.
            let result = body(&mut scanner);
            // A cancel during the last step still stops the caller's commit.
            if result.is_ok() && options.cancel.is_cancelled() {
                return Err(crate::export::ExportError::Cancelled.into());
            }
            if result.is_ok() {
                scanner.progress.finish();
            }
            result
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
            if self.cancel.is_cancelled() {
                return Err(crate::export::ExportError::Cancelled.into());
            }
            self.progress.tick(start + done);
            if let Some(h) = self.hole.take() {
                debug_assert_eq!(h.start, start + done, "steps arrive in schedule order");
                let n = (h.end - h.start).min(len - done);
                done += n;
                if h.start + n < h.end {
                    self.hole = Some(h.start + n..h.end);
                }
                continue;
            }
            let step = self.steps.recv().map_err(|_| {
                crate::export::ExportError::Invalid("the reading thread stopped before the disk's end".into())
            })??;
            debug_assert_eq!(step.start, start + done, "steps arrive in schedule order");
            if step.src.is_none() && step.base.is_none() {
                self.hole = Some(step.start..step.start + step.len);
                continue;
            }
            self.step(step.start - start, &step, &mut plan, &mut on_data)?;
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

    /// A sparse in-memory disk: `data` holds its only allocated runs.
    struct Sparse {
        info: crate::disk::DiskInfo,
        data: Vec<(u64, Vec<u8>)>,
        reads: std::sync::atomic::AtomicU64,
    }

    impl Sparse {
        fn new(size: u64, data: Vec<(u64, Vec<u8>)>) -> Self {
            let info = crate::disk::DiskInfo {
                format: crate::disk::ImageFormat::Raw,
                subformat: crate::disk::Subformat::Fixed,
                virtual_size: size,
                block_size: None,
                logical_sector_size: 512,
                physical_sector_size: 512,
                disk_id: crate::Guid::default(),
                identity: crate::Guid::default(),
                file_size: size,
                path: "sparse".into(),
                creator: "test".into(),
                parent: None,
                log_replay: None,
                warnings: Vec::new(),
            };
            Sparse { info, data, reads: Default::default() }
        }
    }

    impl VirtualDisk for Sparse {
        fn info(&self) -> &crate::disk::DiskInfo {
            &self.info
        }
        fn extents(&self, range: Range<u64>) -> crate::disk::Result<Vec<Extent>> {
            let mut out = Vec::new();
            let mut pos = range.start;
            let mut push = |offset: u64, end: u64, state| {
                if end > offset {
                    out.push(Extent { offset, length: end - offset, state, depth: 0 });
                }
            };
            for (at, bytes) in &self.data {
                let (s, e) = ((*at).max(pos), (at + bytes.len() as u64).min(range.end));
                if s >= e {
                    continue;
                }
                push(pos, s, ExtentState::Unallocated);
                push(s, e, ExtentState::Data);
                pos = e;
            }
            push(pos, range.end, ExtentState::Unallocated);
            Ok(out)
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> crate::disk::Result<()> {
            self.reads.fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
            buf.fill(0);
            let end = offset + buf.len() as u64;
            for (at, bytes) in &self.data {
                let (s, e) = ((*at).max(offset), (at + bytes.len() as u64).min(end));
                if s < e {
                    buf[(s - offset) as usize..(e - offset) as usize]
                        .copy_from_slice(&bytes[(s - at) as usize..(e - at) as usize]);
                }
            }
            Ok(())
        }
    }

    /// Long unallocated stretches travel as single hole steps that the
    /// scanner must cut back into blocks: blocks smaller than a step, larger
    /// than a step, and a hole running to the disk's end all come out with
    /// exactly the data written and nothing else, and holes are not read.
    #[test]
    fn holes_spanning_many_blocks_are_cut_back_into_blocks() {
        let size = (1u64 << 30) + (3 << 20);
        let pattern =
            |seed: u8, len: usize| (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed | 1).collect::<Vec<_>>();
        let data = vec![
            (0, pattern(1, 8192)),
            ((300 << 20) + 4096, pattern(2, 5 << 20)),
            (size - (1 << 20) - 4096, pattern(3, 4096)),
        ];
        let disk = Sparse::new(size, data.clone());
        for block in [1u64 << 20, 32 << 20, 256 << 20] {
            disk.reads.store(0, std::sync::atomic::Ordering::Relaxed);
            let mut found: Vec<(u64, Vec<u8>)> = Vec::new();
            let mut stored_blocks = Vec::new();
            let options = ExportOptions::default();
            Scanner::run(&disk, None, 512, block, &options, |scanner| {
                for b in 0..size.div_ceil(block) {
                    let start = b * block;
                    let len = block.min(size - start);
                    let plan = scanner.block(start, len, |within, bytes| {
                        found.push((start + within, bytes.to_vec()));
                        Ok(())
                    })?;
                    if plan.stores() {
                        stored_blocks.push(b);
                    }
                }
                Ok(())
            })
            .unwrap();
            let mut want_blocks: Vec<u64> =
                data.iter().flat_map(|(at, bytes)| at / block..=(at + bytes.len() as u64 - 1) / block).collect();
            want_blocks.dedup();
            assert_eq!(stored_blocks, want_blocks, "block size {block}");
            // Every written byte is where the disk has it, and all of it is there.
            let mut rebuilt = Sparse::new(size, found);
            rebuilt.data.sort_by_key(|(at, _)| *at);
            for (at, bytes) in &data {
                let mut back = vec![0u8; bytes.len()];
                rebuilt.read_at(&mut back, *at).unwrap();
                assert!(&back == bytes, "data at {at} lost with block size {block}");
            }
            let total: u64 = rebuilt.data.iter().map(|(_, b)| b.len() as u64).sum();
            assert!(total < 8 << 20, "{total} bytes written for 5 MiB of data");
            let read = disk.reads.load(std::sync::atomic::Ordering::Relaxed);
            assert!(read <= 16 << 20, "{read} bytes read for 5 MiB of data (block size {block})");
        }
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
