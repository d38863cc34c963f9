//! The crate's error, and the kinds a caller decides on.
//!
//! Each layer has its own error enum ([`FormatError`], [`DiskError`],
//! [`ExportError`], [`StoreError`]), with what is wrong and where (file, key,
//! byte offset, operation). [`Error`] wraps them without flattening anything
//! into a string, and [`Error::kind`] sorts every one of them into the few
//! [`ErrorKind`]s a product acts on, so a caller can decide (retry, alert,
//! give up) without matching messages.

use crate::disk::DiskError;
use crate::export::ExportError;
use crate::format::FormatError;
use crate::fs::FsError;
use crate::store::StoreError;

/// What kind of failure an error is, across layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Something asked for does not exist: a file, a parent image, a store,
    /// a backup.
    NotFound,
    /// Bytes that should be sound are not: a damaged image, pack, index or
    /// manifest, a chunk without a sound copy, a chain that loops.
    Corrupt,
    /// Valid, but uses a feature or version this crate does not implement.
    Unsupported,
    /// Another operation holds a lock this one conflicts with; try later.
    Busy,
    /// The operating system refused a read or write (see
    /// [`Error::io_error_kind`] for which: a full disk, a permission...).
    Io,
    /// The request itself is wrong: options out of range, a change list for
    /// another disk, an ambiguous backup name.
    InvalidInput,
    /// The caller cancelled the operation; nothing was committed.
    Cancelled,
    /// An encrypted store was opened without its key, or with a key that
    /// is none of its keys (or a key was given for a plain store).
    Unauthorized,
    /// Something vhdkit did not expect of itself: a worker thread that
    /// panicked, structures that should agree and do not. A bug to report,
    /// with the message; retrying may not help.
    Internal,
}

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
    Export(#[from] ExportError),
    /// A chunk store operation failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Finding partitions or reading a file system inside a disk failed.
    #[error(transparent)]
    Fs(#[from] FsError),
}

impl Error {
    /// The kind of failure, whichever layer it came from.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Format(e) => e.kind(),
            Error::Disk(e) => e.kind(),
            Error::Export(e) => e.kind(),
            Error::Store(e) => e.kind(),
            Error::Fs(e) => e.kind(),
        }
    }

    /// The operating system's error kind, when an I/O call failed (for
    /// example [`std::io::ErrorKind::StorageFull`] for a full disk).
    pub fn io_error_kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            Error::Format(_) => None,
            Error::Disk(e) => e.io_error_kind(),
            Error::Export(e) => e.io_error_kind(),
            Error::Store(e) => e.io_error_kind(),
            Error::Fs(e) => e.io_error_kind(),
        }
    }
}

/// Result alias for the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
