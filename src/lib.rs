//! vhdkit: read Microsoft virtual disks (VHD and VHDX: fixed, dynamic,
//! differencing, dirty logs) and write them back in any of those formats.
//!
//! ```no_run
//! use vhdkit::export::{ExportOptions, Target, export};
//! use vhdkit::ExtentState;
//!
//! # fn main() -> vhdkit::Result<()> {
//! // Read-only; parents found and identity-checked; a dirty log replayed in memory.
//! let disk = vhdkit::open("vm/disk.avhdx")?;
//! let info = disk.info();
//! println!("{:?} {:?}, {} bytes", info.format, info.subformat, disk.size());
//!
//! // Only ranges that hold data need reading.
//! let data: u64 = disk.extents(0..disk.size())?.iter()
//!     .filter(|e| e.state == ExtentState::Data)
//!     .map(|e| e.length)
//!     .sum();
//! println!("{data} bytes of data");
//!
//! // Flatten the chain into one dynamic VHDX.
//! export(&disk, "flat.vhdx".as_ref(), Target::Vhdx, &ExportOptions::default())?;
//! # Ok(())
//! # }
//! ```
//!
//! Layers: [`format`] parses bytes into structures (no I/O), [`disk`] opens
//! files and chains as one [`Disk`], [`io`] is the positional-read trait
//! everything reads through, and [`export`] writes images.
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
