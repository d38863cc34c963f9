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
//!
//! The folders below are layers, each importing only those above it here:
//!
//! ```text
//! model/    ids, time, the key layout and each folder's policy, limits (no I/O)
//! crypto/   keys, AEAD, envelopes, key objects
//! error.rs  StoreError
//! backend/  where objects live: a folder, a bucket, memory, and wrappers
//! format/   the codecs: records, packs, index files, manifests, points, config
//! state/    what is committed and who holds what: index, chains, catalog,
//!           leases, tombstones, condemned packs, keyring, the Handle
//! ops/      one module per operation, each a function over a Handle
//! mod.rs    Store: its methods delegate to ops
//! ```
//!
//! May import (this file): every layer below, and the rest of the crate.

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

// Dependencies run down this list, never up: model, crypto, error,
// backend, format, state, ops, and this module on top (docs/architecture.md).
internal_layers!(model, crypto, format, state);
mod backend;
mod error;
mod ops;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::disk::VirtualDisk;
use crate::export::Target;
use state::handle::Handle;
use std::io::Write;

#[cfg(feature = "object-store")]
pub use backend::ObjectBackend;
pub use backend::location::{OpenOptions, SCHEMES, url_of};
pub use backend::{Backend, CachedBackend, LocalDir, MemoryBackend, ObjectInfo, ObjectWriter, Traffic};
pub use crypto::keyobj::{Argon2Params, KeyKind};
pub use crypto::{MIN_KEY_FILE, StoreKey};
pub use error::{Result, StoreError};
pub use format::changes::ChangeList;
pub use format::config::{
    ENCRYPTED_STORE_VERSION, Encryption, EncryptionConfig, InitOptions, STORE_FORMAT_VERSION, StoreConfig,
};
pub use format::manifest::{ChangeSource, Kind, SourceInfo};
pub use format::point::{AttachmentRecord, MAX_ATTACHMENT_BYTES, PointDisk};
pub use format::record::Compression;
pub use model::id::ChunkId;
pub use model::id::{BackupId, ParseIdError, PointId};
pub use model::object_lock::{LockMode, ObjectLock};
pub use model::time::Moment;
pub use ops::backup::copy::{CopyOptions, CopyReport, CopySelection, CopySkip};
pub use ops::backup::{Attachment, BackupOptions, BackupReport, DEFAULT_MAX_CHAIN, DiskJob, PointReport};
pub use ops::merge::{MergeOptions, MergeReport};
pub use ops::prune::{PruneOptions, PruneReport, Retention};
pub use ops::reindex::{ReindexOptions, ReindexReport};
pub use ops::restore::{PointRestoreReport, RestoreOptions, RestoreReport};
pub use ops::stats::Stats;
pub use ops::vacuum::{VacuumOptions, VacuumReport};
pub use ops::verify::{DamagedChunk, VerifyOptions, VerifyReport};
pub use state::backup_reader::BackupReader;
pub use state::catalog::{AttachmentSummary, BackupSummary, PointSummary, Selection};
pub use state::keyring::KeySummary;
use state::lease::{Lease, LeaseMode};
pub use state::lease::{LeaseClock, LeaseSettings};

pub use crate::cancel::CancelToken;
pub use crate::progress::{Operation, Progress, ProgressSink};
pub use ops::open::probe_conditional_writes;

/// The store's maintenance slot, held until dropped
/// ([`Store::hold_maintenance`]).
#[derive(Debug)]
pub struct MaintenanceHold {
    _lease: Lease,
}

/// An open store. Every method is a short delegation to the operation that
/// does the work (`ops/`); the parts they share are a [`Handle`].
#[derive(Debug)]
pub struct Store {
    h: Handle,
}

impl Store {
    /// Creates a store at `location` with `options` fixed for its
    /// lifetime. A folder must not exist or be empty, and its parent must
    /// exist unless `options.create_parents`; a URL (`s3://BUCKET/PREFIX`,
    /// see [`SCHEMES`]) must name an existing bucket with nothing under the
    /// prefix (buckets are never created here). A refused init leaves
    /// nothing behind: no folder it made, no object it wrote.
    pub fn init(location: impl AsRef<Path>, options: &InitOptions) -> Result<Store> {
        ops::open::init(location.as_ref(), options).map(Store::from)
    }

    /// Creates a store over any backend. An encrypted store's key object
    /// is written before its config, so a store whose config exists can
    /// always be opened. The storage is first probed for put-if-absent
    /// (see [`probe_conditional_writes`]): storage that replaces an
    /// existing object is refused unless `options.single_writer`. Settings
    /// out of range are refused before anything is written.
    pub fn init_backend(backend: Arc<dyn Backend>, options: &InitOptions) -> Result<Store> {
        ops::open::init_backend(backend, options).map(Store::from)
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
        ops::open::open_with(location.as_ref(), options).map(Store::from)
    }

    /// Opens a plain store over any backend ([`Store::open_backend_with`]
    /// for an encrypted one).
    pub fn open_backend(backend: Arc<dyn Backend>) -> Result<Store> {
        Store::open_backend_with(backend, &OpenOptions::default())
    }

    /// Opens a store over any backend as `options` say (its key).
    pub fn open_backend_with(backend: Arc<dyn Backend>, options: &OpenOptions) -> Result<Store> {
        ops::open::open_backend_with(backend, options).map(Store::from)
    }

    /// The store's settings.
    pub fn config(&self) -> &StoreConfig {
        &self.h.config
    }

    /// What an operator should know about this store before relying on it
    /// (empty for most stores): today, that its storage ignores
    /// conditional writes and it was made with
    /// [`InitOptions::single_writer`].
    pub fn warnings(&self) -> Vec<String> {
        self.h.warnings()
    }

    /// Where the store keeps its files. In an encrypted store this view
    /// seals and opens index files, manifests, restore points, the job log,
    /// tombstones and vacuum's records as they are written and read; opened
    /// without its key, it refuses every write but its own lease.
    pub fn backend(&self) -> &dyn Backend {
        self.h.backend()
    }

    /// [`crypto::Crypt`] for the codecs' tests and fuzz targets.
    #[cfg(feature = "fuzzing")]
    pub fn codec_crypt(&self) -> &crypto::Crypt {
        &self.h.crypt
    }

    /// A location for messages.
    pub fn path(&self) -> PathBuf {
        self.h.path()
    }

    /// How long this store's leases live (default: 5 minutes, refreshed
    /// every 75 s; stale 5 minutes past that). Shorter leases let a dead
    /// holder's maintenance slot and condemned space come back sooner, at a
    /// few more requests.
    pub fn set_lease_settings(&mut self, settings: LeaseSettings) {
        self.h.leases = settings;
    }

    /// Holds the store's maintenance slot until the returned hold is
    /// dropped: no merge, prune, vacuum, reindex or key change runs
    /// meanwhile, on any host (they get [`StoreError::StoreBusy`], or wait).
    /// For a product that copies or inspects a store's files and must not
    /// see them rearranged; backups and restores go on. `op` names the
    /// holder in others' busy messages. Costs a lease (one small object,
    /// refreshed in the background) and a maintenance claim.
    pub fn hold_maintenance(&self, op: &str, wait: bool) -> Result<MaintenanceHold> {
        self.h.require_writable()?;
        Ok(MaintenanceHold { _lease: self.h.lease(LeaseMode::Maintenance, op, wait)? })
    }

    /// Whether the store is read-only: opened so, or found so when the
    /// storage refused the lease of a read (which later reads ask again).
    pub fn is_read_only(&self) -> bool {
        self.h.is_read_only()
    }

    /// Backs up `disk`. The backup is an incremental of the newest backup
    /// named `options.name` when one exists and `options.full` is false.
    /// Returns once the backup is committed; see the module documentation.
    pub fn backup(&self, disk: &dyn VirtualDisk, options: &BackupOptions) -> Result<BackupReport> {
        ops::backup::backup(&self.h, disk, options)
    }

    /// Backs up several disks of one VM as one restore point, with the
    /// options' tags and attachments: all of it commits together or none
    /// of it does. Per-disk change information goes in each [`DiskJob`].
    pub fn backup_point(&self, disks: &[DiskJob<'_>], options: &BackupOptions) -> Result<PointReport> {
        ops::backup::backup_point(&self.h, disks, options)
    }

    /// Makes backup `spec` (see [`Store::resolve_backup`]) a full backup
    /// (exclusive lock). Metadata only: no chunk is read.
    pub fn merge(&self, spec: impl AsRef<str>, options: &MergeOptions) -> Result<MergeReport> {
        ops::merge::merge(&self.h, spec, options)
    }

    /// Applies the retention policy to the jobs named `name` (exclusive
    /// lock). A restore point is kept or dropped whole: its disks and
    /// attachments go together. With `dry_run`, changes nothing.
    pub fn prune(&self, name: &str, options: &PruneOptions) -> Result<PruneReport> {
        ops::prune::prune(&self.h, name, options)
    }

    /// Rebuilds the global index from the packs (exclusive lock; waits for
    /// it when `wait`).
    pub fn reindex(&self, options: &ReindexOptions) -> Result<ReindexReport> {
        ops::reindex::reindex(&self.h, options)
    }

    /// Opens backup `spec` (see [`Store::resolve_backup`]) for reading.
    pub fn reader(&self, spec: impl AsRef<str>) -> Result<BackupReader> {
        ops::restore::reader(&self.h, spec)
    }

    /// Opens one disk's backup of a restore point (by its label) for reading.
    pub fn reader_disk(&self, spec: impl AsRef<str>, disk: Option<&str>) -> Result<BackupReader> {
        ops::restore::reader_disk(&self.h, spec, disk)
    }

    /// Restores backup `spec` (see [`Store::resolve_backup`]) to the file
    /// `out` in `target` format. A VHD or VHDX output keeps the original
    /// disk's id so the VM sees the same disk. The file appears only once
    /// complete and verified.
    pub fn restore(
        &self,
        spec: impl AsRef<str>,
        out: &Path,
        target: Target,
        options: &RestoreOptions,
    ) -> Result<RestoreReport> {
        ops::restore::restore(&self.h, spec, out, target, options)
    }

    /// Streams backup `spec` as a raw image into `out` (stdout, a pipe, a
    /// socket): every byte in order, zeros included. `name` names the
    /// stream in messages. Every chunk is verified before its bytes are
    /// written; a failure stops the stream short, so a consumer must treat
    /// an error here as a failed restore.
    pub fn restore_to_writer(
        &self,
        spec: impl AsRef<str>,
        out: &mut dyn Write,
        name: &Path,
        options: &RestoreOptions,
    ) -> Result<RestoreReport> {
        ops::restore::restore_to_writer(&self.h, spec, out, name, options)
    }

    /// Writes backup `spec` in `target` format into `sink` (a caller's
    /// seekable stream, a buffer, a callback), named `name` in messages.
    /// Every chunk is verified before its bytes are written; on an error
    /// the sink holds a partial image its owner must discard.
    pub fn restore_to_sink(
        &self,
        spec: impl AsRef<str>,
        sink: &dyn crate::export::ExportSink,
        name: &Path,
        target: Target,
        options: &RestoreOptions,
    ) -> Result<RestoreReport> {
        ops::restore::restore_to_sink(&self.h, spec, sink, name, target, options)
    }

    /// Writes backup `spec` as a raw image over the existing file or block
    /// device `target` (at least the disk's size), as `options.in_place`
    /// says: every byte by default, or only data over a target the caller
    /// zeroed. Unlike [`Store::restore`] the target is written as it goes:
    /// a failure leaves it partly written.
    pub fn restore_in_place(
        &self,
        spec: impl AsRef<str>,
        target: &Path,
        options: &RestoreOptions,
    ) -> Result<RestoreReport> {
        ops::restore::restore_in_place(&self.h, spec, target, options)
    }

    /// Copies backups and restore points into store `dst` (a folder or a
    /// bucket, plain or encrypted under other keys): a backup job there
    /// per backup or point, parents first, each chunk verified as it is
    /// read here and stored there only if `dst` lacks it. What `dst`
    /// already holds, or dropped, is skipped; a backup whose chunks cannot
    /// be read here fails alone (in [`CopyReport::failed`]) and the rest go
    /// on. Both stores' chunk sizes must match.
    pub fn copy_to(&self, dst: &Store, options: &CopyOptions) -> Result<CopyReport> {
        ops::backup::copy::copy_to(&self.h, &dst.h, options)
    }

    /// Restores every disk of restore point `spec` into folder `dir`
    /// (created if missing), each as `<label stem>.<target's extension>`,
    /// and writes its attachments there under their names. A spec that
    /// names a single backup restores that one disk.
    pub fn restore_point(
        &self,
        spec: impl AsRef<str>,
        dir: &Path,
        target: Target,
        options: &RestoreOptions,
    ) -> Result<PointRestoreReport> {
        ops::restore::restore_point(&self.h, spec, dir, target, options)
    }

    /// Computes the statistics (reads every manifest). Any listing or read
    /// that fails is an error: the figures are never computed over part of
    /// the store.
    pub fn stats(&self) -> Result<Stats> {
        ops::stats::stats(&self.h)
    }

    /// Reclaims space; see the module documentation for the two phases.
    pub fn vacuum(&self, options: &VacuumOptions) -> Result<VacuumReport> {
        ops::vacuum::vacuum(&self.h, options)
    }

    /// Verifies the store, or what `options.only` needs; see the module
    /// documentation. Cost: reads every record checked once, on every core.
    pub fn verify(&self, options: &VerifyOptions) -> Result<VerifyReport> {
        ops::verify::verify(&self.h, options)
    }

    /// Checks the file systems inside backup `spec` (a restore point's disk
    /// by `disk`): every partition's folders walked, every entry's record
    /// read, file data read as `options` says and compared with a source
    /// disk when given one. One report per partition; the outcome goes to
    /// the job log. A restore test without a hypervisor.
    pub fn verify_filesystems(
        &self,
        spec: impl AsRef<str>,
        disk: Option<&str>,
        options: &crate::fs::CheckOptions,
    ) -> crate::Result<Vec<crate::fs::CheckReport>> {
        ops::fs_check::verify_filesystems(&self.h, spec.as_ref(), disk, options)
    }

    /// Every committed backup, oldest first. Fails if a manifest or point
    /// cannot be read (`verify` reports every such problem).
    pub fn list(&self) -> Result<Vec<BackupSummary>> {
        state::catalog::list(&self.h)
    }

    /// Every committed restore point, oldest first.
    pub fn points(&self) -> Result<Vec<PointSummary>> {
        state::catalog::points(&self.h)
    }

    /// Finds a backup or restore point: an exact backup id, an exact point
    /// id, an exact name (the newest job of that name), or a unique prefix
    /// of an id, in that order. Several matches are an
    /// [`StoreError::Ambiguous`] error listing them.
    pub fn resolve(&self, spec: impl AsRef<str>) -> Result<Selection> {
        state::catalog::resolve(&self.h, spec)
    }

    /// Finds one disk's backup: as [`Store::resolve`], where a restore point
    /// must then name the disk (`disk`, its label) unless it has only one.
    pub fn resolve_backup(&self, spec: impl AsRef<str>, disk: Option<&str>) -> Result<BackupSummary> {
        state::catalog::resolve_backup(&self.h, spec, disk)
    }

    /// Whether the store is encrypted.
    pub fn is_encrypted(&self) -> bool {
        state::keyring::is_encrypted(&self.h)
    }

    /// The store's key objects, oldest first (readable without the key).
    pub fn keys(&self) -> Result<Vec<KeySummary>> {
        state::keyring::keys(&self.h)
    }

    /// Adds a wrapping of the master key by `key` (a passphrase costs
    /// `argon2`); returns the new key object's id. The store must be open
    /// with one of its keys.
    pub fn add_key(&self, key: &StoreKey, argon2: &Argon2Params) -> Result<String> {
        state::keyring::add_key(&self.h, key, argon2)
    }

    /// Removes key object `spec` (its id or a unique prefix of it); refuses
    /// to remove the last one. The store must be open with one of its keys.
    /// Returns the id removed.
    pub fn remove_key(&self, spec: &str) -> Result<String> {
        state::keyring::remove_key(&self.h, spec)
    }

    /// The job log, oldest first: one JSON object per finished operation
    /// (`time`, `op`, `host`, `pid`, `report`). Stores made before version
    /// 2 kept one `log/jobs.log` file of such lines; they are read too.
    pub fn job_log(&self) -> Result<Vec<serde_json::Value>> {
        ops::log::job_log(&self.h)
    }
}

impl From<Handle> for Store {
    fn from(h: Handle) -> Store {
        Store { h }
    }
}
