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
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    /// The request cannot be expressed in the chosen format.
    #[error("cannot export: {0}")]
    Invalid(String),
}
