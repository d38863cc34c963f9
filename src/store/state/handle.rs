//! An open store's parts, and what every operation does with them first:
//! take a lease, refuse a write the store cannot take, load the index,
//! log the job.
//!
//! [`Store`](crate::store::Store) is this and its public methods; the
//! operations in `ops` are functions over a `&Handle`, so none of them
//! reaches another through a hidden method.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::store::backend::{self, Backend};
use crate::store::crypto;
use crate::store::error::{Result, StoreError};
use crate::store::format::config::StoreConfig;
use crate::store::model::id::PackId;
use crate::store::model;
use crate::store::model::limits::{Limits, ReadSettings};
use crate::store::model::time::Moment;
use crate::store::state;
use crate::store::state::index::Index;
use crate::store::state::lease::{Lease, LeaseMode, LeaseSettings, host_name};

/// An open store's parts.
#[derive(Debug)]
pub(crate) struct Handle {
    /// The store's objects; in an encrypted store, behind the sealing
    /// layer, so reads and writes here are plaintext.
    pub(crate) backend: Arc<dyn Backend>,
    /// The storage as it is, below the sealing layer (the same as
    /// `backend` in a plain store): for what must see objects as stored.
    pub(crate) stored: Arc<dyn Backend>,
    pub(crate) config: StoreConfig,
    pub(crate) crypt: crypto::Crypt,
    /// The key object the store was opened with, if encrypted.
    pub(crate) key_id: Option<String>,
    pub(crate) limits: Limits,
    /// How readers of chunks read: requests in flight, read-ahead.
    pub(crate) reads: ReadSettings,
    pub(crate) leases: LeaseSettings,
    /// Opened read-only on request (`OpenOptions::read_only`): nothing
    /// is written, not even a lease.
    pub(crate) read_only_asked: bool,
    /// Found read-only: the storage refused a read lease, so reads go on
    /// without one (see [`Handle::read_lease`]).
    pub(crate) read_only_found: AtomicBool,
}

impl Handle {
    /// A store over `stored` as `crypt` says: behind the sealing layer when
    /// encrypted.
    pub(crate) fn new(stored: Arc<dyn Backend>, config: StoreConfig, crypt: crypto::Crypt, key_id: Option<String>) -> Handle {
        let backend: Arc<dyn Backend> = match &crypt {
            crypto::Crypt::Sealed(keys) => Arc::new(backend::SealingBackend::new(stored.clone(), keys.clone())),
            crypto::Crypt::Locked => Arc::new(backend::ReadOnlyBackend::new(stored.clone())),
            crypto::Crypt::Plain => stored.clone(),
        };
        let reads = ReadSettings::new(stored.read_concurrency(), ReadSettings::READ_AHEAD);
        Handle {
            backend,
            stored,
            config,
            crypt,
            key_id,
            limits: Limits::DEFAULT,
            reads,
            leases: LeaseSettings::default(),
            read_only_asked: false,
            read_only_found: AtomicBool::new(false),
        }
    }

    /// What an operator should know about this store before relying on it
    /// (empty for most stores): today, that its storage ignores
    /// conditional writes and it was made with
    /// [`InitOptions::single_writer`].
    pub(crate) fn warnings(&self) -> Vec<String> {
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
    pub(crate) fn backend(&self) -> &dyn Backend {
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

    /// A location for messages.
    pub(crate) fn path(&self) -> PathBuf {
        self.backend.describe("")
    }

    /// The global index, with copies in condemned packs tried last and not
    /// counted for deduplication. Call it holding a lease, so the list of
    /// condemned packs cannot miss one a vacuum may delete meanwhile.
    pub(crate) fn index_avoiding_condemned(&self) -> Result<Index> {
        Ok(self.index_and_packs()?.0)
    }

    /// [`Handle::index_avoiding_condemned`], with the packs present and the
    /// condemned ones it was built from. The condemnation records are read
    /// before `packs/` is listed: vacuum deletes a record's packs before
    /// the record, so a record read too late had deleted its packs before
    /// the listing. A pack deleted before this lease was taken is gone for
    /// good; one condemned later is not deleted while this lease lives.
    pub(crate) fn index_and_packs(
        &self,
    ) -> Result<(
        Index,
        HashSet<PackId>,
        HashSet<PackId>,
    )> {
        let backend = self.backend();
        let condemned = state::condemned::Condemned::read(backend)?.packs();
        let folder = model::layout::Folder::Packs.name();
        let present = match backend.list(folder) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            other => other.map_err(StoreError::io(backend.describe(folder), "list"))?,
        };
        let present = present.iter().filter_map(|o| PackId::from_key(&o.key)).collect();
        let index = Index::load_avoiding(backend, condemned.clone(), &present)?;
        Ok((index, present, condemned))
    }

    /// Takes a lease for `op` (see [`state::lease`]): maintenance conflicts with
    /// maintenance (`StoreBusy`, or waiting with `wait`); nothing else
    /// conflicts.
    pub(crate) fn lease(&self, mode: LeaseMode, op: &str, wait: bool) -> Result<Lease> {
        Lease::acquire(self.backend.clone(), self.leases, mode, op, wait)
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
    pub(crate) fn is_read_only(&self) -> bool {
        self.read_only_asked || self.read_only_found.load(Ordering::Relaxed)
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
                self.read_only_found.store(false, Ordering::Relaxed);
                Ok(Some(l))
            }
            Err(StoreError::Io { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                self.read_only_found.store(true, Ordering::Relaxed);
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
