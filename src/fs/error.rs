//! The file-system layer's error: what is wrong, in which file system, at
//! which path or byte.

use std::io;

use thiserror::Error;

use super::FsKind;
use crate::disk::DiskError;

/// An error finding partitions or reading a file system.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FsError {
    /// Reading the disk under the file system failed (a damaged image, a
    /// chunk without a sound copy in a store...): the disk's own error.
    #[error(transparent)]
    Disk(#[from] DiskError),

    /// A partition table is damaged: `what` at disk byte `offset`.
    #[error("partition table: {what} at byte {offset}: {reason}")]
    PartitionTable {
        /// The structure: "MBR", "GPT header", "GPT entries", "EBR".
        what: &'static str,
        /// Where it lies on the disk.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },

    /// No partition answers to what was asked, or the answer is ambiguous.
    #[error("partition {spec}: {reason}")]
    Partition {
        /// What the caller named (a number, a label, or "" for the default).
        spec: String,
        /// Why it cannot be used, with what there is.
        reason: String,
    },

    /// The file system's structures are damaged where `path` was read.
    #[error("{fs} at disk byte {volume_offset}: {path}: {reason}")]
    Corrupt {
        /// The file system.
        fs: FsKind,
        /// Where its volume starts on the disk.
        volume_offset: u64,
        /// The path being read ("" for the volume itself).
        path: String,
        /// What its reader said.
        reason: String,
    },

    /// Nothing exists at `path`.
    #[error("{fs}: {path}: no such file or folder")]
    NotFound {
        /// The file system.
        fs: FsKind,
        /// The path asked for.
        path: String,
    },

    /// `path` is a file where a folder was needed, or the other way round.
    #[error("{fs}: {path}: {reason}")]
    WrongKind {
        /// The file system.
        fs: FsKind,
        /// The path asked for.
        path: String,
        /// "not a folder", "is a folder", "not a symbolic link".
        reason: &'static str,
    },

    /// The file uses something this crate cannot read (an NTFS-compressed
    /// or encrypted file, a WOF-compressed one...). Never read as bytes.
    #[error("{fs}: {path}: {what} is not supported")]
    Unsupported {
        /// The file system (or "disk" for a whole file system kind).
        fs: FsKind,
        /// The path.
        path: String,
        /// What it uses.
        what: String,
    },

    /// A path that cannot name anything: empty components, `..` where
    /// that would escape, a stream name on a file system without streams.
    #[error("{path}: {reason}")]
    InvalidPath {
        /// The path given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A file system reader crate panicked on this volume's bytes. The
    /// volume is closed: later calls fail with this error again.
    #[error("{fs}: the reader stopped on damaged structures at {path}: {message}")]
    Panicked {
        /// The file system.
        fs: FsKind,
        /// The path being read.
        path: String,
        /// The panic's message.
        message: String,
    },

    /// Writing a file out (`get`) failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file being written.
        path: std::path::PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },

    /// The caller cancelled the walk or read.
    #[error("cancelled")]
    Cancelled,
}

impl FsError {
    /// The kind of failure, for a caller deciding what to do.
    pub fn kind(&self) -> crate::ErrorKind {
        use crate::ErrorKind as K;
        match self {
            FsError::Disk(e) => e.kind(),
            FsError::PartitionTable { .. } | FsError::Corrupt { .. } | FsError::Panicked { .. } => K::Corrupt,
            FsError::Partition { .. } | FsError::InvalidPath { .. } | FsError::WrongKind { .. } => K::InvalidInput,
            FsError::NotFound { .. } => K::NotFound,
            FsError::Unsupported { .. } => K::Unsupported,
            FsError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => K::NotFound,
            FsError::Io { .. } => K::Io,
            FsError::Cancelled => K::Cancelled,
        }
    }

    /// The operating system's error kind, for a failed write or read.
    pub fn io_error_kind(&self) -> Option<io::ErrorKind> {
        match self {
            FsError::Disk(e) => e.io_error_kind(),
            FsError::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
}

/// Result alias for the layer.
pub type Result<T, E = FsError> = std::result::Result<T, E>;
