//! The disk layer's error: format errors with the file they came from, I/O
//! errors with the offset that failed, and everything about parent chains.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::format::{FormatError, Guid};

/// An error opening or reading a virtual disk.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DiskError {
    /// A structure in `path` is damaged or unsupported.
    #[error("{}: {source}", path.display())]
    Format {
        path: PathBuf,
        #[source]
        source: FormatError,
    },

    /// Reading `path` failed at byte `offset`.
    #[error("{}: read of byte {offset} failed: {source}", path.display())]
    Io {
        path: PathBuf,
        offset: u64,
        #[source]
        source: io::Error,
    },

    /// The file is neither a VHD nor a VHDX.
    #[error("{}: not a VHD or VHDX image: {reason}", path.display())]
    UnknownFormat { path: PathBuf, reason: String },

    /// No candidate path for a differencing disk's parent exists.
    #[error("{}: parent not found; tried {}", child.display(), list(tried))]
    ParentNotFound { child: PathBuf, tried: Vec<PathBuf> },

    /// Files were found where the parent should be, but none is the image the
    /// child was made against.
    #[error(
        "{}: the parent must have id {expected}{}, but {}",
        child.display(),
        alternate.map(|g| format!(" (or {g})")).unwrap_or_default(),
        found.iter().map(|(p, g)| format!("{} has {g}", p.display())).collect::<Vec<_>>().join(", ")
    )]
    ParentMismatch { child: PathBuf, expected: Guid, alternate: Option<Guid>, found: Vec<(PathBuf, Guid)> },

    /// The parent exists and matches, but cannot serve as this child's parent.
    #[error("{}: parent {} cannot be used: {reason}", child.display(), parent.display())]
    ParentIncompatible { child: PathBuf, parent: PathBuf, reason: String },

    /// The chain is deeper than allowed, or loops back on itself.
    #[error("{}: differencing chain {reason}", child.display())]
    BadChain { child: PathBuf, reason: String },

    /// A read or map request outside the virtual disk.
    #[error("request for {len} bytes at byte {offset} lies outside the {size}-byte disk")]
    OutOfRange { offset: u64, len: u64, size: u64 },

    /// A read needed a parent that was not opened.
    #[error("{}: bytes at {offset} come from a parent that was not opened", child.display())]
    ParentNotOpened { child: PathBuf, offset: u64 },
}

fn list(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "no paths (the image names none)".to_string();
    }
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

impl DiskError {
    /// Whether the image is valid but uses a feature we do not implement.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, DiskError::Format { source, .. } if source.is_unsupported())
    }

    /// Whether the error says the image itself is damaged (as opposed to
    /// unsupported, missing parents, or I/O failure).
    pub fn is_corruption(&self) -> bool {
        matches!(self, DiskError::Format { source, .. } if !source.is_unsupported())
    }

    pub(crate) fn format(path: &std::path::Path, source: FormatError) -> Self {
        DiskError::Format { path: path.to_path_buf(), source }
    }

    pub(crate) fn io(path: &std::path::Path, offset: u64, source: io::Error) -> Self {
        DiskError::Io { path: path.to_path_buf(), offset, source }
    }
}

/// Result alias for the disk layer.
pub type Result<T, E = DiskError> = std::result::Result<T, E>;
