//! Reading backups: [`BackupReader`] is a [`VirtualDisk`] over a backup
//! (mountable, and what the writers take to restore it). [`Store::restore`]
//! writes one out as raw, VHD or VHDX; [`Store::restore_to_writer`] streams
//! it raw into any `Write`; [`Store::restore_in_place`] writes it over an
//! existing file or block device; [`Store::restore_point`] writes every
//! disk and attachment of a restore point into a folder.
//!
//! Every chunk is checked as it is read (record CRC, decompression, plain
//! length, BLAKE3 against its id); a chunk that fails is read from another
//! stored copy if there is one, and otherwise the read fails. A restore
//! never emits a byte it could not verify: it writes to a temporary file
//! that a failure removes. [`BackupReader`] (in `state`, since copy and
//! file-level reads open backups too) reads chunks through a
//! `ChunkSource`: several ranged reads in flight, read-ahead for the
//! writers, which read in order.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::export::{
    ExportOptions, ExportReport, ExportSink, InPlace, Target, export, export_to_sink, write_raw_in_place, write_raw_to,
};
use crate::progress::Operation;
use crate::store::backend::Traffic;
use crate::store::error::{Result, StoreError};
use crate::store::format::point::{PointRecord, plain_file_name};
use crate::store::model::id::{BackupId, PointId};
use crate::store::state::backup_reader::{BackupReader, attachment_bytes, reader_with};
use crate::store::state::catalog::{PointSummary, Selection};
use crate::store::state::handle::Handle;

/// How to restore.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RestoreOptions {
    /// Which disk of a restore point (its label), when the spec names a
    /// point with several.
    pub disk: Option<String>,
    /// How to write the output: block size, disk id, flush, cancel token,
    /// progress.
    pub export: ExportOptions,
    /// For [`Store::restore_in_place`]: what to write where the backup
    /// holds no data.
    pub in_place: InPlace,
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct RestoreReport {
    /// The backup restored.
    pub id: BackupId,
    /// The format written.
    pub target: Target,
    /// Where.
    pub output: PathBuf,
    /// What the writer did.
    #[serde(flatten)]
    pub export: ExportReport,
    /// Requests made and bytes uploaded (`requests`, `bytes_uploaded` in JSON).
    #[serde(flatten)]
    pub traffic: Traffic,
}

/// What restoring a restore point did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PointRestoreReport {
    /// The restore point.
    pub point: PointId,
    /// Each disk's restore.
    pub disks: Vec<RestoreReport>,
    /// Attachments written: their paths.
    pub attachments: Vec<PathBuf>,
    /// Requests made and bytes uploaded (`requests`, `bytes_uploaded` in JSON).
    #[serde(flatten)]
    pub traffic: Traffic,
}

/// Maps an export failure: the store's own errors stay what they are (a
/// chunk that cannot be read), a cancel is a cancel, everything else is the
/// output's.
fn output_error(out: &Path) -> impl FnOnce(crate::Error) -> StoreError + '_ {
    move |e| match StoreError::within(e) {
        Ok(s) => s,
        Err(crate::Error::Export(crate::export::ExportError::Cancelled)) => StoreError::Cancelled,
        Err(other) => StoreError::Output { path: out.to_path_buf(), source: Box::new(other) },
    }
}

/// [`Store::reader`](crate::store::Store::reader).
pub(crate) fn reader(store: &Handle, spec: impl AsRef<str>) -> Result<BackupReader> {
    let spec = spec.as_ref();
    reader_disk(store, spec, None)
}

/// [`Store::reader_disk`](crate::store::Store::reader_disk).
pub(crate) fn reader_disk(store: &Handle, spec: impl AsRef<str>, disk: Option<&str>) -> Result<BackupReader> {
    let spec = spec.as_ref();
    let lease = store.read_lease("restore")?;
    let id = crate::store::state::catalog::resolve_backup(store, spec, disk)?.id;
    let index = Arc::new(store.index_avoiding_condemned()?);
    reader_with(store, &id, index, lease)
}

/// The reader and export options for a restore of `spec`.
fn restore_setup(store: &Handle, spec: &str, options: &RestoreOptions) -> Result<(BackupReader, ExportOptions)> {
    let reader = reader_disk(store, spec, options.disk.as_deref())?;
    let mut export = options.export.clone();
    export.operation = Operation::Restore;
    if export.disk_id.is_none() && !reader.info.disk_id.is_nil() {
        export.disk_id = Some(reader.info.disk_id);
    }
    Ok((reader, export))
}

fn logged(store: &Handle, mut report: RestoreReport, t0: Traffic) -> RestoreReport {
    report.traffic = store.backend().traffic().since(t0);
    store.log_job("restore", &serde_json::to_value(&report).unwrap_or_default());
    report
}

/// [`Store::restore`](crate::store::Store::restore).
pub(crate) fn restore(
    store: &Handle,
    spec: impl AsRef<str>,
    out: &Path,
    target: Target,
    options: &RestoreOptions,
) -> Result<RestoreReport> {
    restore_with(store, spec.as_ref(), out, target, options, |reader, o| export(reader, out, target, o))
}

/// [`Store::restore_to_sink`](crate::store::Store::restore_to_sink).
pub(crate) fn restore_to_sink(
    store: &Handle,
    spec: impl AsRef<str>,
    sink: &dyn ExportSink,
    name: &Path,
    target: Target,
    options: &RestoreOptions,
) -> Result<RestoreReport> {
    restore_with(store, spec.as_ref(), name, target, options, |reader, o| export_to_sink(reader, sink, name, target, o))
}

/// A restore of `spec` by `write` (to a file or a sink named `output`),
/// reported and logged.
fn restore_with(
    store: &Handle,
    spec: &str,
    output: &Path,
    target: Target,
    options: &RestoreOptions,
    write: impl FnOnce(&BackupReader, &ExportOptions) -> crate::Result<ExportReport>,
) -> Result<RestoreReport> {
    let t0 = store.backend().traffic();
    let (reader, export_options) = restore_setup(store, spec, options)?;
    let export = write(&reader, &export_options).map_err(output_error(output))?;
    Ok(logged(
        store,
        RestoreReport {
            id: reader.id.clone(),
            target,
            output: output.to_path_buf(),
            export,
            traffic: Traffic::default(),
        },
        t0,
    ))
}

/// [`Store::restore_to_writer`](crate::store::Store::restore_to_writer).
pub(crate) fn restore_to_writer(
    store: &Handle,
    spec: impl AsRef<str>,
    out: &mut dyn Write,
    name: &Path,
    options: &RestoreOptions,
) -> Result<RestoreReport> {
    let spec = spec.as_ref();
    let t0 = store.backend().traffic();
    let (reader, export_options) = restore_setup(store, spec, options)?;
    let export = write_raw_to(&reader, out, name, &export_options).map_err(output_error(name))?;
    Ok(logged(
        store,
        RestoreReport {
            id: reader.id.clone(),
            target: Target::Raw,
            output: name.to_path_buf(),
            export,
            traffic: Traffic::default(),
        },
        t0,
    ))
}

/// [`Store::restore_in_place`](crate::store::Store::restore_in_place).
pub(crate) fn restore_in_place(
    store: &Handle,
    spec: impl AsRef<str>,
    target: &Path,
    options: &RestoreOptions,
) -> Result<RestoreReport> {
    let spec = spec.as_ref();
    let t0 = store.backend().traffic();
    let (reader, export_options) = restore_setup(store, spec, options)?;
    let export =
        write_raw_in_place(&reader, target, options.in_place, &export_options).map_err(output_error(target))?;
    Ok(logged(
        store,
        RestoreReport {
            id: reader.id.clone(),
            target: Target::Raw,
            output: target.to_path_buf(),
            export,
            traffic: Traffic::default(),
        },
        t0,
    ))
}

/// [`Store::restore_point`](crate::store::Store::restore_point).
pub(crate) fn restore_point(
    store: &Handle,
    spec: impl AsRef<str>,
    dir: &Path,
    target: Target,
    options: &RestoreOptions,
) -> Result<PointRestoreReport> {
    let spec = spec.as_ref();
    let t0 = store.backend().traffic();
    let point: PointSummary = match crate::store::state::catalog::resolve(store, spec)? {
        Selection::Point(p) => p,
        Selection::Backup(b) => match &b.point {
            Some(p) => match crate::store::state::catalog::resolve(store, p.as_str())? {
                Selection::Point(p) => p,
                Selection::Backup(_) => return Err(StoreError::NoSuchBackup(p.to_string())),
            },
            None => {
                return Err(StoreError::Invalid(format!(
                    "backup {} is not part of a restore point: restore it to a file",
                    b.id
                )));
            }
        },
    };
    std::fs::create_dir_all(dir).map_err(|e| StoreError::Output {
        path: dir.to_path_buf(),
        source: Box::new(
            crate::export::ExportError::Io { path: dir.to_path_buf(), action: "create folder", source: e }.into(),
        ),
    })?;
    let mut disks = Vec::new();
    for d in &point.disks {
        if !plain_file_name(&d.label) {
            return Err(StoreError::Invalid(format!(
                "restore point {} has a disk label {:?} that is not a file name",
                point.id, d.label
            )));
        }
        let stem = Path::new(&d.label).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let out = dir.join(format!("{stem}.{}", target.extension()));
        let mut o = options.clone();
        o.disk = None;
        disks.push(restore(store, d.backup.as_str(), &out, target, &o)?);
    }
    let record = PointRecord::read(store.backend(), &point.id)?;
    let _lease = store.read_lease("restore point")?;
    let index = Arc::new(store.index_avoiding_condemned()?);
    let mut attachments = Vec::new();
    for a in &record.attachments {
        if !plain_file_name(&a.name) {
            return Err(StoreError::Invalid(format!(
                "restore point {} has an attachment name {:?} that is not a file name",
                point.id, a.name
            )));
        }
        let out = dir.join(&a.name);
        let bytes = attachment_bytes(store, index.clone(), &point.id, a)?;
        crate::export::write_file_atomically_with(&out, &bytes, options.export.sync, options.export.replace)
            .map_err(output_error(&out))?;
        attachments.push(out);
    }
    Ok(PointRestoreReport { point: point.id, disks, attachments, traffic: store.backend().traffic().since(t0) })
}
