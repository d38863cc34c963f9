//! Raw output: the disk's bytes, with unallocated and all-zero ranges left
//! as holes so a sparse disk stays sparse.

use std::path::Path;
use std::time::Instant;

use super::output::PendingFile;
use super::{ExportError, ExportReport};
use crate::disk::{ExtentState, VirtualDisk};
use crate::zero::is_all_zero;

/// Bytes read per step: large enough for sequential throughput, small
/// enough to keep memory flat.
const STEP: usize = 4 << 20;
/// Holes are made at this granularity (a file system block).
const HOLE_GRAIN: usize = 4096;

/// Writes `disk` to `out` as a raw image. Memory: one 4 MiB buffer.
pub fn write_raw(disk: &dyn VirtualDisk, out: &Path) -> crate::Result<ExportReport> {
    let start = Instant::now();
    let size = disk.size();
    let pending = PendingFile::create(out)?;
    let mut report = ExportReport { virtual_size: size, ..Default::default() };
    let mut buf = vec![0u8; STEP];
    let mut window = 0u64;
    while window < size {
        let end = size.min(window + 256 * STEP as u64);
        for extent in disk.extents(window..end)? {
            if !matches!(extent.state, ExtentState::Data | ExtentState::Parent) {
                continue;
            }
            let mut off = extent.offset;
            while off < extent.offset + extent.length {
                let n = (extent.offset + extent.length - off).min(STEP as u64) as usize;
                let chunk = &mut buf[..n];
                disk.read_at(chunk, off)?;
                report.bytes_read += n as u64;
                report.bytes_written += write_nonzero(&pending, chunk, off)?;
                off += n as u64;
            }
        }
        window = end;
    }
    pending.file().set_len(size).map_err(pending.io_err("set length"))?;
    pending.commit()?;
    report.file_size = size;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Writes the parts of `chunk` (at `offset`) that are not all zero, in
/// runs, and returns the bytes written.
fn write_nonzero(out: &PendingFile, chunk: &[u8], offset: u64) -> Result<u64, ExportError> {
    let mut written = 0u64;
    let mut run_start: Option<usize> = None;
    let mut pos = 0usize;
    while pos < chunk.len() {
        let end = (pos + HOLE_GRAIN).min(chunk.len());
        let zero = is_all_zero(&chunk[pos..end]);
        match (zero, run_start) {
            (false, None) => run_start = Some(pos),
            (true, Some(s)) => {
                out.write_at(&chunk[s..pos], offset + s as u64)?;
                written += (pos - s) as u64;
                run_start = None;
            }
            _ => {}
        }
        pos = end;
    }
    if let Some(s) = run_start {
        out.write_at(&chunk[s..], offset + s as u64)?;
        written += (chunk.len() - s) as u64;
    }
    Ok(written)
}
