//! The content-addressed chunk store: full and incremental backups of any
//! [`VirtualDisk`](crate::VirtualDisk), deduplicated across backups and
//! disks, restorable bit-exact to raw, VHD or VHDX.
//!
//! The on-disk format, and the write order that makes a crash at any
//! instant safe, are in `docs/store-format.md`. In short: chunks go into
//! packs that are sealed and flushed before an index file names them, and
//! index files are committed before the manifest that is a backup's commit;
//! nothing is deleted while a committed manifest refers to it.
//!
//! Concurrency: backups, restores and verify take the store lock shared;
//! merge, prune, vacuum and reindex take it exclusive. A conflicting
//! operation gets [`StoreError::StoreBusy`] rather than waiting, unless it
//! asks to wait.

mod backend;
mod backup;
mod catalog;
mod changes;
mod config;
mod error;
mod id;
mod merge;
mod prune;
mod reindex;
mod restore;
mod stats;
mod time;
mod vacuum;
mod verify;

// The codecs are the store's own business; fuzz targets and tests reach
// them through the `fuzzing` feature.
#[cfg(feature = "fuzzing")]
pub mod chain;
#[cfg(not(feature = "fuzzing"))]
mod chain;
#[cfg(feature = "fuzzing")]
pub mod chunk;
#[cfg(not(feature = "fuzzing"))]
mod chunk;
#[cfg(feature = "fuzzing")]
pub mod index;
#[cfg(not(feature = "fuzzing"))]
mod index;
#[cfg(feature = "fuzzing")]
pub mod manifest;
#[cfg(not(feature = "fuzzing"))]
mod manifest;
#[cfg(feature = "fuzzing")]
pub mod pack;
#[cfg(not(feature = "fuzzing"))]
mod pack;
#[cfg(feature = "fuzzing")]
pub mod point;
#[cfg(not(feature = "fuzzing"))]
mod point;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use backend::{Backend, LocalDir, LockGuard, LockMode, ObjectWriter};
pub use backup::{
    Attachment, BackupOptions, BackupReport, DEFAULT_MAX_CHAIN, DiskJob, MAX_ATTACHMENT_BYTES, PointReport,
};
pub use catalog::{AttachmentSummary, BackupSummary, PointSummary, Selection};
pub use changes::ChangeList;
pub use chunk::{ChunkId, Compression};
pub use config::{InitOptions, STORE_FORMAT_VERSION, StoreConfig};
pub use error::{Result, StoreError};
pub use id::{BackupId, ParseIdError, PointId};
pub use manifest::{ChangeSource, Kind, SourceInfo};
pub use merge::{MergeOptions, MergeReport};
pub use point::{AttachmentRecord, PointDisk};
pub use prune::{PruneOptions, PruneReport, Retention};
pub use reindex::{ReindexOptions, ReindexReport};
pub use restore::{BackupReader, RestoreOptions, RestoreReport};
pub use stats::Stats;
pub use time::Moment;
pub use vacuum::{VacuumOptions, VacuumReport};
pub use verify::{DamagedChunk, VerifyOptions, VerifyReport};

pub use crate::cancel::CancelToken;
pub use crate::progress::{Operation, Progress, ProgressSink};

/// An open store.
#[derive(Debug)]
pub struct Store {
    backend: Arc<dyn Backend>,
    config: StoreConfig,
    limits: backup::Limits,
}

const FOLDERS: [&str; 7] = ["packs", "index", "manifests", "points", "damaged", "log", "tmp"];

impl Store {
    /// Creates a store in `path` (which must not exist, or be an empty
    /// folder) with `options` fixed for its lifetime.
    pub fn init(path: impl AsRef<Path>, options: &InitOptions) -> Result<Store> {
        let path = path.as_ref();
        if path.exists() {
            let empty = std::fs::read_dir(path).map_err(StoreError::io(path, "read folder"))?.next().is_none();
            if !empty {
                return Err(StoreError::Invalid(format!("{} exists and is not empty", path.display())));
            }
        }
        for dir in FOLDERS {
            std::fs::create_dir_all(path.join(dir)).map_err(StoreError::io(path.join(dir), "create folder"))?;
        }
        let backend = Arc::new(LocalDir::new(path));
        let config = StoreConfig::new(options, pack::PackId::new_random().to_hex(), Moment::now())?;
        let mut w = backend.create("config").map_err(StoreError::io(path.join("config"), "create config"))?;
        w.write(&config.encode()).map_err(StoreError::io(path.join("config"), "write config"))?;
        w.commit().map_err(StoreError::io(path.join("config"), "commit config"))?;
        let store = Store { backend, config, limits: backup::Limits::DEFAULT };
        store.log_job("init", &serde_json::json!({ "config": store.config }));
        Ok(store)
    }

    /// Opens the store in folder `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref();
        if !path.join("config").is_file() {
            let reason = if path.exists() { "it has no config file" } else { "the folder does not exist" };
            return Err(StoreError::NotAStore { path: path.to_path_buf(), reason: reason.into() });
        }
        Store::open_backend(Arc::new(LocalDir::new(path)))
    }

    /// Opens a store over any backend.
    pub fn open_backend(backend: Arc<dyn Backend>) -> Result<Store> {
        let bytes = backend.read_all("config").map_err(StoreError::io(backend.describe("config"), "read config"))?;
        let config = StoreConfig::decode(&bytes, &backend.describe("config"))?;
        Ok(Store { backend, config, limits: backup::Limits::DEFAULT })
    }

    /// The store's settings.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Where the store keeps its files.
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// A location for messages.
    pub fn path(&self) -> PathBuf {
        self.backend.describe("")
    }

    /// Takes the store lock, or fails with `StoreBusy` (unless `wait`).
    pub(crate) fn lock(&self, mode: LockMode, wait: bool) -> Result<Box<dyn LockGuard>> {
        let guard = self.backend.lock(mode, wait).map_err(StoreError::io(self.backend.describe("lock"), "lock"))?;
        guard.ok_or_else(|| StoreError::StoreBusy {
            path: self.path(),
            holder: match mode {
                LockMode::Shared => "a merge, prune, vacuum or reindex",
                LockMode::Exclusive => "another operation",
            },
        })
    }

    /// Appends one JSON line to the job log. A failure to log never fails
    /// the operation that already succeeded.
    pub(crate) fn log_job(&self, op: &str, report: &serde_json::Value) {
        let line = serde_json::json!({ "time": Moment::now().rfc3339(), "op": op, "pid": std::process::id(), "report": report });
        let _ = self.backend.append_line("log/jobs.log", &line.to_string());
    }
}
