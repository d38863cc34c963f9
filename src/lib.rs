//! vhdkit: read Microsoft virtual disks and back them up.
#![forbid(unsafe_op_in_unsafe_fn)]

pub mod disk;
pub mod export;
pub mod format;
pub mod io;
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
}

/// Result alias for the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
