//! Restores (to a file, through a write callback, in place, a whole point)
//! and readers that read a backup at any offset.

use std::ffi::{c_char, c_void};
use std::path::Path;

use serde::Deserialize;

use super::args;
use super::callbacks::{CallbackSink, cancel_token, progress_sink, vhdkit_cancel, vhdkit_progress_fn, vhdkit_write_fn};
use super::disk::{extents_of, read_into};
use super::error::{Fail, call, vhdkit_error, vhdkit_status};
use super::handles::Table;
use super::store::{STORES, vhdkit_store};
use crate::VirtualDisk;
use crate::export::{InPlace, Target};
use crate::format::Guid;
use crate::store::{BackupReader, RestoreOptions};

/// `vhdkit_store_restore*`'s options.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RestoreJson {
    /// Which disk of a restore point (its label).
    disk: Option<String>,
    /// Block size of a VHD or VHDX output.
    block_size: Option<u32>,
    /// Keep an existing output and fail instead of replacing it.
    no_replace: bool,
    /// Skip flushing the output before it is put in place (scratch copies).
    no_sync: bool,
    /// The output's disk id (default: the backed-up disk's).
    disk_id: Option<String>,
    /// In place: the target already reads as zeros, so only data is written.
    assume_zeroed: bool,
}

/// Restore options from JSON, with the cancel handle and progress callback.
fn restore_options(
    options_json: *const c_char,
    cancel: *const vhdkit_cancel,
    progress: vhdkit_progress_fn,
    progress_user: *mut c_void,
) -> Result<RestoreOptions, Fail> {
    let o: RestoreJson = args::options(options_json, "options")?;
    let mut options = RestoreOptions { disk: o.disk, ..Default::default() };
    options.export.block_size = o.block_size;
    options.export.replace = !o.no_replace;
    options.export.sync = !o.no_sync;
    options.export.disk_id = match o.disk_id {
        Some(s) => Some(s.parse::<Guid>().map_err(|_| Fail::argument(format!("disk_id {s:?} is not a GUID")))?),
        None => None,
    };
    options.in_place = if o.assume_zeroed { InPlace::AssumeZeroed } else { InPlace::WriteAll };
    options.export.cancel = cancel_token(cancel)?;
    options.export.progress = progress_sink(progress, progress_user);
    Ok(options)
}

/// An output format's name: `raw`, `vhd`, `vhd-fixed`, `vhdx`, `vhdx-fixed`.
fn target(format: *const c_char) -> Result<Target, Fail> {
    args::text(format, "format")?.parse::<Target>().map_err(|e| Fail::argument(e.to_string()))
}

/// Restores backup `spec` (an id, a name for its newest backup, or a point)
/// to the file `output` in `format` (`raw`, `vhd`, `vhd-fixed`, `vhdx`,
/// `vhdx-fixed`). The file appears whole or not at all. Options, a JSON
/// object or null: `disk` (a point's disk label), `block_size`,
/// `no_replace`, `no_sync`, `disk_id`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_store_restore(
    store: *const vhdkit_store,
    spec: *const c_char,
    output: *const c_char,
    format: *const c_char,
    options_json: *const c_char,
    cancel: *const vhdkit_cancel,
    progress: vhdkit_progress_fn,
    progress_user: *mut c_void,
    report_json: *mut *mut c_char,
    err: *mut *mut vhdkit_error,
) -> vhdkit_status {
    args::clear_json(report_json);
    call(err, || {
        let store = STORES.get(store)?;
        let spec = args::text(spec, "spec")?;
        let output = args::text(output, "output")?;
        let target = target(format)?;
        let options = restore_options(options_json, cancel, progress, progress_user)?;
        args::put_json(report_json, &store.restore(spec, Path::new(output), target, &options)?)
    })
}

/// Restores backup `spec` in `format` through `write` (see
/// [`vhdkit_write_fn`]: positional writes, unwritten ranges read as zeros),
/// called on this thread with `write_user`. Every chunk is verified before
/// its bytes are written; on any failure the caller discards the output.
/// Options as [`vhdkit_store_restore`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_store_restore_to_callback(
    store: *const vhdkit_store,
    spec: *const c_char,
    format: *const c_char,
    write: vhdkit_write_fn,
    write_user: *mut c_void,
    options_json: *const c_char,
    cancel: *const vhdkit_cancel,
    progress: vhdkit_progress_fn,
    progress_user: *mut c_void,
    report_json: *mut *mut c_char,
    err: *mut *mut vhdkit_error,
) -> vhdkit_status {
    args::clear_json(report_json);
    call(err, || {
        let store = STORES.get(store)?;
        let spec = args::text(spec, "spec")?;
        let target = target(format)?;
        let sink = CallbackSink::new(write, write_user)?;
        let options = restore_options(options_json, cancel, progress, progress_user)?;
        let name = Path::new("<write callback>");
        let report = store.restore_to_sink(spec, &sink, name, target, &options)?;
        sink.finish().map_err(|e| {
            Fail::from(crate::Error::from(crate::export::ExportError::Io {
                path: name.to_path_buf(),
                action: "write",
                source: e,
            }))
        })?;
        args::put_json(report_json, &report)
    })
}

/// Writes backup `spec` as a raw image over the existing file or device
/// `target` (at least the disk's size), as it goes: a failure leaves it
/// partly written. Options as [`vhdkit_store_restore`], plus
/// `assume_zeroed` (write only data; the target already reads as zeros).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_store_restore_in_place(
    store: *const vhdkit_store,
    spec: *const c_char,
    target: *const c_char,
    options_json: *const c_char,
    cancel: *const vhdkit_cancel,
    progress: vhdkit_progress_fn,
    progress_user: *mut c_void,
    report_json: *mut *mut c_char,
    err: *mut *mut vhdkit_error,
) -> vhdkit_status {
    args::clear_json(report_json);
    call(err, || {
        let store = STORES.get(store)?;
        let spec = args::text(spec, "spec")?;
        let target = args::text(target, "target")?;
        let options = restore_options(options_json, cancel, progress, progress_user)?;
        args::put_json(report_json, &store.restore_in_place(spec, Path::new(target), &options)?)
    })
}

/// Restores every disk of restore point `spec` into folder `dir` (each as
/// its label's stem with `format`'s extension) with its attachments.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_store_restore_point(
    store: *const vhdkit_store,
    spec: *const c_char,
    dir: *const c_char,
    format: *const c_char,
    options_json: *const c_char,
    cancel: *const vhdkit_cancel,
    progress: vhdkit_progress_fn,
    progress_user: *mut c_void,
    report_json: *mut *mut c_char,
    err: *mut *mut vhdkit_error,
) -> vhdkit_status {
    args::clear_json(report_json);
    call(err, || {
        let store = STORES.get(store)?;
        let spec = args::text(spec, "spec")?;
        let dir = args::text(dir, "dir")?;
        let target = target(format)?;
        let options = restore_options(options_json, cancel, progress, progress_user)?;
        args::put_json(report_json, &store.restore_point(spec, Path::new(dir), target, &options)?)
    })
}

/// A backup opened for reading at any offset: what a product's own mount
/// driver or file browser reads through. Every chunk is verified as it is
/// read. Usable from several threads at once.
pub struct vhdkit_reader {
    _opaque: [u8; 0],
}

pub(crate) static READERS: Table<BackupReader> = Table::new("vhdkit_reader");

/// Opens backup `spec` for reading; `disk` (null: the only one) picks a
/// disk of a restore point by label. The reader holds a read lease on the
/// store until freed, so vacuum keeps what it reads.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_reader_open(
    store: *const vhdkit_store,
    spec: *const c_char,
    disk: *const c_char,
    out: *mut *mut vhdkit_reader,
    err: *mut *mut vhdkit_error,
) -> vhdkit_status {
    call(err, || {
        args::out(out, "out")?;
        let store = STORES.get(store)?;
        let spec = args::text(spec, "spec")?;
        let disk = args::text_opt(disk, "disk")?;
        args::put(out, READERS.insert(store.reader_disk(spec, disk)?));
        Ok(())
    })
}

/// Frees a reader (null is ignored). Calls running on it finish first.
#[unsafe(no_mangle)]
pub extern "C" fn vhdkit_reader_free(reader: *mut vhdkit_reader) {
    READERS.remove(reader);
}

/// The backed-up disk's virtual size in bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_reader_size(
    reader: *const vhdkit_reader,
    size: *mut u64,
    err: *mut *mut vhdkit_error,
) -> vhdkit_status {
    call(err, || {
        args::out(size, "size")?;
        args::put(size, READERS.get(reader)?.size());
        Ok(())
    })
}

/// What the backed-up disk was (id, sizes, sector sizes, the source image's
/// description), as JSON.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_reader_info(
    reader: *const vhdkit_reader,
    info_json: *mut *mut c_char,
    err: *mut *mut vhdkit_error,
) -> vhdkit_status {
    call(err, || {
        args::out(info_json, "info_json")?;
        let reader = READERS.get(reader)?;
        args::put_json(info_json, &serde_json::json!({ "id": reader.id(), "disk": reader.info() }))
    })
}

/// Which ranges of `length` bytes from `offset` hold data, as
/// `vhdkit_disk_extents` gives them.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_reader_extents(
    reader: *const vhdkit_reader,
    offset: u64,
    length: u64,
    extents_json: *mut *mut c_char,
    err: *mut *mut vhdkit_error,
) -> vhdkit_status {
    call(err, || {
        args::out(extents_json, "extents_json")?;
        let reader = READERS.get(reader)?;
        extents_of(&*reader, offset, length, extents_json)
    })
}

/// Reads `len` bytes at `offset` of the backed-up disk into `buf`: all of
/// them, verified, or an error.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_reader_read_at(
    reader: *const vhdkit_reader,
    offset: u64,
    buf: *mut u8,
    len: usize,
    err: *mut *mut vhdkit_error,
) -> vhdkit_status {
    call(err, || READERS.with(reader, |reader| read_into(reader, offset, buf, len)))
}
