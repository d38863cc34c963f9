//! A store under Object Lock: every object a backup needs is locked as it
//! is committed, and nothing locked is deleted.
//!
//! Locked are the config, packs, index files, manifests, restore points,
//! key objects and the job log's entries (so whoever holds the store's
//! credentials cannot erase the record of what was backed up); not
//! leases, maintenance claims, tombstones or vacuum's records, which the
//! store must be able to delete (a tombstone lost to an attacker only
//! brings a pruned backup back; a lease lost only lets maintenance run
//! sooner). A log entry is locked for the store's days from when it was
//! written and is not extended: vacuum extends only what backups need. The lock is set right after the object
//! is created (S3 takes retention on a completed object; a multipart
//! upload cannot carry it), so a process killed in between leaves an
//! unlocked object: vacuum's extension pass locks every live object whose
//! retention is short or missing.

use std::io;
use std::sync::Arc;

use crate::store::backend::{Backend, ObjectWriter};
use crate::store::model::object_lock::ObjectLock;

use crate::store::model::layout::locked_key;

/// `inner`, locking what it creates.
#[derive(Debug)]
pub(crate) struct LockingBackend {
    inner: Arc<dyn Backend>,
    lock: ObjectLock,
}

impl LockingBackend {
    pub(crate) fn new(inner: Arc<dyn Backend>, lock: ObjectLock) -> LockingBackend {
        LockingBackend { inner, lock }
    }
}

struct LockingWriter {
    inner: Box<dyn ObjectWriter>,
    backend: Arc<dyn Backend>,
    key: String,
    lock: ObjectLock,
}

impl ObjectWriter for LockingWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write(bytes)
    }
    fn position(&self) -> u64 {
        self.inner.position()
    }
    fn commit(self: Box<Self>) -> io::Result<()> {
        self.inner.commit()?;
        let now = self.backend.now()?;
        self.backend.retain(&self.key, self.lock.mode, self.lock.until(now))
    }
}

impl Backend for LockingBackend {
    fn create(&self, key: &str) -> io::Result<Box<dyn ObjectWriter>> {
        let inner = self.inner.create(key)?;
        if !locked_key(key) {
            return Ok(inner);
        }
        Ok(Box::new(LockingWriter { inner, backend: self.inner.clone(), key: key.to_string(), lock: self.lock }))
    }
    /// Refuses to delete a locked object: on a versioned bucket the delete
    /// would only hide it behind a delete marker.
    fn delete(&self, key: &str) -> io::Result<()> {
        if locked_key(key)
            && let Some(until) = self.inner.retained_until(key)?
            && until > self.inner.now()?
        {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{key} is under Object Lock until {}", crate::store::model::time::Moment::from(until)),
            ));
        }
        self.inner.delete(key)
    }
    forward_to_inner!(reads);
}
