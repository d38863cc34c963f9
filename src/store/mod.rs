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
//! A store lives in a folder or on object storage (S3 and compatible,
//! Azure Blob, Google Cloud Storage: see [`Store::init`]); the format is
//! the same on both.
//!
//! Concurrency: every operation holds a lease (an object naming it, renewed
//! in the background). Backups, restores and verify never wait for anyone;
//! merge, prune, vacuum and reindex exclude one another, and a conflicting
//! one gets [`StoreError::StoreBusy`] rather than waiting, unless it asks
//! to wait. Vacuum deletes only what it condemned a grace period earlier.

/// The layers that tests and fuzz targets reach into (the `fuzzing`
/// feature makes them public); without it they are the store's own
/// business.
macro_rules! internal_layers {
    ($($layer:ident),*) => {
        $(
            #[cfg(feature = "fuzzing")]
            pub mod $layer;
            #[cfg(not(feature = "fuzzing"))]
            mod $layer;
        )*
    };
}

// Dependencies run down this list, never up: model, crypto, backend,
// error, format, state, ops, and this module on top (docs/architecture.md).
internal_layers!(model, crypto, format, state);
mod backend;
mod error;
mod ops;

use std::path::{Path, PathBuf};
use std::sync::Arc;

#[cfg(feature = "object-store")]
pub use backend::ObjectBackend;
pub use backend::location::{OpenOptions, SCHEMES, url_of};
pub use backend::{Backend, CachedBackend, LocalDir, MemoryBackend, ObjectInfo, ObjectWriter, Traffic};
pub use crypto::keyobj::{Argon2Params, KeyKind};
pub use crypto::{MIN_KEY_FILE, StoreKey};
pub use error::{Result, StoreError};
pub use format::changes::ChangeList;
pub use format::config::{
    ENCRYPTED_STORE_VERSION, Encryption, EncryptionConfig, InitOptions, LockMode, ObjectLock, STORE_FORMAT_VERSION,
    StoreConfig,
};
pub use format::manifest::{ChangeSource, Kind, SourceInfo};
pub use format::point::{AttachmentRecord, PointDisk};
pub use format::record::{ChunkId, Compression};
pub use model::id::{BackupId, ParseIdError, PointId};
pub use model::time::Moment;
pub use ops::backup::{
    Attachment, BackupOptions, BackupReport, DEFAULT_MAX_CHAIN, DiskJob, MAX_ATTACHMENT_BYTES, PointReport,
};
pub use ops::merge::{MergeOptions, MergeReport};
pub use ops::prune::{PruneOptions, PruneReport, Retention};
pub use ops::reindex::{ReindexOptions, ReindexReport};
pub use ops::restore::{BackupReader, RestoreOptions, RestoreReport};
pub use ops::stats::Stats;
pub use ops::vacuum::{VacuumOptions, VacuumReport};
pub use ops::verify::{DamagedChunk, VerifyOptions, VerifyReport};
pub use state::catalog::{AttachmentSummary, BackupSummary, PointSummary, Selection};
pub use state::keyring::KeySummary;
use state::lease::{Lease, LeaseMode};
pub use state::lease::{LeaseClock, LeaseSettings};

pub use crate::cancel::CancelToken;
pub use crate::progress::{Operation, Progress, ProgressSink};

/// The store's maintenance slot, held until dropped
/// ([`Store::hold_maintenance`]).
#[derive(Debug)]
pub struct MaintenanceHold {
    _lease: Lease,
}

/// An open store.
#[derive(Debug)]
pub struct Store {
    /// The store's objects; in an encrypted store, behind the sealing
    /// layer, so reads and writes here are plaintext.
    backend: Arc<dyn Backend>,
    /// The storage as it is, below the sealing layer (the same as
    /// `backend` in a plain store): for what must see objects as stored.
    stored: Arc<dyn Backend>,
    config: StoreConfig,
    crypt: crypto::Crypt,
    /// The key object the store was opened with, if encrypted.
    key_id: Option<String>,
    limits: ops::backup::Limits,
    leases: LeaseSettings,
    /// Opened read-only on request ([`OpenOptions::read_only`]): nothing
    /// is written, not even a lease.
    read_only_asked: bool,
    /// Found read-only: the storage refused a read lease, so reads go on
    /// without one (see [`Store::read_lease`]).
    read_only_found: std::sync::atomic::AtomicBool,
}

impl Store {
    /// Creates a store at `location` with `options` fixed for its
    /// lifetime. A folder must not exist or be empty, and its parent must
    /// exist unless `options.create_parents`; a URL (`s3://BUCKET/PREFIX`,
    /// see [`SCHEMES`]) must name an existing bucket with nothing under the
    /// prefix (buckets are never created here). A refused init leaves
    /// nothing behind: no folder it made, no object it wrote.
    pub fn init(location: impl AsRef<Path>, options: &InitOptions) -> Result<Store> {
        let path = location.as_ref();
        if let Some(url) = url_of(path) {
            let backend = backend::location::remote(url)?;
            let present = backend.list("").map_err(StoreError::io(path, "list"))?;
            if let Some(o) = present.first() {
                return Err(StoreError::Invalid(format!("{url} is not empty: it holds {}", o.key)));
            }
            return Store::init_backend(backend, options);
        }
        let existed = path.exists();
        if existed {
            let empty = std::fs::read_dir(path).map_err(StoreError::io(path, "read folder"))?.next().is_none();
            if !empty {
                return Err(StoreError::Invalid(format!("{} exists and is not empty", path.display())));
            }
        } else if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
            && !parent.is_dir()
            && !options.create_parents
        {
            return Err(StoreError::Invalid(format!(
                "{} does not exist (an unmounted share?): create it first, or ask for missing parents \
                 (--parents, InitOptions::create_parents)",
                parent.display()
            )));
        }
        let made = (|| {
            for dir in model::layout::Folder::ALL.map(model::layout::Folder::name) {
                std::fs::create_dir_all(path.join(dir)).map_err(StoreError::io(path.join(dir), "create folder"))?;
            }
            Store::init_backend(Arc::new(LocalDir::new(path)), options)
        })();
        // Only what this call made, and only while it is empty: another
        // init racing this one for the same folder may have made a store
        // there (its config is there), and that is never touched.
        if made.is_err() && !path.join(model::layout::CONFIG).exists() {
            for dir in model::layout::Folder::ALL.map(model::layout::Folder::name) {
                let _ = std::fs::remove_dir(path.join(dir));
            }
            if !existed {
                let _ = std::fs::remove_dir(path);
            }
        }
        made
    }

    /// Creates a store over any backend. An encrypted store's key object
    /// is written before its config, so a store whose config exists can
    /// always be opened. The storage is first probed for put-if-absent
    /// (see [`probe_conditional_writes`]): storage that replaces an
    /// existing object is refused unless `options.single_writer`. Settings
    /// out of range are refused before anything is written.
    pub fn init_backend(backend: Arc<dyn Backend>, options: &InitOptions) -> Result<Store> {
        let store_id = format::pack::PackId::new_random().to_hex();
        // Settings first, so a bad one writes nothing (not even the probe).
        StoreConfig::new(options, store_id.clone(), Moment::now(), None)?;
        let honoured = probe_conditional_writes(&*backend)?;
        if !honoured && !options.single_writer {
            return Err(StoreError::UnsupportedStore {
                path: backend.describe(""),
                reason: "this storage replaced an existing object when asked to create it only if absent \
                         (If-None-Match: *), so nothing would stop two writers from overwriting each other or \
                         running maintenance at once; use storage that honours conditional writes, or accept \
                         one writer at a time with --single-writer (InitOptions::single_writer)"
                    .into(),
            });
        }
        let mut options = options.clone();
        options.single_writer = !honoured;
        let options = &options;
        let keys = options.encryption.as_ref().map(|_| Arc::new(crypto::Keys::generate()));
        let config = StoreConfig::new(options, store_id, Moment::now(), keys.as_deref())?;
        let backend = match config.object_lock {
            Some(lock) => {
                backend.lock_support().map_err(|e| StoreError::UnsupportedStore {
                    path: backend.describe(""),
                    reason: format!("--object-lock needs a bucket with S3 Object Lock enabled: {e}"),
                })?;
                Arc::new(backend::LockingBackend::new(backend, lock)) as Arc<dyn Backend>
            }
            None => backend,
        };
        let mut key_id = None;
        if let (Some(keys), Some(e)) = (&keys, &options.encryption) {
            let object = crypto::keyobj::KeyObject::wrap(
                keys.master(),
                &config.store_id,
                &e.key,
                &e.argon2,
                Moment::now(),
                host_name(),
            )
            .map_err(StoreError::Invalid)?;
            state::keyring::write_key_object(&*backend, &object)?;
            key_id = Some(object.id);
        }
        let path = backend.describe(model::layout::CONFIG);
        let written = backend.create(model::layout::CONFIG).and_then(|mut w| {
            w.write(&config.encode())?;
            w.commit()
        });
        if let Err(e) = written {
            // A key object without a config opens nothing: take it back,
            // unless the config is there and ours after all (a write that
            // succeeded but whose answer was lost).
            let ours = backend
                .read_all(model::layout::CONFIG)
                .ok()
                .and_then(|bytes| StoreConfig::decode(&bytes, &path).ok())
                .is_some_and(|c| c.store_id == config.store_id);
            if let (Some(id), false) = (&key_id, ours) {
                let _ = backend.delete(&model::layout::key_object_key_of(id));
            }
            return Err(if e.kind() == std::io::ErrorKind::AlreadyExists {
                StoreError::Invalid(format!("{} already holds a store", backend.describe("").display()))
            } else {
                StoreError::io(&path, "write config")(e)
            });
        }
        let crypt = keys.map_or(crypto::Crypt::Plain, crypto::Crypt::Sealed);
        let store = Store::assemble(backend, config, crypt, key_id);
        store.log_job("init", &serde_json::json!({ "config": store.config }));
        Ok(store)
    }

    /// A store over `stored` as `crypt` says: behind the sealing layer when
    /// encrypted.
    fn assemble(stored: Arc<dyn Backend>, config: StoreConfig, crypt: crypto::Crypt, key_id: Option<String>) -> Store {
        let backend: Arc<dyn Backend> = match &crypt {
            crypto::Crypt::Sealed(keys) => Arc::new(backend::SealingBackend::new(stored.clone(), keys.clone())),
            crypto::Crypt::Locked => Arc::new(backend::ReadOnlyBackend::new(stored.clone())),
            crypto::Crypt::Plain => stored.clone(),
        };
        Store {
            backend,
            stored,
            config,
            crypt,
            key_id,
            limits: ops::backup::Limits::DEFAULT,
            leases: LeaseSettings::default(),
            read_only_asked: false,
            read_only_found: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Opens the store at `location` (a folder or a URL, as for
    /// [`Store::init`]).
    pub fn open(location: impl AsRef<Path>) -> Result<Store> {
        Store::open_with(location, &OpenOptions::default())
    }

    /// Opens the store at `location` as `options` say: a remote store's
    /// index files, manifests and restore points are read through a local
    /// cache (see [`CachedBackend`]) unless `options.no_cache`. An
    /// encrypted store needs `options.key` (one Argon2id run per passphrase
    /// key object tried, about a second each by default), unless
    /// `options.without_key`; a key given for a plain store is refused.
    pub fn open_with(location: impl AsRef<Path>, options: &OpenOptions) -> Result<Store> {
        let path = location.as_ref();
        if let Some(url) = url_of(path) {
            let (backend, config) = Store::read_config(backend::location::remote(url)?)?;
            let backend = backend::location::cached(backend, &config.store_id, options);
            return Store::unlock(backend, config, options);
        }
        if !path.join("config").is_file() {
            let reason = if path.exists() { "it has no config file" } else { "the folder does not exist" };
            return Err(StoreError::NotAStore { path: path.to_path_buf(), reason: reason.into() });
        }
        Store::open_backend_with(Arc::new(LocalDir::new(path)), options)
    }

    /// Opens a plain store over any backend ([`Store::open_backend_with`]
    /// for an encrypted one).
    pub fn open_backend(backend: Arc<dyn Backend>) -> Result<Store> {
        Store::open_backend_with(backend, &OpenOptions::default())
    }

    /// Opens a store over any backend as `options` say (its key).
    pub fn open_backend_with(backend: Arc<dyn Backend>, options: &OpenOptions) -> Result<Store> {
        let (backend, config) = Store::read_config(backend)?;
        Store::unlock(backend, config, options)
    }

    /// Unlocks an encrypted store with the key `options` give (or opens it
    /// keyless, if they say so); checks that a plain store was given none.
    fn unlock(backend: Arc<dyn Backend>, config: StoreConfig, options: &OpenOptions) -> Result<Store> {
        let mut store = Store::unlock_keys(backend, config, options)?;
        store.read_only_asked = options.read_only;
        Ok(store)
    }

    fn unlock_keys(backend: Arc<dyn Backend>, config: StoreConfig, options: &OpenOptions) -> Result<Store> {
        let path = backend.describe("");
        if options.key.is_some() && options.without_key {
            return Err(StoreError::Invalid("a key and `without_key` together: give one or the other".into()));
        }
        match (config.is_encrypted(), &options.key, options.without_key) {
            (false, None, _) => Ok(Store::assemble(backend, config, crypto::Crypt::Plain, None)),
            (false, Some(_), _) => Err(StoreError::NotEncrypted { path }),
            (true, _, true) => Ok(Store::assemble(backend, config, crypto::Crypt::Locked, None)),
            (true, None, false) => Err(StoreError::KeyRequired { path }),
            (true, Some(key), false) => {
                let (keys, id) = state::keyring::unlock(&*backend, &config, key, options.key_id.as_deref())?;
                Ok(Store::assemble(backend, config, crypto::Crypt::Sealed(keys), Some(id)))
            }
        }
    }

    /// Reads and checks the config; the backend comes back wrapped for
    /// Object Lock when the store has it.
    fn read_config(backend: Arc<dyn Backend>) -> Result<(Arc<dyn Backend>, StoreConfig)> {
        let bytes = backend.read_all("config").map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                StoreError::NotAStore { path: backend.describe(""), reason: "it has no config object".into() }
            } else {
                StoreError::io(backend.describe("config"), "read config")(e)
            }
        })?;
        let config = StoreConfig::decode(&bytes, &backend.describe("config"))?;
        let backend = match config.object_lock {
            Some(lock) => Arc::new(backend::LockingBackend::new(backend, lock)) as Arc<dyn Backend>,
            None => backend,
        };
        Ok((backend, config))
    }

    /// The store's settings.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// What an operator should know about this store before relying on it
    /// (empty for most stores): today, that its storage ignores
    /// conditional writes and it was made with
    /// [`InitOptions::single_writer`].
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.is_read_only() {
            out.push(format!(
                "{}: opened read-only ({}): no lease is held, so a vacuum running elsewhere could delete what a \
                 restore or verify is reading; such a read fails with an error naming the missing chunk, never \
                 with a wrong byte",
                self.path().display(),
                if self.read_only_asked { "as asked" } else { "the storage refused to write a lease" }
            ));
        }
        if self.config.single_writer {
            out.push(format!(
                "{}: this store's storage ignores conditional writes (made with --single-writer): nothing stops two \
                 hosts from overwriting each other's objects or running maintenance at the same time; keep to one \
                 writer at a time",
                self.path().display()
            ));
        }
        out
    }

    /// Where the store keeps its files. In an encrypted store this view
    /// seals and opens index files, manifests, restore points, the job log,
    /// tombstones and vacuum's records as they are written and read; opened
    /// without its key, it refuses every write but its own lease.
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// The storage below the sealing layer: objects exactly as stored.
    pub(crate) fn stored_backend(&self) -> &dyn Backend {
        &*self.stored
    }

    /// How chunks and objects are sealed (and chunks named).
    pub(crate) fn crypt(&self) -> &crypto::Crypt {
        &self.crypt
    }

    /// [`crypto::Crypt`] for the codecs' tests and fuzz targets.
    #[cfg(feature = "fuzzing")]
    pub fn codec_crypt(&self) -> &crypto::Crypt {
        &self.crypt
    }

    /// A location for messages.
    pub fn path(&self) -> PathBuf {
        self.backend.describe("")
    }

    /// How long this store's leases live (default: 5 minutes, refreshed
    /// every 75 s; stale 5 minutes past that). Shorter leases let a dead
    /// holder's maintenance slot and condemned space come back sooner, at a
    /// few more requests.
    pub fn set_lease_settings(&mut self, settings: LeaseSettings) {
        self.leases = settings;
    }

    /// The global index, with copies in condemned packs tried last and not
    /// counted for deduplication. Call it holding a lease, so the list of
    /// condemned packs cannot miss one a vacuum may delete meanwhile.
    pub(crate) fn index_avoiding_condemned(&self) -> Result<state::index::Index> {
        Ok(self.index_and_packs()?.0)
    }

    /// [`Store::index_avoiding_condemned`], with the packs present and the
    /// condemned ones it was built from. The condemnation records are read
    /// before `packs/` is listed: vacuum deletes a record's packs before
    /// the record, so a record read too late had deleted its packs before
    /// the listing. A pack deleted before this lease was taken is gone for
    /// good; one condemned later is not deleted while this lease lives.
    pub(crate) fn index_and_packs(
        &self,
    ) -> Result<(
        state::index::Index,
        std::collections::HashSet<format::pack::PackId>,
        std::collections::HashSet<format::pack::PackId>,
    )> {
        let backend = self.backend();
        let condemned = state::condemned::Condemned::read(backend)?.packs();
        let folder = model::layout::Folder::Packs.name();
        let present = match backend.list(folder) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            other => other.map_err(StoreError::io(backend.describe(folder), "list"))?,
        };
        let present = present.iter().filter_map(|o| format::pack::PackId::from_key(&o.key)).collect();
        let index = state::index::Index::load_avoiding(backend, condemned.clone(), &present)?;
        Ok((index, present, condemned))
    }

    /// Takes a lease for `op` (see [`lease`]): maintenance conflicts with
    /// maintenance (`StoreBusy`, or waiting with `wait`); nothing else
    /// conflicts.
    pub(crate) fn lease(&self, mode: LeaseMode, op: &str, wait: bool) -> Result<Lease> {
        Lease::acquire(self.backend.clone(), self.leases, mode, op, wait)
    }

    /// Holds the store's maintenance slot until the returned hold is
    /// dropped: no merge, prune, vacuum, reindex or key change runs
    /// meanwhile, on any host (they get [`StoreError::StoreBusy`], or wait).
    /// For a product that copies or inspects a store's files and must not
    /// see them rearranged; backups and restores go on. `op` names the
    /// holder in others' busy messages. Costs a lease (one small object,
    /// refreshed in the background) and a maintenance claim.
    pub fn hold_maintenance(&self, op: &str, wait: bool) -> Result<MaintenanceHold> {
        self.require_writable()?;
        Ok(MaintenanceHold { _lease: self.lease(LeaseMode::Maintenance, op, wait)? })
    }

    /// Refuses an operation that writes when the store is encrypted and was
    /// opened without its key, or was opened read-only: up front, with the
    /// reason, instead of failing halfway on the first object it cannot
    /// read or write.
    pub(crate) fn require_writable(&self) -> Result<()> {
        if self.read_only_asked {
            return Err(StoreError::Invalid(format!(
                "{} was opened read-only: only restore, verify, list, stats and the log work",
                self.path().display()
            )));
        }
        match self.crypt {
            crypto::Crypt::Locked => Err(StoreError::KeyRequired { path: self.path() }),
            _ => Ok(()),
        }
    }

    /// Whether the store is read-only: opened so, or found so when the
    /// storage refused the lease of a read (which later reads ask again).
    pub fn is_read_only(&self) -> bool {
        self.read_only_asked || self.read_only_found.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A lease for a read (restore, verify, stats), or none on a read-only
    /// store: one opened read-only, or storage that refuses the lease's
    /// write (read-only credentials, a WORM share, a snapshot of a store
    /// folder). Without a lease a vacuum elsewhere does not know of the
    /// read and may delete what it needs: the read then fails on a missing
    /// chunk (every chunk is verified as it is read), never with wrong data.
    pub(crate) fn read_lease(&self, op: &str) -> Result<Option<Lease>> {
        // Asked each time when found so: a refusal may have been passing
        // (an expired token), and the next read should hold a lease again.
        if self.read_only_asked {
            return Ok(None);
        }
        match self.lease(LeaseMode::Read, op, false) {
            Ok(l) => {
                self.read_only_found.store(false, std::sync::atomic::Ordering::Relaxed);
                Ok(Some(l))
            }
            Err(StoreError::Io { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                self.read_only_found.store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Records a finished operation in the job log: one small object per
    /// job (`log/<time>-<random>.json`), so writers never append to a
    /// shared file. A failure to log never fails the operation that already
    /// succeeded.
    pub(crate) fn log_job(&self, op: &str, report: &serde_json::Value) {
        // Without the key nothing can be sealed, so nothing is logged; a
        // read-only store is not written at all.
        if matches!(self.crypt, crypto::Crypt::Locked) || self.read_only_asked {
            return;
        }
        let now = Moment::now();
        let entry = serde_json::json!({ "time": now, "op": op, "host": host_name(), "pid": std::process::id(), "report": report });
        let key = model::layout::log_key(&model::id::BackupId::generate(now));
        if let Ok(mut w) = self.backend.create(&key) {
            let _ = w.write(entry.to_string().as_bytes()).and_then(|()| w.commit());
        }
    }
}

impl Store {
    /// The job log, oldest first: one JSON object per finished operation
    /// (`time`, `op`, `host`, `pid`, `report`). Stores made before version
    /// 2 kept one `log/jobs.log` file of such lines; they are read too.
    pub fn job_log(&self) -> Result<Vec<serde_json::Value>> {
        let backend = self.backend();
        let mut entries = Vec::new();
        for key in backend::list_keys(backend, "log").map_err(StoreError::io(backend.describe("log"), "list"))? {
            let bytes = match backend.read_all(&key) {
                Ok(b) => b,
                // Removed since the listing.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io(backend.describe(&key), "read job log")(e)),
            };
            let lines: Vec<&[u8]> =
                if key.ends_with(".log") { bytes.split(|&b| b == b'\n').collect() } else { vec![&bytes] };
            for line in lines.into_iter().filter(|l| !l.is_empty()) {
                let entry: serde_json::Value = serde_json::from_slice(line)
                    .map_err(|e| StoreError::corrupt(backend.describe(&key), "job log entry", 0, e.to_string()))?;
                entries.push(entry);
            }
        }
        entries.sort_by(|a, b| a["time"].as_str().cmp(&b["time"].as_str()));
        Ok(entries)
    }
}

/// Whether `backend` honours put-if-absent: creates a probe object under
/// `locks/`, asks to create it again only if absent, and deletes it. The
/// second create must fail with `AlreadyExists`; storage that accepts it
/// (some S3 servers ignore `If-None-Match: *`) replaced an object, and
/// every guarantee the store rests on put-if-absent would be void there.
/// Two requests and a delete, once, at init; [`Store::open`] trusts what
/// the config recorded.
pub fn probe_conditional_writes(backend: &dyn Backend) -> Result<bool> {
    let key = model::layout::probe_key(&format::pack::PackId::new_random().to_hex());
    state::lease::put_new(backend, &key, b"first")
        .map_err(StoreError::io(backend.describe(&key), "probe conditional writes"))?;
    let second = state::lease::put_new(backend, &key, b"second");
    let _ = backend.delete(&key);
    match second {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(true),
        Ok(()) => Ok(false),
        Err(e) => Err(StoreError::io(backend.describe(&key), "probe conditional writes")(e)),
    }
}

/// This machine's name, for the job log and leases.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}
