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
    /// A disk that is not an image file failed with an error of its own:
    /// a backup read from a store, an overlay, a caller's own disk.
    /// `kind` sorts it as its own error would be sorted.
    #[error("{}: {source}", path.display())]
    Source {
        /// The disk, as it names itself.
        path: PathBuf,
        /// What kind of failure it is.
        kind: crate::ErrorKind,
        /// The disk's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A structure in `path` is damaged or unsupported.
    #[error("{}: {source}", path.display())]
    Format {
        /// The image file.
        path: PathBuf,
        /// What is wrong, and at which byte.
        #[source]
        source: FormatError,
    },

    /// Reading `path` failed at byte `offset`.
    #[error("{}: read of byte {offset} failed: {source}", path.display())]
    Io {
        /// The image file.
        path: PathBuf,
        /// Where the read started.
        offset: u64,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },

    /// The file is neither a VHD nor a VHDX.
    #[error("{}: not a VHD or VHDX image: {reason}", path.display())]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },

    /// No candidate path for a differencing disk's parent exists.
    #[error("{}: parent not found; tried {}", child.display(), list(tried))]
    ParentNotFound {
        /// The differencing image.
        child: PathBuf,
        /// Every path tried, in order.
        tried: Vec<PathBuf>,
    },

    /// Files were found where the parent should be, but none is the image the
    /// child was made against.
    #[error(
        "{}: the parent must have id {expected}{}, but {}",
        child.display(),
        alternate.map(|g| format!(" (or {g})")).unwrap_or_default(),
        found.iter().map(|(p, g)| format!("{} has {g}", p.display())).collect::<Vec<_>>().join(", ")
    )]
    ParentMismatch {
        /// The differencing image.
        child: PathBuf,
        /// The identity the parent must have.
        expected: Guid,
        /// A second identity also accepted (VHDX `parent_linkage2`).
        alternate: Option<Guid>,
        /// The files found and their identities.
        found: Vec<(PathBuf, Guid)>,
    },

    /// The parent exists and matches, but cannot serve as this child's parent.
    #[error("{}: parent {} cannot be used: {reason}", child.display(), parent.display())]
    ParentIncompatible {
        /// The differencing image.
        child: PathBuf,
        /// The parent found.
        parent: PathBuf,
        /// Why it cannot serve (another size, sector size...).
        reason: String,
    },

    /// The chain is deeper than allowed, or loops back on itself.
    #[error("{}: differencing chain {reason}", child.display())]
    BadChain {
        /// The image whose chain it is.
        child: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A read or map request outside the virtual disk.
    #[error("request for {len} bytes at byte {offset} lies outside the {size}-byte disk")]
    OutOfRange {
        /// First byte asked for.
        offset: u64,
        /// Bytes asked for.
        len: u64,
        /// The disk's size.
        size: u64,
    },

    /// A read needed a parent that was not opened.
    #[error("{}: bytes at {offset} come from a parent that was not opened", child.display())]
    ParentNotOpened {
        /// The image opened without its parents.
        child: PathBuf,
        /// The virtual disk offset that needed the parent.
        offset: u64,
    },
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

    /// The crate-wide kind of this error.
    pub fn kind(&self) -> crate::ErrorKind {
        use crate::ErrorKind as K;
        match self {
            DiskError::Source { kind, .. } => *kind,
            DiskError::Format { source, .. } => source.kind(),
            DiskError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => K::NotFound,
            DiskError::Io { .. } => K::Io,
            DiskError::UnknownFormat { .. } => K::InvalidInput,
            DiskError::ParentNotFound { .. } | DiskError::ParentMismatch { .. } => K::NotFound,
            DiskError::ParentIncompatible { .. } => K::InvalidInput,
            DiskError::BadChain { .. } => K::Corrupt,
            DiskError::OutOfRange { .. } | DiskError::ParentNotOpened { .. } => K::InvalidInput,
        }
    }

    /// The operating system's error kind, for a failed read.
    pub fn io_error_kind(&self) -> Option<io::ErrorKind> {
        match self {
            DiskError::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }

    /// A failure of a disk that is not an image file (see
    /// [`DiskError::Source`]): what an implementor of
    /// [`VirtualDisk`](crate::VirtualDisk) over other storage returns.
    pub fn from_source(
        path: impl Into<PathBuf>,
        kind: crate::ErrorKind,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        DiskError::Source { path: path.into(), kind, source: Box::new(source) }
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
