//! Writing a file so that it appears whole or not at all: the one path by
//! which exports, a store in a folder and the copy-on-write map put files in
//! place.
//!
//! A [`PendingFile`] is written under a temporary name, flushed, and put in
//! place by a rename (replacing what is there) or a hard link (keeping it:
//! the link fails if the name is taken, atomically); then the folder is
//! flushed so the new name survives a crash. Dropped uncommitted, the
//! temporary file is removed.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// How a pending file takes its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Replace a file of that name (a rename).
    Replace,
    /// Create the name only if it is free, atomically: a hard link, which
    /// fails if the name is taken. Only where the platform has no links at
    /// all (`Unsupported`) a check just before a rename, which two writers
    /// of one name could race. What a store's put-if-absent rests on.
    Create,
    /// Keep a file of that name and fail with `AlreadyExists`, as well as
    /// the file system allows: a hard link, and where linking fails for any
    /// reason (FAT and exFAT refuse links) a check just before a rename.
    /// What a restore that must not clobber asks for.
    KeepExisting,
}

/// A failed step of writing a file: which file, doing what.
#[derive(Debug)]
pub(crate) struct FileError {
    pub path: PathBuf,
    pub action: &'static str,
    pub source: io::Error,
}

impl From<FileError> for io::Error {
    /// The operating system's error, its kind kept (a backend's caller names
    /// the key).
    fn from(e: FileError) -> io::Error {
        e.source
    }
}

fn step(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> FileError {
    let path = path.to_path_buf();
    move |source| FileError { path, action, source }
}

/// A file being written; dropped without [`PendingFile::commit`], it is removed.
#[derive(Debug)]
pub(crate) struct PendingFile {
    file: Option<File>,
    temp: PathBuf,
    target: PathBuf,
    /// Set once the file is in place: until then, dropping removes the temp.
    committed: bool,
}

impl PendingFile {
    /// A new file for `target`, written as `.NAME.partial-PID-N` beside it.
    pub(crate) fn create(target: &Path) -> Result<PendingFile, FileError> {
        let dir = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        PendingFile::create_in(dir, &format!(".{name}.partial"), target)
    }

    /// A new file for `target`, written in `dir` (on the same file system)
    /// under `stem` and a suffix unique to this process and call.
    pub(crate) fn create_in(dir: &Path, stem: &str, target: &Path) -> Result<PendingFile, FileError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let temp = dir.join(format!("{stem}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
        let file =
            File::options().read(true).write(true).create_new(true).open(&temp).map_err(step(&temp, "create"))?;
        Ok(PendingFile { file: Some(file), temp, target: target.to_path_buf(), committed: false })
    }

    /// The file, open for reading and writing.
    pub(crate) fn file(&self) -> &File {
        // Only `commit` takes the file, and it consumes self.
        self.file.as_ref().expect("file present until commit")
    }

    /// The temporary name, for messages.
    pub(crate) fn temp(&self) -> &Path {
        &self.temp
    }

    /// Writes `buf` at `offset`.
    pub(crate) fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), FileError> {
        write_all_at(self.file(), buf, offset).map_err(step(&self.temp, "write"))
    }

    /// Flushes the data (when `sync`), puts the file in place as `placement`
    /// says, and flushes the folder (when `sync`).
    pub(crate) fn commit(mut self, sync: bool, placement: Placement) -> Result<(), FileError> {
        let file = self.file.take().expect("file present until commit");
        if sync {
            file.sync_all().map_err(step(&self.temp, "sync"))?;
        }
        drop(file);
        let placed = match placement {
            Placement::Replace => fs::rename(&self.temp, &self.target),
            Placement::Create | Placement::KeepExisting => match fs::hard_link(&self.temp, &self.target) {
                Ok(()) => {
                    // The name is taken: the object is in place whatever
                    // becomes of the temporary name (vacuum clears `tmp/`).
                    let _ = fs::remove_file(&self.temp);
                    Ok(())
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
                Err(e) if placement == Placement::Create && e.kind() != io::ErrorKind::Unsupported => Err(e),
                Err(_) if self.target.exists() => Err(io::Error::new(io::ErrorKind::AlreadyExists, "the file exists")),
                Err(_) => fs::rename(&self.temp, &self.target),
            },
        };
        let action = match placement {
            Placement::Replace => "rename into place",
            Placement::Create => "create (only if absent)",
            Placement::KeepExisting => "put into place (an existing file is kept)",
        };
        placed.map_err(step(&self.target, action))?;
        self.committed = true;
        if sync {
            let dir = self.target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            sync_dir(dir).map_err(step(dir, "sync folder"))?;
        }
        Ok(())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.committed {
            drop(self.file.take());
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Flushes a folder so a rename inside it is durable (a no-op where the
/// platform cannot open folders).
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Writes all of `buf` at `offset` (`pwrite` on Unix).
#[cfg(unix)]
pub(crate) fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

/// Writes all of `buf` at `offset`.
#[cfg(windows)]
pub(crate) fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_write(buf, offset)? {
            0 => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            n => {
                buf = &buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target that appears while a file is written is kept unless
    /// replacing was asked for; nothing of the temporary file is left.
    #[test]
    fn a_file_that_appeared_meanwhile_is_kept_unless_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.raw");
        let pending = PendingFile::create(&target).unwrap();
        pending.write_at(b"restored", 0).unwrap();
        fs::write(&target, b"theirs").unwrap();
        let err = pending.commit(true, Placement::KeepExisting).unwrap_err();
        assert_eq!(err.source.kind(), io::ErrorKind::AlreadyExists, "{err:?}");
        assert_eq!(fs::read(&target).unwrap(), b"theirs");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "the temporary file is gone");
        let pending = PendingFile::create(&target).unwrap();
        let err = pending.commit(true, Placement::Create).unwrap_err();
        assert_eq!(err.source.kind(), io::ErrorKind::AlreadyExists, "{err:?}");
        assert_eq!(fs::read(&target).unwrap(), b"theirs");
        let pending = PendingFile::create(&target).unwrap();
        pending.write_at(b"restored", 0).unwrap();
        pending.commit(true, Placement::Replace).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"restored");
        let fresh = dir.path().join("new.raw");
        let pending = PendingFile::create(&fresh).unwrap();
        pending.write_at(b"new", 0).unwrap();
        pending.commit(false, Placement::KeepExisting).unwrap();
        assert_eq!(fs::read(&fresh).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    /// Dropped before its commit, a pending file leaves nothing.
    #[test]
    fn an_uncommitted_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join("tmp");
        fs::create_dir(&scratch).unwrap();
        let pending = PendingFile::create_in(&scratch, "key", &dir.path().join("key")).unwrap();
        pending.write_at(b"half", 0).unwrap();
        assert!(pending.temp().starts_with(&scratch));
        drop(pending);
        assert_eq!(fs::read_dir(&scratch).unwrap().count(), 0);
        assert!(!dir.path().join("key").exists());
    }
}
