//! Where an export writes: an output file written under a temporary name
//! and put in place whole (`io::durable` does the writing; this gives its
//! failures the export's error type), or a caller's [`ExportSink`].

use std::fs::File;
use std::path::{Path, PathBuf};

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

/// Where an export writes when not to a file vhdkit creates: a caller's
/// stream, a buffer, a callback across the C ABI ([`export_to_sink`]).
///
/// Writes come in any order and never overlap; bytes never written (the
/// holes of a sparse image) must read as zeros, as they do in a new file or
/// a seekable stream written past its end. [`ExportSink::set_len`] gives
/// the output's final length, before or after the writes.
///
/// [`export_to_sink`]: super::export_to_sink
pub trait ExportSink {
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()>;
    /// The output's length is `len`.
    fn set_len(&self, len: u64) -> std::io::Result<()>;
}

/// Where a writer is asked to put its image.
#[derive(Clone, Copy)]
pub(crate) enum Dest<'a> {
    /// A file, created beside its final name and renamed into place.
    File(&'a Path),
    /// A caller's sink, named in messages by the path.
    Sink(&'a dyn ExportSink, &'a Path),
}

impl<'a> Dest<'a> {
    /// The output's name: a child's parent locators are relative to it.
    pub(crate) fn path(&self) -> &'a Path {
        match self {
            Dest::File(p) | Dest::Sink(_, p) => p,
        }
    }

    /// Starts writing.
    pub(crate) fn create(self) -> Result<Output<'a>, ExportError> {
        Ok(match self {
            Dest::File(p) => Output::File(PendingFile::create(p)?),
            Dest::Sink(sink, name) => Output::Sink(sink, name.to_path_buf()),
        })
    }
}

/// An output being written.
pub(crate) enum Output<'a> {
    File(PendingFile),
    Sink(&'a dyn ExportSink, PathBuf),
}

impl Output<'_> {
    /// Writes `buf` at `offset`.
    pub(crate) fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), ExportError> {
        match self {
            Output::File(f) => f.write_at(buf, offset),
            Output::Sink(s, name) => s.write_at(buf, offset).map_err(|source| ExportError::Io {
                path: name.clone(),
                action: "write",
                source,
            }),
        }
    }

    /// Sets the output's length.
    pub(crate) fn set_len(&self, len: u64) -> Result<(), ExportError> {
        match self {
            Output::File(f) => f.file().set_len(len).map_err(f.io_err("set length")),
            Output::Sink(s, name) => {
                s.set_len(len).map_err(|source| ExportError::Io { path: name.clone(), action: "set length", source })
            }
        }
    }

    /// Puts a file in place (flushed first when `sync`; an existing one is
    /// kept unless `replace`); a sink's owner finishes it.
    pub(crate) fn commit(self, sync: bool, replace: bool) -> Result<(), ExportError> {
        match self {
            Output::File(f) => f.commit(sync, replace),
            Output::Sink(..) => Ok(()),
        }
    }
}
