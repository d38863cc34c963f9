//! Writers: stream any [`VirtualDisk`] (an image, a flattened chain, a
//! backup) to raw, VHD or VHDX, or write a differencing child that holds
//! only what differs from a parent.
//!
//! Output goes to a temporary file beside the target and is renamed into
//! place only when complete and flushed, so a failed or interrupted export
//! never leaves a half-written file under the requested name. Memory is the
//! output's block table plus a few MiB of buffers, whatever the disk's size;
//! unallocated and all-zero ranges are never written (holes in raw and fixed
//! outputs, unallocated blocks in dynamic ones).
//!
//! May import: `disk`, `format`, `io` and the leaf helpers (cancellation,
//! progress, zero detection); never `store` or `nbd`.

mod error;
mod output;
mod parent;
mod raw;
mod scan;
mod stream;
mod vhd;
mod vhdx;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Serialize;

pub use error::ExportError;
use output::Dest;
pub use output::ExportSink;
pub use raw::write_raw;
pub use stream::{InPlace, write_raw_in_place, write_raw_to};
pub use vhd::{DEFAULT_VHD_BLOCK, MAX_VHD_SIZE};
pub use vhdx::DEFAULT_VHDX_BLOCK;

use crate::cancel::CancelToken;
use crate::disk::{OpenOptions, VirtualDisk};
use crate::format::Guid;
use crate::progress::{Operation, ProgressSink};

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// The disk's bytes, sparse.
    Raw,
    /// Dynamic VHD (or a differencing child with a parent).
    Vhd,
    /// Fixed VHD.
    VhdFixed,
    /// Dynamic VHDX (or a differencing child with a parent).
    Vhdx,
    /// Fixed VHDX.
    VhdxFixed,
}

impl FromStr for Target {
    type Err = ExportError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "raw" => Target::Raw,
            "vhd" => Target::Vhd,
            "vhd-fixed" => Target::VhdFixed,
            "vhdx" => Target::Vhdx,
            "vhdx-fixed" => Target::VhdxFixed,
            other => {
                return Err(ExportError::Invalid(format!(
                    "unknown format {other:?} (raw, vhd, vhd-fixed, vhdx, vhdx-fixed)"
                )));
            }
        })
    }
}

impl Target {
    /// The file extension for this format.
    pub fn extension(&self) -> &'static str {
        match self {
            Target::Raw => "raw",
            Target::Vhd | Target::VhdFixed => "vhd",
            Target::Vhdx | Target::VhdxFixed => "vhdx",
        }
    }
}

/// Writes `bytes` to `out` under a temporary name, renamed into place when
/// complete (and flushed first when `sync`): small files such as a restore
/// point's attachments.
pub fn write_file_atomically(out: &Path, bytes: &[u8], sync: bool) -> crate::Result<()> {
    write_file_atomically_with(out, bytes, sync, true)
}

/// [`write_file_atomically`], keeping an existing `out` (failing with
/// `AlreadyExists`) unless `replace`.
pub fn write_file_atomically_with(out: &Path, bytes: &[u8], sync: bool, replace: bool) -> crate::Result<()> {
    let pending = output::PendingFile::create(out)?;
    pending.write_at(bytes, 0)?;
    pending.commit(sync, replace)?;
    Ok(())
}

/// How to write an output. Build it with `ExportOptions::default()` and set
/// the fields you need.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ExportOptions {
    /// Block size of a VHD or VHDX output (defaults: 2 MiB and 32 MiB).
    pub block_size: Option<u32>,
    /// Write a differencing child of this image (same format as the output,
    /// same size): only sectors where the disk differs from it are stored,
    /// and the child records the parent's identity and paths.
    pub parent: Option<PathBuf>,
    /// Give the output this disk id (VHDX virtual disk id, VHD unique id)
    /// instead of a fresh one: a restore that must look like the original
    /// disk to its VM.
    pub disk_id: Option<Guid>,
    /// How to open the parent.
    pub open: OpenOptions,
    /// Flush the output to stable storage before renaming it into place
    /// (default). Turning it off is for benchmarks and scratch copies: a
    /// crash may then leave a complete-looking file with missing data.
    pub sync: bool,
    /// Replace an output file that exists when the export is put in place
    /// (default). Off, an output that appeared while the export was being
    /// written (or was there before) is kept and the export fails with
    /// `AlreadyExists`: what a restore that must not clobber asks for.
    pub replace: bool,
    /// Checked every few MiB; a cancelled export leaves no output file.
    pub cancel: CancelToken,
    /// Receives progress.
    pub progress: ProgressSink,
    /// How progress reports name the operation (restore sets `Restore`).
    pub(crate) operation: Operation,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            block_size: None,
            parent: None,
            disk_id: None,
            open: OpenOptions::default(),
            sync: true,
            replace: true,
            cancel: CancelToken::default(),
            progress: ProgressSink::default(),
            operation: Operation::Export,
        }
    }
}

/// What an export did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ExportReport {
    /// Virtual size of the disk exported.
    pub virtual_size: u64,
    /// Bytes read from the source (and, for a child, its parent).
    pub bytes_read: u64,
    /// Bytes of disk data written (holes and unallocated blocks are not).
    pub bytes_written: u64,
    /// Size of the output file.
    pub file_size: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Writes `disk` to `out` in `target` format. See the module documentation
/// for the guarantees.
pub fn export(
    disk: &dyn VirtualDisk,
    out: &Path,
    target: Target,
    options: &ExportOptions,
) -> crate::Result<ExportReport> {
    if options.parent.is_some() && !matches!(target, Target::Vhd | Target::Vhdx) {
        return Err(ExportError::Invalid("a differencing child is written as vhd or vhdx".into()).into());
    }
    write_to(disk, Dest::File(out), target, options)
}

/// Writes `disk` in `target` format into `sink` (a caller's stream or
/// buffer; see [`ExportSink`] for what it must do), named `name` in
/// messages. A differencing child is not written this way: its parent
/// locators are paths relative to its own file.
pub fn export_to_sink(
    disk: &dyn VirtualDisk,
    sink: &dyn ExportSink,
    name: &Path,
    target: Target,
    options: &ExportOptions,
) -> crate::Result<ExportReport> {
    if options.parent.is_some() {
        return Err(ExportError::Invalid(
            "a differencing child is written to a file: its parent locators are relative to it".into(),
        )
        .into());
    }
    write_to(disk, Dest::Sink(sink, name), target, options)
}

fn write_to(
    disk: &dyn VirtualDisk,
    dest: Dest<'_>,
    target: Target,
    options: &ExportOptions,
) -> crate::Result<ExportReport> {
    match target {
        Target::Raw => raw::write(disk, dest, options),
        Target::Vhd => vhd::write_dynamic(disk, dest, options),
        Target::VhdFixed => vhd::write_fixed(disk, dest, options),
        Target::Vhdx => vhdx::write(disk, dest, false, options),
        Target::VhdxFixed => vhdx::write(disk, dest, true, options),
    }
}
