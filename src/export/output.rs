//! An output file written under a temporary name and renamed into place.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::ExportError;

/// A file being written; dropped without [`PendingFile::commit`], it is removed.
pub(crate) struct PendingFile {
    file: Option<File>,
    temp: PathBuf,
    target: PathBuf,
    /// Set once the rename succeeded: until then, dropping removes the temp.
    committed: bool,
}

impl PendingFile {
    /// Creates `.NAME.partial-PID-N` beside `target`.
    pub(crate) fn create(target: &Path) -> Result<PendingFile, ExportError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let temp =
            dir.join(format!(".{name}.partial-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|source| ExportError::Io { path: temp.clone(), action: "create", source })?;
        Ok(PendingFile { file: Some(file), temp, target: target.to_path_buf(), committed: false })
    }

    pub(crate) fn file(&self) -> &File {
        // Only `commit` takes the file, and it consumes self.
        self.file.as_ref().expect("file present until commit")
    }

    pub(crate) fn io_err(&self, action: &'static str) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
        move |source| ExportError::Io { path: self.temp.clone(), action, source }
    }

    /// Writes `buf` at `offset`.
    pub(crate) fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), ExportError> {
        write_all_at(self.file(), buf, offset).map_err(self.io_err("write"))
    }

    /// Flushes the data (when `sync`), puts the file in place and syncs
    /// the folder. Unless `replace`, an existing target is kept (the put
    /// is a hard link, which fails if the name is taken, then the temporary
    /// name goes; where links are not to be had, a check just before the
    /// rename).
    pub(crate) fn commit(mut self, sync: bool, replace: bool) -> Result<(), ExportError> {
        let file = self.file.take().expect("file present until commit");
        if sync {
            file.sync_all().map_err(|source| ExportError::Io { path: self.temp.clone(), action: "sync", source })?;
        }
        drop(file);
        let placed = if replace {
            fs::rename(&self.temp, &self.target)
        } else {
            match fs::hard_link(&self.temp, &self.target) {
                Ok(()) => fs::remove_file(&self.temp),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(e),
                Err(_) if self.target.exists() => Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists)),
                Err(_) => fs::rename(&self.temp, &self.target),
            }
        };
        placed.map_err(|source| ExportError::Io {
            path: self.target.clone(),
            action: if replace { "rename into place" } else { "put into place (an existing file is kept)" },
            source,
        })?;
        self.committed = true;
        if sync {
            let dir = self.target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            crate::io::sync_dir(dir).map_err(|source| ExportError::Io {
                path: dir.to_path_buf(),
                action: "sync folder",
                source,
            })?;
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

#[cfg(unix)]
pub(crate) fn write_all_at(file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(windows)]
pub(crate) fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        let n = file.seek_write(buf, offset)?;
        buf = &buf[n..];
        offset += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target that appears while an output is written is kept unless
    /// replacing was asked for; nothing of the temporary file is left.
    #[test]
    fn an_output_that_appeared_meanwhile_is_kept_unless_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.raw");
        let pending = PendingFile::create(&target).unwrap();
        pending.write_at(b"restored", 0).unwrap();
        fs::write(&target, b"theirs").unwrap();
        let err = pending.commit(true, false).unwrap_err();
        assert!(matches!(&err, ExportError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists));
        assert_eq!(fs::read(&target).unwrap(), b"theirs");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "the temporary file is gone");
        let pending = PendingFile::create(&target).unwrap();
        pending.write_at(b"restored", 0).unwrap();
        pending.commit(true, true).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"restored");
        let fresh = dir.path().join("new.raw");
        let pending = PendingFile::create(&fresh).unwrap();
        pending.write_at(b"new", 0).unwrap();
        pending.commit(false, false).unwrap();
        assert_eq!(fs::read(&fresh).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
