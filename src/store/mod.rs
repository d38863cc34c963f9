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
pub mod chunk;
mod config;
mod error;
pub mod index;
pub mod manifest;
mod merge;
pub mod pack;
mod prune;
mod reindex;
mod restore;
mod stats;
mod time;
mod vacuum;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

pub use backend::{Backend, LocalDir, LockGuard, LockMode, ObjectWriter};
pub use backup::{BackupOptions, BackupReport, ChangeSource, Progress};
pub use chunk::{ChunkId, Compression};
pub use config::{InitOptions, StoreConfig};
pub use error::{Result, StoreError};
pub use manifest::Kind;
pub use merge::MergeReport;
pub use prune::{PruneReport, Retention};
pub use reindex::ReindexReport;
pub use restore::{BackupReader, RestoreReport};
pub use stats::Stats;
pub use time::Moment;
pub use vacuum::{VacuumOptions, VacuumReport};
pub use verify::{DamagedChunk, VerifyReport};

use manifest::{ManifestHeader, id_from_key, manifest_key};

/// One backup, as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupSummary {
    pub id: String,
    pub name: String,
    pub kind: Kind,
    pub parent: Option<String>,
    pub created: String,
    pub virtual_size: u64,
}

/// An open store.
#[derive(Debug)]
pub struct Store {
    backend: Arc<dyn Backend>,
    config: StoreConfig,
    limits: backup::Limits,
}

const FOLDERS: [&str; 6] = ["packs", "index", "manifests", "damaged", "log", "tmp"];

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
        let config = StoreConfig::new(options, pack::PackId::new_random().to_hex(), Moment::now().rfc3339())?;
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
            return Err(StoreError::NotAStore { path: path.to_path_buf(), reason: "no config file".into() });
        }
        Store::open_backend(Arc::new(LocalDir::new(path)))
    }

    /// Opens a store over any backend.
    pub fn open_backend(backend: Arc<dyn Backend>) -> Result<Store> {
        let bytes = backend.read_all("config").map_err(StoreError::io(backend.describe("config"), "read config"))?;
        let config = StoreConfig::decode(&bytes)
            .map_err(|reason| StoreError::NotAStore { path: backend.describe("config"), reason })?;
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

    /// Every committed backup, oldest first.
    pub fn list(&self) -> Result<Vec<BackupSummary>> {
        let keys =
            self.backend.list("manifests").map_err(StoreError::io(self.backend.describe("manifests"), "list"))?;
        let mut out = Vec::new();
        for key in keys {
            let Some(id) = id_from_key(&key) else { continue };
            let h = self.header(id)?;
            out.push(BackupSummary {
                id: h.id,
                name: h.name,
                kind: h.kind,
                parent: h.parent,
                created: h.created,
                virtual_size: h.virtual_size,
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// A manifest's header (without checking the rest of the file).
    pub(crate) fn header(&self, id: &str) -> Result<ManifestHeader> {
        let key = manifest_key(id);
        let path = self.backend.describe(&key);
        let mut head = [0u8; 12];
        self.backend.read_at(&key, &mut head, 0).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                StoreError::NoSuchBackup(id.to_string())
            } else {
                StoreError::Io { path: path.clone(), action: "read manifest", source: e }
            }
        })?;
        let len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        if &head[..8] != b"VKMANIF1" || len > 1 << 20 {
            return Err(StoreError::corrupt(&path, "manifest", 0, "bad signature or header length"));
        }
        let mut json = vec![0u8; len as usize];
        self.backend.read_at(&key, &mut json, 12).map_err(StoreError::io(&path, "read manifest"))?;
        serde_json::from_slice(&json).map_err(|e| StoreError::corrupt(&path, "manifest header", 12, e.to_string()))
    }

    /// Finds a backup by id, unique id prefix, or name (the newest backup of
    /// that name).
    pub fn resolve(&self, spec: &str) -> Result<BackupSummary> {
        let all = self.list()?;
        if let Some(b) = all.iter().find(|b| b.id == spec) {
            return Ok(b.clone());
        }
        let by_prefix: Vec<_> = all.iter().filter(|b| b.id.starts_with(spec)).collect();
        if by_prefix.len() == 1 {
            return Ok(by_prefix[0].clone());
        }
        if let Some(b) = all.iter().rev().find(|b| b.name == spec) {
            return Ok(b.clone());
        }
        if by_prefix.len() > 1 {
            return Err(StoreError::Invalid(format!(
                "{spec:?} matches {} backups; give more of the id",
                by_prefix.len()
            )));
        }
        Err(StoreError::NoSuchBackup(spec.to_string()))
    }
}

/// A new backup id: UTC time and 8 random hex digits.
pub(crate) fn new_backup_id(at: Moment) -> String {
    let random = &pack::PackId::new_random().to_hex()[..8];
    format!("{}-{random}", at.compact())
}
