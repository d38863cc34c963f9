//! A store in a local folder.
//!
//! Objects are files. A new object is written under `tmp/`, flushed, and
//! hard-linked to its key, which fails if the key exists (create-if-absent
//! without a race), then the folder is flushed; the temporary name is
//! removed afterwards (a crash in between leaves only a file in `tmp/`).
//! Deletes flush the folder, so they reach the disk in the order they are
//! made.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::io::durable::{PendingFile, Placement, sync_dir};
use crate::store::backend::{Backend, Counters, ObjectInfo, ObjectWriter, Traffic};
use crate::store::model::layout::{self, Folder};

/// A store in a local folder.
#[derive(Debug)]
pub struct LocalDir {
    root: PathBuf,
    /// Open read handles, so reading many chunks of a pack costs one open.
    handles: Mutex<HashMap<String, Arc<File>>>,
    counters: Arc<Counters>,
}

const MAX_HANDLES: usize = 256;

impl LocalDir {
    /// A backend over `root` (which must exist).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalDir { root: root.into(), handles: Mutex::new(HashMap::new()), counters: Arc::default() }
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// An open handle for `key`. Only packs are cached: every object is
    /// immutable, but a cached handle of a deleted and re-created key (a
    /// damage marker) would read the old file.
    fn handle(&self, key: &str) -> io::Result<Arc<File>> {
        if Folder::of(key) != Some(Folder::Packs) {
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
    counters: Arc<Counters>,
    /// Taken by the commit; dropped without one, the temporary file goes.
    pending: Option<PendingFile>,
    target: PathBuf,
    written: u64,
}

impl ObjectWriter for LocalWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let pending = self.pending.as_ref().ok_or_else(|| io::Error::other("object already committed"))?;
        pending.write_at(bytes, self.written)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn position(&self) -> u64 {
        self.written
    }

    fn commit(mut self: Box<Self>) -> io::Result<()> {
        let pending = self.pending.take().ok_or_else(|| io::Error::other("object already committed"))?;
        self.counters.request();
        self.counters.uploaded(self.written as usize);
        let dir = self.target.parent();
        // A folder made here (packs/XX) must itself reach the disk, or a
        // crash could lose it with the pack an index already names.
        let made = dir.filter(|d| !d.is_dir());
        if let Some(dir) = dir {
            fs::create_dir_all(dir)?;
        }
        // A hard link fails if the key exists: create-if-absent, atomically
        // (a check then a rename only where links are unsupported). The
        // data and the key's folder are flushed.
        pending.commit(true, Placement::Create)?;
        if let Some(parent) = made.and_then(Path::parent) {
            sync_dir(parent)?;
        }
        Ok(())
    }
}

fn info(key: String, meta: &fs::Metadata) -> ObjectInfo {
    ObjectInfo { key, size: meta.len(), modified: meta.modified().unwrap_or(std::time::UNIX_EPOCH) }
}

fn walk(dir: &Path, rel: &str, out: &mut Vec<ObjectInfo>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        // A sub-folder removed while we walk: nothing left in it.
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
            match entry.metadata() {
                Ok(m) => out.push(info(key, &m)),
                // Deleted since it was listed (a vacuum, a finished temp file).
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

impl Backend for LocalDir {
    fn describe(&self, key: &str) -> PathBuf {
        self.path(key)
    }

    fn read_at(&self, key: &str, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.counters.request();
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
        self.counters.request();
        fs::read(self.path(key))
    }

    fn stat(&self, key: &str) -> io::Result<ObjectInfo> {
        self.counters.request();
        let meta = fs::metadata(self.path(key))?;
        if !meta.is_file() {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("{key} is not an object")));
        }
        Ok(info(key.to_string(), &meta))
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<ObjectInfo>> {
        self.counters.request();
        // A store's folders exist from init on: a missing data folder is a
        // damaged or unmounted store, never an empty listing. Folders of
        // bookkeeping that may well be empty (which copies made by tools
        // that drop empty folders, git among them, leave out) list as empty
        // when the store itself is there.
        let top = self.path(prefix);
        if !top.is_dir() {
            let first = prefix.trim_end_matches('/').split('/').next().unwrap_or_default();
            let optional = Folder::ALL.into_iter().any(|f| f.name() == first && f.may_be_absent());
            if optional && self.root.join(layout::CONFIG).is_file() && !top.exists() {
                return Ok(Vec::new());
            }
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("{} is not a folder", top.display())));
        }
        let mut out = Vec::new();
        walk(&top, prefix.trim_end_matches('/'), &mut out)?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn create(&self, key: &str) -> io::Result<Box<dyn ObjectWriter>> {
        let tmp_dir = self.root.join("tmp");
        fs::create_dir_all(&tmp_dir)?;
        let target = self.path(key);
        let pending = PendingFile::create_in(&tmp_dir, &key.replace('/', "_"), &target)?;
        Ok(Box::new(LocalWriter { counters: self.counters.clone(), pending: Some(pending), target, written: 0 }))
    }

    fn traffic(&self) -> Traffic {
        self.counters.snapshot()
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        self.counters.request();
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
}
