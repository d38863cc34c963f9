//! Raw output without a file of our own: into any [`Write`] (a pipe, a
//! socket, stdout) and into an existing file or block device in place.
//!
//! Both walk the disk in order, 4 MiB at a time, reading one step ahead on
//! a second thread. A stream cannot seek, so unallocated ranges go out as
//! zeros; in place they are written as zeros too unless the caller says the
//! target already reads as zeros ([`InPlace::AssumeZeroed`]).

use std::fs::{File, OpenOptions as FsOpen};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use super::scan::STEP;
use super::{ExportError, ExportOptions, ExportReport};
use crate::disk::{ExtentState, VirtualDisk};
use crate::io::durable::write_all_at;
use crate::zero::is_all_zero;

/// How an in-place restore treats ranges where the disk holds no data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum InPlace {
    /// Write every byte, zeros included: the result is right whatever the
    /// target held before (the default).
    #[default]
    WriteAll,
    /// Write only ranges that may hold data: the caller guarantees the
    /// target already reads as zeros (a new thin LUN, a device zeroed with
    /// `blkdiscard -z`). Faster on sparse disks; wrong on a used device.
    AssumeZeroed,
}

/// Zero runs this long inside data are skipped by an assume-zeroed restore.
const ZERO_GRAIN: usize = 64 * 1024;

/// One step: its offset and length, and its bytes unless the map says it
/// holds nothing.
type Step = (u64, u64, Option<Vec<u8>>);

/// Reads `disk` step by step on a second thread and hands each step to
/// `sink` in order. Checks the cancel token and reports progress per step.
fn walk(
    disk: &dyn VirtualDisk,
    options: &ExportOptions,
    report: &mut ExportReport,
    mut sink: impl FnMut(&Step) -> crate::Result<()>,
) -> crate::Result<()> {
    let size = disk.size();
    let (tx, rx) = sync_channel::<crate::Result<Step>>(2);
    let (free_tx, free_rx) = sync_channel::<Vec<u8>>(4);
    let mut progress = options.progress.throttled(options.operation, size);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let window = 16 * STEP;
            let mut extents = Vec::new();
            let mut window_start = 0u64;
            let mut off = 0u64;
            while off < size {
                let len = (size - off).min(STEP);
                if off >= window_start + window || extents.is_empty() {
                    window_start = off;
                    match disk.extents(off..(off + window).min(size)) {
                        Ok(e) => extents = e,
                        Err(e) => {
                            let _ = tx.send(Err(e.into()));
                            return;
                        }
                    }
                }
                let data = extents.iter().any(|e| {
                    e.offset < off + len
                        && e.offset + e.length > off
                        && matches!(e.state, ExtentState::Data | ExtentState::Parent)
                });
                let step = if data {
                    let mut buf = free_rx.try_recv().unwrap_or_default();
                    buf.resize(len as usize, 0);
                    disk.read_at(&mut buf, off).map(|()| (off, len, Some(buf))).map_err(crate::Error::from)
                } else {
                    Ok((off, len, None))
                };
                let failed = step.is_err();
                if tx.send(step).is_err() || failed {
                    return;
                }
                off += len;
            }
        });
        for step in rx {
            if options.cancel.is_cancelled() {
                return Err(ExportError::Cancelled.into());
            }
            let step = step?;
            sink(&step)?;
            report.bytes_read += step.2.as_ref().map_or(0, |b| b.len() as u64);
            progress.tick(step.0 + step.1);
            if let Some(buf) = step.2 {
                let _ = free_tx.try_send(buf);
            }
        }
        // A cancel during the last step still stops the commit.
        if options.cancel.is_cancelled() {
            return Err(ExportError::Cancelled.into());
        }
        progress.finish();
        Ok(())
    })
}

/// Streams `disk` as a raw image into `out`, every byte in order (holes as
/// zeros), then flushes it. `name` names the stream in errors. Memory: a
/// few 4 MiB buffers.
pub fn write_raw_to(
    disk: &dyn VirtualDisk,
    out: &mut dyn Write,
    name: &Path,
    options: &ExportOptions,
) -> crate::Result<ExportReport> {
    let started = Instant::now();
    let size = disk.size();
    let mut report = ExportReport { virtual_size: size, file_size: size, ..Default::default() };
    let zeros = vec![0u8; STEP as usize];
    let io = |action| move |source| ExportError::Io { path: name.to_path_buf(), action, source };
    walk(disk, options, &mut report, |(_, len, bytes)| {
        let bytes = bytes.as_deref().unwrap_or(&zeros[..*len as usize]);
        out.write_all(bytes).map_err(io("write"))?;
        Ok(())
    })?;
    out.flush().map_err(io("flush"))?;
    report.bytes_written = size;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Writes `disk` as a raw image over the existing file or block device
/// `target`, which must hold at least the disk's size (bytes past it are
/// left alone). See [`InPlace`] for what is written; with
/// `options.sync` the target is flushed before this returns.
pub fn write_raw_in_place(
    disk: &dyn VirtualDisk,
    target: &Path,
    mode: InPlace,
    options: &ExportOptions,
) -> crate::Result<ExportReport> {
    let started = Instant::now();
    let size = disk.size();
    let path: PathBuf = target.to_path_buf();
    let io = |action: &'static str| {
        let path = path.clone();
        move |source| ExportError::Io { path, action, source }
    };
    // Neither created nor truncated: in place means the target exists.
    let mut file: File = FsOpen::new().write(true).open(target).map_err(io("open"))?;
    let device = Device::open(&mut file, target).map_err(io("measure"))?;
    let capacity = device.capacity;
    if !size.is_multiple_of(u64::from(device.sector)) {
        return Err(ExportError::Invalid(format!(
            "the disk's {size} bytes are not whole {}-byte sectors of {}",
            device.sector,
            target.display()
        ))
        .into());
    }
    if capacity < size {
        return Err(ExportError::Invalid(format!(
            "{} holds {capacity} bytes; the disk needs {size}",
            target.display()
        ))
        .into());
    }
    let mut report = ExportReport { virtual_size: size, file_size: capacity, ..Default::default() };
    let zeros = vec![0u8; STEP as usize];
    let mut written = 0u64;
    let mut device = device;
    walk(disk, options, &mut report, |(at, len, bytes)| {
        match (bytes, mode) {
            (Some(b), InPlace::WriteAll) => {
                device.write(&file, b, *at).map_err(io("write"))?;
                written += b.len() as u64;
            }
            (None, InPlace::WriteAll) => {
                device.write(&file, &zeros[..*len as usize], *at).map_err(io("write"))?;
                written += len;
            }
            // Over zeros, only non-zero pieces need writing (64 KiB
            // pieces: whole sectors of any device).
            (Some(b), _) => {
                for (i, piece) in b.chunks(ZERO_GRAIN).enumerate() {
                    if !is_all_zero(piece) {
                        device.write(&file, piece, at + (i * ZERO_GRAIN) as u64).map_err(io("write"))?;
                        written += piece.len() as u64;
                    }
                }
            }
            (None, _) => {}
        }
        Ok(())
    })?;
    if options.sync {
        file.sync_all().map_err(io("sync"))?;
    }
    report.bytes_written = written;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// What an in-place target is: its capacity and sector size, and on
/// Windows, for a disk or volume device, the aligned buffer its writes go
/// through (a volume is locked and dismounted first, and refused if in use).
struct Device {
    capacity: u64,
    sector: u32,
    #[cfg(windows)]
    bounce: Option<(crate::io::device::Aligned, bool)>,
}

impl Device {
    fn open(file: &mut File, target: &Path) -> std::io::Result<Device> {
        #[cfg(windows)]
        if crate::io::device::is_device_path(target) {
            use crate::io::device;
            let volume = device::is_volume_path(target);
            if volume {
                device::lock_volume(file, target)?;
            }
            let sector = device::sector_size(file);
            return Ok(Device {
                capacity: device::length(file)?,
                sector,
                bounce: Some((device::Aligned::new(STEP as usize, sector.max(4096) as usize), !volume)),
            });
        }
        let _ = target;
        Ok(Device {
            capacity: file.seek(SeekFrom::End(0))?,
            sector: 1,
            #[cfg(windows)]
            bounce: None,
        })
    }

    /// Writes `buf` at `at`: through the aligned buffer on a device.
    fn write(&mut self, file: &File, buf: &[u8], at: u64) -> std::io::Result<()> {
        #[cfg(windows)]
        if let Some((bounce, whole_disk)) = self.bounce.as_mut() {
            for (i, piece) in buf.chunks(STEP as usize).enumerate() {
                let r = write_all_at(file, bounce.fill(piece), at + (i as u64) * STEP);
                if let Err(e) = r {
                    // Windows refuses writes into a mounted volume's sectors
                    // of a whole disk with access denied.
                    if *whole_disk && e.raw_os_error() == Some(5) {
                        return Err(std::io::Error::new(
                            e.kind(),
                            format!(
                                "a volume on this disk is mounted; take the disk offline first \
                                 (Set-Disk -IsOffline $true): {e}"
                            ),
                        ));
                    }
                    return Err(e);
                }
            }
            return Ok(());
        }
        write_all_at(file, buf, at)
    }
}
