//! Images and chains: open, describe, map and read.

use std::ffi::c_char;

use serde::Deserialize;

use super::args;
use super::error::{Fail, call, vhdkit_error, vhdkit_status};
use super::handles::Table;
use crate::disk::{ChecksumPolicy, Disk, OpenOptions, VirtualDisk};

/// An open image or chain (read-only). Usable from several threads at once.
pub struct vhdkit_disk {
    _opaque: [u8; 0],
}

pub(crate) static DISKS: Table<Disk> = Table::new("vhdkit_disk");

/// `vhdkit_disk_open`'s options.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct DiskOpenJson {
    /// The file is a raw image (no container).
    raw: bool,
    /// A bad VHD checksum is a warning, not an error.
    lenient: bool,
    /// Read through a memory map.
    mmap: bool,
    /// Parents only in the child's folder or below it.
    confine_parents: bool,
    /// Open the image alone, its parent's sectors unread (`parent` extents).
    no_parents: bool,
    /// Longest chain opened.
    max_depth: Option<usize>,
}

/// The open options `json` asks for.
pub(crate) fn open_options(json: *const c_char) -> Result<(OpenOptions, bool), Fail> {
    let o: DiskOpenJson = args::options(json, "options")?;
    let mut options = OpenOptions::new()
        .checksums(if o.lenient { ChecksumPolicy::Lenient } else { ChecksumPolicy::Strict })
        .mmap(o.mmap)
        .confine_parents(o.confine_parents)
        .open_parents(!o.no_parents);
    if let Some(depth) = o.max_depth {
        options = options.max_depth(depth);
    }
    Ok((options, o.raw))
}

/// Opens the image (or chain) at `path`. Options, a JSON object or null:
/// `raw`, `lenient`, `mmap`, `confine_parents`, `no_parents` (booleans),
/// `max_depth` (a number).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_disk_open(
    path: *const c_char,
    options_json: *const c_char,
    out: *mut *mut vhdkit_disk,
    err: *mut *mut vhdkit_error,
) -> vhdkit_status {
    call(err, || {
        args::out(out, "out")?;
        let path = args::text(path, "path")?;
        let (options, raw) = open_options(options_json)?;
        let disk = if raw { options.open_raw(path)? } else { options.open(path)? };
        args::put(out, DISKS.insert(disk));
        Ok(())
    })
}

/// Frees a disk (null is ignored). Calls running on it finish first.
#[unsafe(no_mangle)]
pub extern "C" fn vhdkit_disk_free(disk: *mut vhdkit_disk) {
    DISKS.remove(disk);
}

/// The disk's virtual size in bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_disk_size(
    disk: *const vhdkit_disk,
    size: *mut u64,
    err: *mut *mut vhdkit_error,
) -> vhdkit_status {
    call(err, || {
        args::out(size, "size")?;
        args::put(size, DISKS.get(disk)?.size());
        Ok(())
    })
}

/// What the disk is, as JSON: each image of the chain, child first (format,
/// sizes, sector sizes, ids, parent links, warnings).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_disk_info(
    disk: *const vhdkit_disk,
    info_json: *mut *mut c_char,
    err: *mut *mut vhdkit_error,
) -> vhdkit_status {
    call(err, || {
        args::out(info_json, "info_json")?;
        let disk = DISKS.get(disk)?;
        args::put_json(info_json, &disk.chain_info())
    })
}

/// The allocation map of `length` bytes from `offset` (clamped to the disk),
/// as a JSON array of `{offset, length, state, depth}`; `state` is `data`,
/// `zero`, `unallocated` or `parent`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_disk_extents(
    disk: *const vhdkit_disk,
    offset: u64,
    length: u64,
    extents_json: *mut *mut c_char,
    err: *mut *mut vhdkit_error,
) -> vhdkit_status {
    call(err, || {
        args::out(extents_json, "extents_json")?;
        let disk = DISKS.get(disk)?;
        extents_of(&*disk, offset, length, extents_json)
    })
}

/// The extents of `disk` in a clamped range, as JSON through `out`.
pub(crate) fn extents_of(disk: &dyn VirtualDisk, offset: u64, length: u64, out: *mut *mut c_char) -> Result<(), Fail> {
    let start = offset.min(disk.size());
    let end = offset.saturating_add(length).min(disk.size());
    args::put_json(out, &disk.extents(start..end)?)
}

/// Reads `len` bytes at `offset` into `buf`: all of them, or an error (a
/// read past the end is `VHDKIT_INVALID_INPUT`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_disk_read_at(
    disk: *const vhdkit_disk,
    offset: u64,
    buf: *mut u8,
    len: usize,
    err: *mut *mut vhdkit_error,
) -> vhdkit_status {
    call(err, || DISKS.with(disk, |disk| read_into(disk, offset, buf, len)))
}

/// Reads into a caller's buffer, checking the range first.
pub(crate) fn read_into(disk: &dyn VirtualDisk, offset: u64, buf: *mut u8, len: usize) -> Result<(), Fail> {
    if len == 0 {
        return Ok(());
    }
    if buf.is_null() {
        return Err(Fail::argument("buf is null"));
    }
    if offset.checked_add(len as u64).is_none_or(|end| end > disk.size()) {
        return Err(Fail::new(
            super::error::VHDKIT_INVALID_INPUT,
            format!("a read of {len} bytes at {offset} passes the disk's end ({} bytes)", disk.size()),
        ));
    }
    // SAFETY: the caller passes a buffer of `len` writable bytes.
    let slice = unsafe { std::slice::from_raw_parts_mut(buf, len) };
    disk.read_at(slice, offset)?;
    Ok(())
}
