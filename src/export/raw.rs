//! Raw output: the disk's bytes, with unallocated and all-zero ranges left
//! as holes so a sparse disk stays sparse.

use std::time::Instant;

use super::output::{Dest, Output};
use super::scan::{STEP, Scanner};
use super::{ExportOptions, ExportReport};
use crate::disk::VirtualDisk;

/// Writes `disk` to `out` as a raw image. Memory: a few 4 MiB buffers.
pub fn write_raw(
    disk: &dyn VirtualDisk,
    out: &std::path::Path,
    options: &ExportOptions,
) -> crate::Result<ExportReport> {
    write(disk, Dest::File(out), options)
}

/// [`write_raw`] to any destination.
pub(crate) fn write(disk: &dyn VirtualDisk, dest: Dest<'_>, options: &ExportOptions) -> crate::Result<ExportReport> {
    let start = Instant::now();
    let size = disk.size();
    let pending = dest.create()?;
    // Sized first: writes then fill a file rather than extend it.
    pending.set_len(size)?;
    let mut report = ExportReport { virtual_size: size, file_size: size, ..Default::default() };
    write_flat(disk, &pending, &mut report, options)?;
    pending.commit(options.sync, options.replace)?;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Writes the disk's bytes at offset 0 of `pending`, one for one, leaving
/// zero runs as holes: the body of a raw image and of a fixed VHD. Adds the
/// bytes read and written to `report`.
pub(crate) fn write_flat(
    disk: &dyn VirtualDisk,
    pending: &Output<'_>,
    report: &mut ExportReport,
    options: &ExportOptions,
) -> crate::Result<()> {
    let size = disk.size();
    let window = 16 * STEP;
    Scanner::run(disk, None, 512, window, options, |scanner| {
        let mut off = 0u64;
        while off < size {
            let len = (size - off).min(window);
            scanner.block(off, len, |within, bytes| {
                report.bytes_written += bytes.len() as u64;
                pending.write_at(bytes, off + within).map_err(Into::into)
            })?;
            off += len;
        }
        report.bytes_read += scanner.bytes_read;
        Ok(())
    })
}
