//! An output file written under a temporary name and put in place whole
//! (`io::durable` does the writing; this gives its failures the export's
//! error type).

use std::fs::File;
use std::path::Path;

use super::ExportError;
use crate::io::durable::{self, FileError, Placement};

impl From<FileError> for ExportError {
    fn from(e: FileError) -> ExportError {
        ExportError::Io { path: e.path, action: e.action, source: e.source }
    }
}

/// A file being written; dropped without [`PendingFile::commit`], it is removed.
pub(crate) struct PendingFile(durable::PendingFile);

impl PendingFile {
    /// Creates `.NAME.partial-PID-N` beside `target`.
    pub(crate) fn create(target: &Path) -> Result<PendingFile, ExportError> {
        Ok(PendingFile(durable::PendingFile::create(target)?))
    }

    pub(crate) fn file(&self) -> &File {
        self.0.file()
    }

    pub(crate) fn io_err(&self, action: &'static str) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
        move |source| ExportError::Io { path: self.0.temp().to_path_buf(), action, source }
    }

    /// Writes `buf` at `offset`.
    pub(crate) fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), ExportError> {
        Ok(self.0.write_at(buf, offset)?)
    }

    /// Flushes the data (when `sync`), puts the file in place and syncs
    /// the folder. Unless `replace`, an existing target is kept.
    pub(crate) fn commit(self, sync: bool, replace: bool) -> Result<(), ExportError> {
        let placement = if replace { Placement::Replace } else { Placement::KeepExisting };
        Ok(self.0.commit(sync, placement)?)
    }
}
