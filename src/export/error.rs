//! The export layer's error.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// An error writing an output image.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ExportError {
    /// Writing, syncing or renaming the output failed.
    #[error("{}: {action} failed: {source}", path.display())]
    Io {
        /// The file being written (its temporary name until the rename).
        path: PathBuf,
        /// What was being done: `create`, `write`, `sync`, `rename into place`...
        action: &'static str,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The request cannot be expressed in the chosen format.
    #[error("cannot export: {0}")]
    Invalid(String),
    /// The caller cancelled the export; the output was not created.
    #[error("the export was cancelled")]
    Cancelled,
}

impl ExportError {
    /// The crate-wide kind of this error.
    pub fn kind(&self) -> crate::ErrorKind {
        match self {
            ExportError::Io { .. } => crate::ErrorKind::Io,
            ExportError::Invalid(_) => crate::ErrorKind::InvalidInput,
            ExportError::Cancelled => crate::ErrorKind::Cancelled,
        }
    }

    /// The operating system's error kind, for a failed write.
    pub fn io_error_kind(&self) -> Option<io::ErrorKind> {
        match self {
            ExportError::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
}
