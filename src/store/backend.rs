//! Where a store keeps its files.
//!
//! The store's logic talks to storage only through [`Backend`]: named
//! objects that are written whole and committed atomically, read at any
//! offset, listed and deleted, plus an advisory lock. [`LocalDir`] is the
//! folder implementation; an object-store backend can follow without
//! touching the rest of the store (objects map to keys, commit to a
//! completed upload, the lock to a lease).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::io::sync_dir;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How an operation shares the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Backups, restores, verify: any number at once.
    Shared,
    /// Merge, prune, vacuum, reindex: alone.
    Exclusive,
}

/// Held while an operation runs; dropping it releases the lock.
pub trait LockGuard: Send + Sync + std::fmt::Debug {}

/// An object being written. Dropped without [`ObjectWriter::commit`], it
/// leaves nothing under its key.
pub trait ObjectWriter: Send {
    /// Appends bytes.
    fn write(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Bytes written so far.
    fn position(&self) -> u64;
    /// Makes the object durable and visible under its key, atomically.
    fn commit(self: Box<Self>) -> io::Result<()>;
}

/// Storage for a store: see the module documentation. Keys are relative,
/// `/`-separated paths such as `packs/ab/ab12....pack`.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// A human-readable location of `key`, for messages.
    fn describe(&self, key: &str) -> PathBuf;
    /// Fills `buf` from `offset` of object `key`.
    fn read_at(&self, key: &str, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// The whole object.
    fn read_all(&self, key: &str) -> io::Result<Vec<u8>>;
    /// The object's size.
    fn size(&self, key: &str) -> io::Result<u64>;
    /// Whether the object exists.
    fn exists(&self, key: &str) -> bool;
    /// Keys under `prefix` (a folder), recursively, sorted. A prefix that
    /// does not exist is an error (`NotFound`), not an empty list.
    fn list(&self, prefix: &str) -> io::Result<Vec<String>>;
    /// Starts writing object `key`.
    fn create(&self, key: &str) -> io::Result<Box<dyn ObjectWriter>>;
    /// Deletes an object (no error if it is already gone); the delete is
    /// durable when this returns, so deletes land in the order they are made.
    fn delete(&self, key: &str) -> io::Result<()>;
    /// Appends one line to a log object, atomically with respect to other appenders.
    fn append_line(&self, key: &str, line: &str) -> io::Result<()>;
    /// Takes the store lock; with `wait`, blocks until it is free, else
    /// returns `Ok(None)` when another holder conflicts.
    fn lock(&self, mode: LockMode, wait: bool) -> io::Result<Option<Box<dyn LockGuard>>>;
    /// Bytes the store occupies in total.
    fn total_bytes(&self) -> io::Result<u64>;
}

/// A store in a local folder.
#[derive(Debug)]
pub struct LocalDir {
    root: PathBuf,
    /// Open read handles, so reading many chunks of a pack costs one open.
    handles: Mutex<HashMap<String, Arc<File>>>,
}

const MAX_HANDLES: usize = 256;

impl LocalDir {
    /// A backend over `root` (which must exist).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalDir { root: root.into(), handles: Mutex::new(HashMap::new()) }
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// An open handle for `key`. Only packs are cached: they are never
    /// rewritten under the same name, while a manifest can be replaced
    /// (merge) and a cached handle would go on reading the old file.
    fn handle(&self, key: &str) -> io::Result<Arc<File>> {
        if !key.starts_with("packs/") {
            return Ok(Arc::new(File::open(self.path(key))?));
        }
        let mut handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = handles.get(key) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(self.path(key))?);
        if handles.len() >= MAX_HANDLES {
            handles.clear();
        }
        handles.insert(key.to_string(), f.clone());
        Ok(f)
    }

    fn forget(&self, key: &str) {
        self.handles.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

struct LocalWriter {
    file: Option<File>,
    temp: PathBuf,
    target: PathBuf,
    written: u64,
}

impl ObjectWriter for LocalWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let f = self.file.as_mut().ok_or_else(|| io::Error::other("object already committed"))?;
        f.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn position(&self) -> u64 {
        self.written
    }

    fn commit(mut self: Box<Self>) -> io::Result<()> {
        let file = self.file.take().ok_or_else(|| io::Error::other("object already committed"))?;
        file.sync_all()?;
        drop(file);
        let dir = self.target.parent();
        // A folder made here (packs/XX) must itself reach the disk, or a
        // crash could lose it with the pack an index already names.
        let made = dir.filter(|d| !d.is_dir());
        if let Some(dir) = dir {
            fs::create_dir_all(dir)?;
        }
        fs::rename(&self.temp, &self.target)?;
        if let Some(dir) = dir {
            sync_dir(dir)?;
        }
        if let Some(parent) = made.and_then(Path::parent) {
            sync_dir(parent)?;
        }
        Ok(())
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

#[derive(Debug)]
struct LocalLock {
    _file: File,
}

impl LockGuard for LocalLock {}

fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let key = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
        if entry.file_type()?.is_dir() {
            walk(&entry.path(), &key, out)?;
        } else {
            out.push(key);
        }
    }
    Ok(())
}

impl Backend for LocalDir {
    fn describe(&self, key: &str) -> PathBuf {
        self.path(key)
    }

    fn read_at(&self, key: &str, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let f = self.handle(key)?;
        #[cfg(unix)]
        {
            std::os::unix::fs::FileExt::read_exact_at(&*f, buf, offset)
        }
        #[cfg(windows)]
        {
            let mut done = 0;
            while done < buf.len() {
                let n = std::os::windows::fs::FileExt::seek_read(&*f, &mut buf[done..], offset + done as u64)?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                done += n;
            }
            Ok(())
        }
    }

    fn read_all(&self, key: &str) -> io::Result<Vec<u8>> {
        fs::read(self.path(key))
    }

    fn size(&self, key: &str) -> io::Result<u64> {
        Ok(fs::metadata(self.path(key))?.len())
    }

    fn exists(&self, key: &str) -> bool {
        self.path(key).exists()
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        // A store's folders exist from init on: a missing one is a damaged
        // or unmounted store, never an empty listing.
        let top = self.path(prefix);
        if !top.is_dir() {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("{} is not a folder", top.display())));
        }
        let mut out = Vec::new();
        walk(&top, prefix.trim_end_matches('/'), &mut out)?;
        out.sort();
        Ok(out)
    }

    fn create(&self, key: &str) -> io::Result<Box<dyn ObjectWriter>> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let tmp_dir = self.root.join("tmp");
        fs::create_dir_all(&tmp_dir)?;
        let name = key.replace('/', "_");
        let temp = tmp_dir.join(format!("{name}.{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
        let file = OpenOptions::new().write(true).create_new(true).open(&temp)?;
        Ok(Box::new(LocalWriter { file: Some(file), temp, target: self.path(key), written: 0 }))
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        self.forget(key);
        let path = self.path(key);
        match fs::remove_file(&path) {
            // The folder is flushed so deletes reach the disk in the order
            // they were made: vacuum drops old index files before the packs
            // they name, prune drops children before parents.
            Ok(()) => path.parent().map_or(Ok(()), sync_dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn append_line(&self, key: &str, line: &str) -> io::Result<()> {
        let path = self.path(key);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut f = OpenOptions::new().append(true).create(true).open(path)?;
        // One write call: appends from several processes do not interleave.
        f.write_all(format!("{line}\n").as_bytes())?;
        f.sync_data()
    }

    fn lock(&self, mode: LockMode, wait: bool) -> io::Result<Option<Box<dyn LockGuard>>> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(self.path("lock"))?;
        let locked = match (mode, wait) {
            (LockMode::Shared, true) => file.lock_shared().map(|_| true),
            (LockMode::Exclusive, true) => file.lock().map(|_| true),
            (LockMode::Shared, false) => match file.try_lock_shared() {
                Ok(()) => Ok(true),
                Err(fs::TryLockError::WouldBlock) => Ok(false),
                Err(fs::TryLockError::Error(e)) => Err(e),
            },
            (LockMode::Exclusive, false) => match file.try_lock() {
                Ok(()) => Ok(true),
                Err(fs::TryLockError::WouldBlock) => Ok(false),
                Err(fs::TryLockError::Error(e)) => Err(e),
            },
        }?;
        Ok(locked.then(|| Box::new(LocalLock { _file: file }) as Box<dyn LockGuard>))
    }

    fn total_bytes(&self) -> io::Result<u64> {
        let mut keys = Vec::new();
        walk(&self.root, "", &mut keys)?;
        let mut total = 0;
        for k in keys {
            match fs::metadata(self.path(&k)) {
                Ok(m) => total += m.len(),
                // Deleted since the walk (a vacuum, a finished temp file).
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }
}
