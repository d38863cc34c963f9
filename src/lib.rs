//! vhdkit: read Microsoft virtual disks (VHD and VHDX: fixed, dynamic,
//! differencing, dirty logs), write them in any of those formats, and keep
//! small, verifiable backups of them in a content-addressed chunk store.
//!
//! ```no_run
//! use vhdkit::store::{BackupOptions, InitOptions, Store};
//! use vhdkit::export::{ExportOptions, Target};
//!
//! # fn main() -> vhdkit::Result<()> {
//! // Read-only; parents found and identity-checked; a dirty log replayed in memory.
//! let disk = vhdkit::open("vm/disk.avhdx")?;
//! println!("{:?}, {} bytes in {} image(s)", disk.info().format, disk.size(), disk.depth());
//!
//! // A store; the first backup of a name is full, the next ones incremental
//! // (a checkpoint child of the last image backed up reads only its own blocks).
//! let store = Store::init("backups", &InitOptions::default())?;
//! let report = store.backup(&disk, &BackupOptions { name: "vm-disk".into(), ..Default::default() })?;
//! println!("{} new chunks, {} deduplicated", report.new_chunks, report.dedup_chunks);
//!
//! // Every chunk is verified as it is read back; restore as VHDX.
//! store.restore(&report.id, "restored.vhdx".as_ref(), Target::Vhdx, &ExportOptions::default())?;
//! assert!(store.verify()?.ok);
//! # Ok(())
//! # }
//! ```
//!
//! Layers, each with its own error type: [`format`] parses bytes into
//! structures (no I/O, [`FormatError`]); [`disk`] opens files and chains as
//! one [`Disk`] ([`DiskError`]); [`io`] is the positional-read trait
//! everything reads through; [`export`] writes images; [`store`] keeps
//! backups ([`store::StoreError`]). [`Error`] wraps them all.
#![forbid(unsafe_op_in_unsafe_fn)]

pub mod disk;
pub mod export;
pub mod format;
pub mod io;
pub mod store;
mod zero;

pub use zero::is_all_zero;

pub use disk::{Disk, DiskError, DiskInfo, Extent, ExtentState, OpenOptions, VirtualDisk, open};
pub use format::{FormatError, Guid};

/// Any error this crate returns, by layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A damaged or unsupported structure, outside any file context.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// Opening or reading a virtual disk failed.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// Writing an output image failed.
    #[error(transparent)]
    Export(#[from] export::ExportError),
    /// A chunk store operation failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// Result alias for the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
