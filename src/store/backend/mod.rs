//! Where a store keeps its objects.
//!
//! The store's logic talks to storage only through [`Backend`], and asks
//! only for what a folder and a bucket both have: create an object whole,
//! and only if its key is free ([`ObjectWriter::commit`] fails with
//! `AlreadyExists` otherwise: nothing is ever overwritten); read any range
//! of it; list a prefix with sizes and modification times; delete. Rename,
//! append and advisory locks are a folder's luxuries the store does not
//! rely on: the job log is one object per job, merges write a new
//! generation of a manifest instead of replacing it, and who is using the
//! store is told by lease objects (`crate::store::state::lease`).
//!
//! [`LocalDir`] keeps a store in a folder; [`MemoryBackend`] in memory (for
//! tests, and with a logical clock for deterministic schedules).
//!
//! May import: `model`, `crypto` and the store's error (a location that is
//! no store is a `StoreError`); never `format`, `state` or `ops`: a backend
//! stores bytes under keys and knows a key's folder policy from
//! `model::layout` alone.

/// The [`Backend`] methods a wrapper (cache, lock, seal) passes to the
/// backend it wraps, field `inner`, unchanged: the storage's clock,
/// traffic and Object Lock. `forward_to_inner!(reads)` passes reads,
/// stats and listings on too, for wrappers that only guard writes.
macro_rules! forward_to_inner {
    (reads) => {
        fn describe(&self, key: &str) -> std::path::PathBuf {
            self.inner.describe(key)
        }
        fn read_at(&self, key: &str, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            self.inner.read_at(key, buf, offset)
        }
        fn read_all(&self, key: &str) -> std::io::Result<Vec<u8>> {
            self.inner.read_all(key)
        }
        fn stat(&self, key: &str) -> std::io::Result<$crate::store::backend::ObjectInfo> {
            self.inner.stat(key)
        }
        fn list(&self, prefix: &str) -> std::io::Result<Vec<$crate::store::backend::ObjectInfo>> {
            self.inner.list(prefix)
        }
        forward_to_inner!();
    };
    () => {
        fn now(&self) -> std::io::Result<std::time::SystemTime> {
            self.inner.now()
        }
        fn traffic(&self) -> $crate::store::backend::Traffic {
            self.inner.traffic()
        }
        fn lock_support(&self) -> std::io::Result<()> {
            self.inner.lock_support()
        }
        fn retain(
            &self,
            key: &str,
            mode: $crate::store::model::object_lock::LockMode,
            until: std::time::SystemTime,
        ) -> std::io::Result<()> {
            self.inner.retain(key, mode, until)
        }
        fn retained_until(&self, key: &str) -> std::io::Result<Option<std::time::SystemTime>> {
            self.inner.retained_until(key)
        }
        fn read_concurrency(&self) -> usize {
            self.inner.read_concurrency()
        }
    };
}

mod cache;
mod local;
pub mod location;
mod locking;
mod memory;
#[cfg(feature = "object-store")]
mod object;
mod readonly;
mod sealing;

use std::io;
use std::path::PathBuf;
use std::time::SystemTime;

use crate::store::model::object_lock::LockMode;

pub use cache::CachedBackend;
pub use local::LocalDir;
pub(crate) use locking::LockingBackend;
pub use memory::MemoryBackend;
#[cfg(feature = "object-store")]
pub use object::ObjectBackend;
pub(crate) use readonly::ReadOnlyBackend;
pub(crate) use sealing::SealingBackend;

/// Requests a backend has made and bytes it has uploaded, since it was
/// made: [`Backend::traffic`]. On object storage a request is one HTTP
/// request (what a bucket bills); on a folder, one file operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Traffic {
    /// Requests (reads, listings, writes, deletes).
    pub requests: u64,
    /// Bytes sent to the storage.
    pub bytes_uploaded: u64,
}

impl Traffic {
    /// What happened between `earlier` and `self`.
    pub fn since(self, earlier: Traffic) -> Traffic {
        Traffic {
            requests: self.requests.saturating_sub(earlier.requests),
            bytes_uploaded: self.bytes_uploaded.saturating_sub(earlier.bytes_uploaded),
        }
    }
}

/// The counters behind [`Traffic`], shared by a backend's clones.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    requests: std::sync::atomic::AtomicU64,
    bytes_uploaded: std::sync::atomic::AtomicU64,
}

impl Counters {
    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    pub(crate) fn uploaded(&self, n: usize) {
        self.bytes_uploaded.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }
    pub(crate) fn snapshot(&self) -> Traffic {
        use std::sync::atomic::Ordering::Relaxed;
        Traffic { requests: self.requests.load(Relaxed), bytes_uploaded: self.bytes_uploaded.load(Relaxed) }
    }
}

/// One object, as a listing or [`Backend::stat`] describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its key.
    pub key: String,
    /// Bytes.
    pub size: u64,
    /// When it was written, by the storage's clock.
    pub modified: SystemTime,
}

/// An object being written. Dropped without [`ObjectWriter::commit`], it
/// leaves nothing under its key.
pub trait ObjectWriter: Send {
    /// Appends bytes.
    fn write(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Bytes written so far.
    fn position(&self) -> u64;
    /// Makes the object durable and visible under its key, atomically, if
    /// no object has that key; otherwise fails with
    /// [`io::ErrorKind::AlreadyExists`] and leaves the existing one alone.
    fn commit(self: Box<Self>) -> io::Result<()>;
}

/// Storage for a store: see the module documentation. Keys are relative,
/// `/`-separated paths such as `packs/ab/ab12....pack`.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// A human-readable location of `key` (a path or a URL), for messages.
    fn describe(&self, key: &str) -> PathBuf;
    /// Fills `buf` from `offset` of object `key` (`NotFound` if there is no
    /// such object, `UnexpectedEof` if it ends first).
    fn read_at(&self, key: &str, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// The whole object.
    fn read_all(&self, key: &str) -> io::Result<Vec<u8>>;
    /// The object's size and time (`NotFound` if there is none).
    fn stat(&self, key: &str) -> io::Result<ObjectInfo>;
    /// Every object under `prefix` (a folder), recursively, sorted by key.
    fn list(&self, prefix: &str) -> io::Result<Vec<ObjectInfo>>;
    /// Starts writing object `key`.
    fn create(&self, key: &str) -> io::Result<Box<dyn ObjectWriter>>;
    /// Deletes an object (no error if it is already gone); the delete is
    /// durable when this returns, so deletes land in the order they are made.
    fn delete(&self, key: &str) -> io::Result<()>;
    /// The storage's clock: what [`ObjectInfo::modified`] of an object
    /// written now would say.
    fn now(&self) -> io::Result<SystemTime> {
        Ok(SystemTime::now())
    }
    /// Requests made and bytes uploaded so far (zero where not counted).
    fn traffic(&self) -> Traffic {
        Traffic::default()
    }
    /// Whether objects can be locked here (S3 Object Lock enabled on the
    /// bucket); `Unsupported` with the reason if not.
    fn lock_support(&self) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "this storage cannot lock objects (S3 Object Lock)"))
    }
    /// Locks object `key` until at least `until` in `mode`.
    fn retain(&self, key: &str, mode: LockMode, until: SystemTime) -> io::Result<()> {
        let _ = (key, mode, until);
        Err(io::Error::new(io::ErrorKind::Unsupported, "this storage cannot lock objects"))
    }
    /// Until when object `key` is locked (`None`: not locked).
    fn retained_until(&self, key: &str) -> io::Result<Option<SystemTime>> {
        let _ = key;
        Ok(None)
    }
    /// How many reads to keep in flight by default: a request's latency,
    /// not the CPU, bounds a remote store, so it wants many more than a
    /// disk does. Readers take it unless told otherwise
    /// ([`OpenOptions::connections`](crate::store::OpenOptions::connections)).
    fn read_concurrency(&self) -> usize {
        4
    }
}

/// Fills `buf` from `offset` of `bytes`, the whole of object `key`
/// (`UnexpectedEof` if it ends first).
pub(crate) fn copy_range(bytes: &[u8], key: &str, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let start = usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
    let src = start.checked_add(buf.len()).and_then(|end| bytes.get(start..end)).ok_or_else(|| {
        io::Error::new(io::ErrorKind::UnexpectedEof, format!("{key} ends before byte {}", offset + buf.len() as u64))
    })?;
    buf.copy_from_slice(src);
    Ok(())
}

/// Whether an object exists: `false` only when the storage says it is not
/// there. A sealed object that does not open exists (damaged); any other
/// failure to tell is an error, never taken for absence (a backup whose
/// manifest could not be checked must not be fenced as unfinished).
pub(crate) fn exists(backend: &dyn Backend, key: &str) -> io::Result<bool> {
    match backend.stat(key) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) if is_seal_error(&e) => Ok(true),
        Err(e) => Err(e),
    }
}

/// Whether a read failed because a sealed object did not open (forged,
/// damaged or from another store), rather than because the storage could
/// not answer: only the first says anything about the object.
pub(crate) fn is_seal_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<crate::store::crypto::SealError>())
}

/// A small object's bytes, refused (`InvalidData`) when its size is over
/// `max`: hostile storage must not make us fetch gigabytes to find that an
/// object is not what its name says. Exactly the stated size is read, so an
/// object swapped for a larger one after the stat is not read whole either.
pub(crate) fn read_small(backend: &dyn Backend, key: &str, max: u64) -> io::Result<Vec<u8>> {
    let size = backend.stat(key)?.size;
    if size > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{size} bytes, more than the {max} allowed here"),
        ));
    }
    let mut bytes = vec![0; size as usize];
    backend.read_at(key, &mut bytes, 0)?;
    Ok(bytes)
}

/// Bytes of every object under `prefix` (`""`: the whole store).
pub(crate) fn total_bytes(backend: &dyn Backend, prefix: &str) -> io::Result<u64> {
    Ok(backend.list(prefix)?.iter().map(|o| o.size).sum())
}

/// The keys under `prefix`, sorted.
pub(crate) fn list_keys(backend: &dyn Backend, prefix: &str) -> io::Result<Vec<String>> {
    Ok(backend.list(prefix)?.into_iter().map(|o| o.key).collect())
}

/// Writes a whole small object, only if its key is free.
pub(crate) fn put_new(backend: &dyn Backend, key: &str, bytes: &[u8]) -> std::io::Result<()> {
    let mut w = backend.create(key)?;
    w.write(bytes)?;
    w.commit()
}
