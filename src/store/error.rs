//! The store layer's error.
//!
//! Three sides can fail in a store operation, and they stay apart: the
//! store's own files ([`StoreError::Io`], [`StoreError::Corrupt`]), the
//! disk being backed up ([`StoreError::Source`]) and the file a restore
//! writes ([`StoreError::Output`]). Each carries the path or key, the
//! operation and the underlying error unflattened.

use crate::store::model::malformed::Malformed;
use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::ErrorKind;

/// An error from the chunk store.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Reading or writing one of the store's own files failed.
    #[error("{}: {action} failed: {source}", path.display())]
    Io {
        /// The store file (or the store folder, for a listing).
        path: PathBuf,
        /// What was being done: `write pack`, `commit manifest`, `list`...
        action: &'static str,
        /// What the operating system said ([`io::Error::kind`] tells a full
        /// disk from a permission problem).
        #[source]
        source: io::Error,
    },

    /// A store file is damaged: what, where (file and byte offset), and why.
    #[error("{}: {structure} at byte {offset}: {reason}", path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Which structure: `manifest`, `pack trailer`, `index file`...
        structure: &'static str,
        /// Byte offset in the file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },

    /// The location holds no store.
    #[error("{}: not a vhdkit store: {reason}", path.display())]
    NotAStore {
        /// Where a store was looked for.
        path: PathBuf,
        /// Why it is not one.
        reason: String,
    },

    /// A store of a format version (or with a setting) this crate does not read.
    #[error("{}: {reason}", path.display())]
    UnsupportedStore {
        /// The store's config file.
        path: PathBuf,
        /// What is not supported.
        reason: String,
    },

    /// Another process holds a lock this operation conflicts with.
    #[error("the store at {} is busy: {holder} holds a conflicting lock; try again when it finishes", path.display())]
    StoreBusy {
        /// The store.
        path: PathBuf,
        /// Who holds it, as far as we know.
        holder: String,
    },

    /// No backup or restore point matches what was asked for.
    #[error("no backup {0:?} in the store")]
    NoSuchBackup(String),

    /// A backup spec matches several backups.
    #[error("{spec:?} matches {} backups ({}); give more of the id", candidates.len(), list(candidates))]
    Ambiguous {
        /// What was asked for.
        spec: String,
        /// Every backup it matches.
        candidates: Vec<String>,
    },

    /// A chunk a backup needs is missing or every stored copy is damaged.
    #[error("chunk {id} (slot {slot} of backup {backup}) cannot be read: {reason}")]
    ChunkUnavailable {
        /// The chunk id (hex).
        id: String,
        /// The backup being read.
        backup: String,
        /// The slot of the backup that needs it.
        slot: u64,
        /// Why the last copy tried failed.
        reason: String,
    },

    /// The change information offered for an incremental does not match the
    /// previous backup's source: storing it could record a wrong disk.
    #[error("refusing an incremental: {0} (use --force to back up anyway)")]
    BaselineMismatch(String),

    /// Something this crate did not expect of itself (a worker thread
    /// panicked; structures it wrote disagree): a bug to report.
    #[error("internal error: {0}")]
    Internal(String),

    /// A changed-range list that cannot be this disk's (a range past its
    /// end, an overflow) or that is not one of the shapes we read.
    #[error("bad changed-range list: {0}")]
    BadChangeList(String),

    /// A changed-range list whose tracker answered for only part of the
    /// disk (RCT's `ProcessedByteLength`, CBT's `startOffset`/`length`):
    /// what it says nothing about may have changed. Ask the tracker again
    /// for the rest, or count the rest as changed
    /// ([`ChangeList::cover_rest`](crate::store::ChangeList::cover_rest), the
    /// CLI's `--unprocessed-as-changed`).
    #[error(
        "the changed-range list covers only bytes {}..{} of the {size}-byte disk: the tracker must be asked again \
         for the rest (or use --unprocessed-as-changed to read it)",
        covered.start,
        covered.end
    )]
    PartialChangeList {
        /// The bytes the tracker answered for.
        covered: std::ops::Range<u64>,
        /// The disk's size.
        size: u64,
    },

    /// The source changed while it was read, and the backup was asked to
    /// require a still source ([`BackupOptions::require_stable`](crate::store::BackupOptions::require_stable)):
    /// nothing was committed. Take a checkpoint and back that up.
    #[error("{} changed while it was backed up (nothing committed): {}", path.display(), changes.join("; "))]
    SourceChanged {
        /// The source image (the top of its chain).
        path: PathBuf,
        /// What changed.
        changes: Vec<String>,
    },

    /// Reading the disk being backed up failed (not the store).
    #[error("reading the source {}: {source}", path.display())]
    Source {
        /// The source image (the top of its chain).
        path: PathBuf,
        /// The disk layer's error.
        #[source]
        source: Box<crate::Error>,
    },

    /// Writing a restore's output failed (not the store).
    #[error("writing the output {}: {source}", path.display())]
    Output {
        /// The output file, device or stream.
        path: PathBuf,
        /// The export layer's error.
        #[source]
        source: Box<crate::Error>,
    },

    /// The operation's lease went stale (its refreshes failed, or the
    /// process was paused past it) and it stopped before committing or
    /// deleting anything more; or it was fenced, and what it committed does
    /// not count. Nothing it left is referenced; try again.
    #[error("lease lost: {0}")]
    LeaseLost(String),

    /// The caller cancelled the operation. Nothing was committed; what was
    /// written is unreferenced and vacuum removes it.
    #[error("cancelled")]
    Cancelled,

    /// A request the store cannot carry out as asked (bad options).
    #[error("{0}")]
    Invalid(String),

    /// The store is encrypted and no key was given (or it was opened
    /// without one, which only lets `verify` check structure).
    #[error("{} is encrypted: give its passphrase or key file", path.display())]
    KeyRequired {
        /// The store.
        path: PathBuf,
    },

    /// None of the store's key objects opens with the key given. Nothing
    /// was read or written.
    #[error("{}: no key of this store opens with the {} given ({tried} tried)", path.display(), match kind { crate::store::crypto::keyobj::KeyKind::Passphrase => "passphrase", crate::store::crypto::keyobj::KeyKind::KeyFile => "key file" })]
    WrongKey {
        /// The store.
        path: PathBuf,
        /// What was given.
        kind: crate::store::crypto::keyobj::KeyKind,
        /// Key objects of that kind tried.
        tried: usize,
    },

    /// A key was given for a store that is not encrypted. Refused: a store
    /// expected to be encrypted that reads as plain may have been replaced.
    #[error("{} is not encrypted, but a key was given for it: refusing (was it replaced by a plain store?)", path.display())]
    NotEncrypted {
        /// The store.
        path: PathBuf,
    },
}

fn list(ids: &[String]) -> String {
    ids.join(", ")
}

impl StoreError {
    /// The crate-wide kind of this error; for a source or output error, the
    /// kind of what failed there.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Io { .. } => ErrorKind::Io,
            StoreError::Corrupt { .. } | StoreError::ChunkUnavailable { .. } => ErrorKind::Corrupt,
            StoreError::NotAStore { .. } | StoreError::NoSuchBackup(_) => ErrorKind::NotFound,
            StoreError::UnsupportedStore { .. } => ErrorKind::Unsupported,
            StoreError::StoreBusy { .. } | StoreError::LeaseLost(_) | StoreError::SourceChanged { .. } => {
                ErrorKind::Busy
            }
            StoreError::Ambiguous { .. }
            | StoreError::BaselineMismatch(_)
            | StoreError::BadChangeList(_)
            | StoreError::PartialChangeList { .. }
            | StoreError::Invalid(_) => ErrorKind::InvalidInput,
            StoreError::Source { source, .. } | StoreError::Output { source, .. } => source.kind(),
            StoreError::Cancelled => ErrorKind::Cancelled,
            StoreError::Internal(_) => ErrorKind::Internal,
            StoreError::KeyRequired { .. } | StoreError::WrongKey { .. } | StoreError::NotEncrypted { .. } => {
                ErrorKind::Unauthorized
            }
        }
    }

    /// The operating system's error kind, when an I/O call failed on any side.
    pub fn io_error_kind(&self) -> Option<io::ErrorKind> {
        match self {
            StoreError::Io { source, .. } => Some(source.kind()),
            StoreError::Source { source, .. } | StoreError::Output { source, .. } => source.io_error_kind(),
            _ => None,
        }
    }

    /// The error of `action` on store file `path` failing with `source`;
    /// a sealed object that does not open is damage, not an I/O failure.
    pub(crate) fn io(path: impl Into<PathBuf>, action: &'static str) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.into();
        move |source| match source.get_ref().and_then(|e| e.downcast_ref::<crate::store::crypto::SealError>()) {
            Some(seal) => StoreError::Corrupt {
                path,
                structure: "sealed object",
                offset: seal.offset,
                reason: seal.reason.clone(),
            },
            None => StoreError::Io { path, action, source },
        }
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        structure: &'static str,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        StoreError::Corrupt { path: path.into(), structure, offset, reason: reason.into() }
    }

    /// Damage a codec found in store file `path`.
    pub(crate) fn malformed(path: impl Into<PathBuf>) -> impl FnOnce(Malformed) -> StoreError {
        let path = path.into();
        move |m| StoreError::Corrupt { path, structure: m.what, offset: m.offset, reason: m.reason }
    }

    /// A failure of the disk being backed up. A store error that reached
    /// us through the source (a backup read back as a source) stays what it
    /// is only when it is a cancellation.
    pub(crate) fn source<E: Into<crate::Error>>(path: impl Into<PathBuf>) -> impl FnOnce(E) -> StoreError {
        let path = path.into();
        move |e| match StoreError::within(e.into()) {
            Ok(StoreError::Cancelled) => StoreError::Cancelled,
            Ok(other) => StoreError::Source { path, source: Box::new(crate::Error::Store(other)) },
            Err(other) => StoreError::Source { path, source: Box::new(other) },
        }
    }

    /// The store error in `e`: one returned as itself, or one a store
    /// reader handed to the disk layer as its own failure
    /// ([`DiskError::Source`](crate::disk::DiskError::Source)); any other
    /// error comes back as it was.
    pub(crate) fn within(e: crate::Error) -> std::result::Result<StoreError, crate::Error> {
        match e {
            crate::Error::Store(s) => Ok(s),
            crate::Error::Disk(crate::disk::DiskError::Source { path, kind, source }) => {
                match source.downcast::<StoreError>() {
                    Ok(s) => Ok(*s),
                    Err(source) => Err(crate::Error::Disk(crate::disk::DiskError::Source { path, kind, source })),
                }
            }
            other => Err(other),
        }
    }
}

/// Result alias for the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
