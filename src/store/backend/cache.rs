//! A local copy of a remote store's small immutable objects, so opening a
//! store on object storage and taking an incremental does not cost one
//! request per index file and manifest.
//!
//! Every object a store writes is immutable (created once, never
//! overwritten), so a cached copy can only be stale by having been deleted
//! remotely. The cache therefore answers only for keys that the newest
//! listing of their folder, made through this backend, showed with the
//! same size; a key that listing did not show, or showed with another
//! size, is read remotely (and the copy replaced). Listing is what the
//! store does before reading any of these objects, so the cache changes
//! what is read where, never what is seen. Copies are checked by the
//! readers as any object is (checksums in index files and manifests).
//!
//! Only `index/`, `manifests/` and `points/` are cached: packs are large
//! and read by range, leases, tombstones and records are small and change.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::io::durable::{PendingFile, Placement};
use crate::store::backend::{Backend, ObjectInfo, ObjectWriter};
use crate::store::model::layout::Folder;

/// The largest object fetched whole to answer a range read (a manifest of
/// a 4 TiB disk at 512 KiB chunks is about 300 MiB: such reads go to the
/// store by range).
const MAX_KEPT: u64 = 64 << 20;

/// A backend whose index files, manifests and restore points are kept in a
/// local folder as well.
#[derive(Debug)]
pub struct CachedBackend {
    inner: Arc<dyn Backend>,
    dir: PathBuf,
    /// The cacheable objects, as the newest listing of their folder showed them.
    listed: Arc<Mutex<Listed>>,
    hits: AtomicU64,
}

/// What the listings made through the cache showed.
#[derive(Debug, Default)]
struct Listed {
    /// The folders listed at least once.
    folders: HashSet<String>,
    /// Their objects, by key, as the newest listing showed them.
    objects: HashMap<String, ObjectInfo>,
    /// Keys created through the cache since their folder's listing.
    created: HashSet<String>,
}

/// What the listings say about a key.
enum Known {
    Present(ObjectInfo),
    /// Its folder was listed without it, and it was not created since.
    Absent,
    /// Its folder was never listed.
    Unknown,
}

fn cacheable(key: &str) -> bool {
    Folder::of(key).is_some_and(Folder::cached) && !key.split('/').any(|part| part == ".." || part.is_empty())
}

impl CachedBackend {
    /// A cache of `inner` in folder `dir` (created when missing; one folder
    /// per store: name it by the store's id).
    pub fn new(inner: Arc<dyn Backend>, dir: impl Into<PathBuf>) -> io::Result<CachedBackend> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(CachedBackend { inner, dir, listed: Arc::default(), hits: AtomicU64::new(0) })
    }

    /// Reads answered from the local copy so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    fn file(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    fn keep(&self, key: &str, bytes: &[u8]) {
        // Best effort: a cache that cannot be written only costs requests.
        let path = self.file(key);
        let Some(parent) = path.parent() else { return };
        if fs::create_dir_all(parent).is_err() {
            return;
        }
        // Flushed before it takes the key's name, so a crash never leaves a
        // copy of the right size with the wrong bytes under the key.
        if let Ok(pending) = PendingFile::create(&path)
            && pending.write_at(bytes, 0).is_ok()
        {
            let _ = pending.commit(true, Placement::Replace);
        }
    }

    fn cached(&self, key: &str) -> Option<Vec<u8>> {
        let size = self.listed(key)?.size;
        let bytes = fs::read(self.file(key)).ok()?;
        (bytes.len() as u64 == size).then(|| {
            self.hits.fetch_add(1, Ordering::Relaxed);
            bytes
        })
    }

    /// Reads a range of the local copy of `key`, if there is one of the
    /// listed size: `None` to go elsewhere.
    fn cached_range(&self, key: &str, buf: &mut [u8], offset: u64) -> Option<io::Result<()>> {
        let size = self.listed(key)?.size;
        let file = fs::File::open(self.file(key)).ok()?;
        if file.metadata().ok()?.len() != size {
            return None;
        }
        if offset.checked_add(buf.len() as u64).is_none_or(|end| end > size) {
            return Some(Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("{key} ends first"))));
        }
        #[cfg(unix)]
        {
            self.hits.fetch_add(1, Ordering::Relaxed);
            Some(std::os::unix::fs::FileExt::read_exact_at(&file, buf, offset))
        }
        // Elsewhere: the whole copy (`whole`), read once per call.
        #[cfg(not(unix))]
        {
            let _ = file;
            None
        }
    }

    fn listed(&self, key: &str) -> Option<ObjectInfo> {
        match self.known(key) {
            Known::Present(info) => Some(info),
            _ => None,
        }
    }

    fn known(&self, key: &str) -> Known {
        let listed = self.listed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(info) = listed.objects.get(key) {
            return Known::Present(info.clone());
        }
        match key.split_once('/') {
            Some((folder, _)) if listed.folders.contains(folder) && !listed.created.contains(key) => Known::Absent,
            _ => Known::Unknown,
        }
    }

    /// Fails with `NotFound` for a cacheable key the listings say is absent.
    fn check_absent(&self, key: &str) -> io::Result<()> {
        if cacheable(key) && matches!(self.known(key), Known::Absent) {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no object {key} (by the newest listing)")));
        }
        Ok(())
    }

    /// The object's bytes from the copy, or fetched whole and kept when the
    /// listing shows it small enough to keep.
    fn whole(&self, key: &str) -> Option<Vec<u8>> {
        if let Some(bytes) = self.cached(key) {
            return Some(bytes);
        }
        let info = self.listed(key)?;
        if info.size > MAX_KEPT {
            return None;
        }
        let bytes = self.inner.read_all(key).ok()?;
        self.keep(key, &bytes);
        Some(bytes)
    }

    /// Records a listing of `prefix` and drops local copies of objects
    /// that are gone.
    fn note_listing(&self, prefix: &str, objects: &[ObjectInfo]) {
        let folder = prefix.trim_end_matches('/');
        if !Folder::ALL.into_iter().any(|f| f.cached() && f.name() == folder) {
            return;
        }
        let mut listed = self.listed.lock().unwrap_or_else(|p| p.into_inner());
        let under = format!("{folder}/");
        listed.folders.insert(folder.to_string());
        listed.objects.retain(|k, _| !k.starts_with(&under));
        listed.created.retain(|k| !k.starts_with(&under));
        for o in objects {
            if cacheable(&o.key) {
                listed.objects.insert(o.key.clone(), o.clone());
            }
        }
        drop(listed);
        remove_unlisted(&self.dir.join(folder), &under, objects);
    }
}

/// Deletes local copies under `dir` whose keys `objects` does not hold.
fn remove_unlisted(dir: &Path, under: &str, objects: &[ObjectInfo]) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            let name = entry.file_name().to_string_lossy().into_owned();
            remove_unlisted(&path, &format!("{under}{name}/"), objects);
            continue;
        }
        let key = format!("{under}{}", entry.file_name().to_string_lossy());
        if objects.binary_search_by(|o| o.key.as_str().cmp(&key)).is_err() {
            let _ = fs::remove_file(&path);
        }
    }
}

/// A writer that, once committed, takes its key off the listings' absent
/// list (the store is asked about it until the next listing).
struct Noted {
    inner: Box<dyn ObjectWriter>,
    key: String,
    listed: Arc<Mutex<Listed>>,
}

impl ObjectWriter for Noted {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write(bytes)
    }
    fn position(&self) -> u64 {
        self.inner.position()
    }
    fn commit(self: Box<Self>) -> io::Result<()> {
        let result = self.inner.commit();
        // Even a failed commit may have landed (a lost reply).
        self.listed.lock().unwrap_or_else(|p| p.into_inner()).created.insert(self.key);
        result
    }
}

impl Backend for CachedBackend {
    fn describe(&self, key: &str) -> PathBuf {
        self.inner.describe(key)
    }
    fn read_at(&self, key: &str, buf: &mut [u8], offset: u64) -> io::Result<()> {
        // A range of a listed object: from the local copy, read by range
        // (a manifest is read a header, then runs of slots, at a time), or
        // fetched whole once and kept.
        if cacheable(key) {
            if let Some(done) = self.cached_range(key, buf, offset) {
                return done;
            }
            if let Some(bytes) = self.whole(key) {
                return crate::store::backend::copy_range(&bytes, key, buf, offset);
            }
        }
        self.check_absent(key)?;
        self.inner.read_at(key, buf, offset)
    }
    fn read_all(&self, key: &str) -> io::Result<Vec<u8>> {
        if !cacheable(key) {
            return self.inner.read_all(key);
        }
        if let Some(bytes) = self.cached(key) {
            return Ok(bytes);
        }
        self.check_absent(key)?;
        let bytes = self.inner.read_all(key)?;
        self.keep(key, &bytes);
        Ok(bytes)
    }
    fn stat(&self, key: &str) -> io::Result<ObjectInfo> {
        if cacheable(key)
            && let Some(info) = self.listed(key)
        {
            return Ok(info);
        }
        self.check_absent(key)?;
        self.inner.stat(key)
    }
    fn list(&self, prefix: &str) -> io::Result<Vec<ObjectInfo>> {
        let objects = self.inner.list(prefix)?;
        self.note_listing(prefix, &objects);
        Ok(objects)
    }
    fn create(&self, key: &str) -> io::Result<Box<dyn ObjectWriter>> {
        let inner = self.inner.create(key)?;
        if !cacheable(key) {
            return Ok(inner);
        }
        Ok(Box::new(Noted { inner, key: key.to_string(), listed: self.listed.clone() }))
    }
    fn delete(&self, key: &str) -> io::Result<()> {
        if cacheable(key) {
            self.listed.lock().unwrap_or_else(|p| p.into_inner()).objects.remove(key);
            let _ = fs::remove_file(self.file(key));
        }
        self.inner.delete(key)
    }
    forward_to_inner!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryBackend;

    fn put(b: &dyn Backend, key: &str, bytes: &[u8]) {
        let mut w = b.create(key).unwrap();
        w.write(bytes).unwrap();
        w.commit().unwrap();
    }

    #[test]
    fn listed_objects_are_read_locally_and_deleted_ones_never() {
        let mem = MemoryBackend::new();
        let dir = std::env::temp_dir().join(format!("vhdkit-cache-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        put(&mem, "manifests/a.manifest", b"first");
        put(&mem, "packs/p.pack", b"pack");
        let cache = CachedBackend::new(Arc::new(mem.clone()), &dir).unwrap();
        // Not listed yet: read remotely (and kept).
        assert_eq!(cache.read_all("manifests/a.manifest").unwrap(), b"first");
        assert_eq!(cache.hits(), 0);
        cache.list("manifests").unwrap();
        let before = mem.traffic().requests;
        assert_eq!(cache.read_all("manifests/a.manifest").unwrap(), b"first");
        assert_eq!((cache.hits(), mem.traffic().requests), (1, before));
        // Ranges come from the copy too, and one past its end is refused.
        let mut part = [0u8; 3];
        cache.read_at("manifests/a.manifest", &mut part, 2).unwrap();
        assert_eq!((&part, cache.hits(), mem.traffic().requests), (b"rst", 2, before));
        assert_eq!(
            cache.read_at("manifests/a.manifest", &mut part, 3).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        // Packs are never cached.
        assert_eq!(cache.read_all("packs/p.pack").unwrap(), b"pack");
        assert!(!dir.join("packs/p.pack").exists());
        // Deleted by someone else: the next listing drops the copy, and a
        // read goes to the store, which says it is gone.
        mem.delete("manifests/a.manifest").unwrap();
        assert!(cache.list("manifests").unwrap().is_empty());
        assert!(!dir.join("manifests/a.manifest").exists());
        assert_eq!(cache.read_all("manifests/a.manifest").unwrap_err().kind(), io::ErrorKind::NotFound);
        // A copy of the wrong size (damaged locally) is not used.
        put(&mem, "manifests/b.manifest", b"second");
        cache.list("manifests").unwrap();
        fs::create_dir_all(dir.join("manifests")).unwrap();
        fs::write(dir.join("manifests/b.manifest"), b"xx").unwrap();
        assert_eq!(cache.read_all("manifests/b.manifest").unwrap(), b"second");
        let _ = fs::remove_dir_all(&dir);
    }
}
