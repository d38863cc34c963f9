//! The store layer's error.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// An error from the chunk store.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Reading or writing a store file failed.
    #[error("{}: {action} failed: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },

    /// A store file is damaged: what, where (file and byte offset), and why.
    #[error("{}: {structure} at byte {offset}: {reason}", path.display())]
    Corrupt { path: PathBuf, structure: &'static str, offset: u64, reason: String },

    /// The folder is not a store, or one of a format or version we do not read.
    #[error("{}: {reason}", path.display())]
    NotAStore { path: PathBuf, reason: String },

    /// Another process holds a lock this operation conflicts with.
    #[error("the store at {} is busy: {holder} holds a conflicting lock; try again when it finishes", path.display())]
    StoreBusy { path: PathBuf, holder: &'static str },

    /// No backup matches what was asked for.
    #[error("no backup {0:?} in the store")]
    NoSuchBackup(String),

    /// A chunk a backup needs is missing or every stored copy is damaged.
    #[error("chunk {id} (slot {slot} of backup {backup}) cannot be read: {reason}")]
    ChunkUnavailable { id: String, backup: String, slot: u64, reason: String },

    /// The change information offered for an incremental does not match the
    /// previous backup's source: storing it could record a wrong disk.
    #[error("refusing an incremental: {0} (use --force to back up anyway)")]
    BaselineMismatch(String),

    /// A request the store cannot carry out as asked.
    #[error("{0}")]
    Invalid(String),
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, action: &'static str) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { path, action, source }
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        structure: &'static str,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        StoreError::Corrupt { path: path.into(), structure, offset, reason: reason.into() }
    }
}

/// Result alias for the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
