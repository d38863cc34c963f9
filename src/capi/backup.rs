//! Backups of one disk or of a restore point of several.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_void};
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use super::args;
use super::callbacks::{cancel_token, progress_sink, vhdkit_cancel, vhdkit_progress_fn};
use super::disk::{DISKS, vhdkit_disk};
use super::error::{Fail, call, vhdkit_error, vhdkit_status};
use super::store::{STORES, vhdkit_store};
use crate::disk::{Disk, VirtualDisk};
use crate::store::{Attachment, BackupOptions, ChangeList, DiskJob, Moment};

/// `vhdkit_store_backup`'s options.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct BackupJson {
    name: String,
    full: bool,
    force: bool,
    max_chain: usize,
    threads: usize,
    require_stable: bool,
    /// RFC 3339; default now.
    created: Option<String>,
    tags: BTreeMap<String, String>,
    attachments: Vec<AttachmentJson>,
    /// One entry per disk, in the order of the `disks` array.
    disks: Vec<DiskJson>,
}

/// A file kept with the restore point.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachmentJson {
    path: PathBuf,
    /// Its name in the point (default: the file's name).
    name: Option<String>,
}

/// What is known of one disk's changes.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct DiskJson {
    /// Its label in the restore point.
    label: Option<String>,
    /// A change list in any tracker's shape, inline...
    changes: Option<serde_json::Value>,
    /// ...or in a file.
    changes_file: Option<PathBuf>,
    /// The tracker's token now, and the one the changes are relative to.
    change_id: Option<String>,
    since: Option<String>,
    /// Ranges past the list's `processed` extent count as changed.
    unprocessed_as_changed: bool,
}

impl DiskJson {
    fn changes(&self, disk: &dyn VirtualDisk, index: usize) -> Result<Option<ChangeList>, Fail> {
        let text = match (&self.changes, &self.changes_file) {
            (Some(_), Some(_)) => {
                return Err(Fail::argument(format!("disks[{index}]: give changes or changes_file, not both")));
            }
            (Some(v), None) => {
                serde_json::to_vec(v).map_err(|e| Fail::argument(format!("disks[{index}].changes: {e}")))?
            }
            (None, Some(p)) => std::fs::read(p).map_err(|e| Fail {
                os_code: e.raw_os_error().unwrap_or(0),
                ..Fail::argument(format!("{}: {e}", p.display()))
            })?,
            (None, None) => {
                if self.since.is_some() {
                    return Err(Fail::argument(format!(
                        "disks[{index}]: since names where a change list starts: give the list"
                    )));
                }
                return Ok(None);
            }
        };
        let list = ChangeList::from_json(&text)
            .map_err(|e| Fail { message: format!("disks[{index}] changes: {e}"), ..Fail::from(e) })?;
        Ok(Some(if self.unprocessed_as_changed { list.cover_rest(disk.size()) } else { list }))
    }
}

/// Backs up `disks` (`disk_count` open disks) into `store`. Options, a JSON
/// object: `name` (required), `full`, `force`, `max_chain`, `threads`,
/// `require_stable`, `created` (RFC 3339), `tags` (an object of strings),
/// `attachments` (`[{"path": ..., "name": ...}]`), and `disks`: one object
/// per disk with `label`, `changes` (a change list in any tracker's JSON
/// shape: RCT, CBT or plain ranges) or `changes_file`, `change_id`,
/// `since`, `unprocessed_as_changed`.
///
/// One disk without a label is a plain backup (report: one backup's JSON);
/// several disks, or any tags or attachments, make a restore point (report:
/// the point's JSON with a report per disk). A cancelled backup commits
/// nothing and returns `VHDKIT_CANCELLED`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_store_backup(
    store: *const vhdkit_store,
    disks: *const *const vhdkit_disk,
    disk_count: usize,
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
        if disks.is_null() || disk_count == 0 {
            return Err(Fail::argument("disks is null or disk_count is 0"));
        }
        if disk_count > 1024 {
            return Err(Fail::argument(format!("{disk_count} disks in one job; at most 1024")));
        }
        // SAFETY: the caller passes an array of `disk_count` handles.
        let handles = unsafe { std::slice::from_raw_parts(disks, disk_count) };
        let opened: Vec<Arc<Disk>> = handles.iter().map(|h| DISKS.get(*h)).collect::<Result<_, _>>()?;
        let o: BackupJson = args::options(options_json, "options")?;
        if o.name.is_empty() {
            return Err(Fail::argument("options: name is required"));
        }
        let per_disk: Vec<DiskJson> = match o.disks.len() {
            0 => (0..disk_count).map(|_| DiskJson::default()).collect(),
            n if n == disk_count => o.disks,
            n => return Err(Fail::argument(format!("options: {n} entries in disks for {disk_count} disks"))),
        };
        let mut options = BackupOptions::new(o.name);
        options.full = o.full;
        options.force = o.force;
        options.max_chain = o.max_chain;
        options.threads = o.threads;
        options.require_stable = o.require_stable;
        options.created = match o.created {
            Some(s) => Some(Moment::parse(&s).ok_or_else(|| Fail::argument(format!("created {s:?} is not RFC 3339")))?),
            None => None,
        };
        options.tags = o.tags;
        for a in &o.attachments {
            let mut attachment = Attachment::from_file(&a.path)?;
            if let Some(name) = &a.name {
                attachment = Attachment::new(name.clone(), attachment.bytes)?;
            }
            options.attachments.push(attachment);
        }
        options.cancel = cancel_token(cancel)?;
        options.progress = progress_sink(progress, progress_user);
        let mut lists = Vec::with_capacity(disk_count);
        for (i, (d, disk)) in per_disk.iter().zip(&opened).enumerate() {
            lists.push(d.changes(&**disk, i)?);
        }
        if disk_count == 1 && per_disk[0].label.is_none() {
            let mut per_disk = per_disk;
            let d = per_disk.remove(0);
            options.changes = lists.pop().flatten();
            options.change_id = d.change_id;
            options.since = d.since;
            return args::put_json(report_json, &store.backup(&*opened[0], &options)?);
        }
        let mut jobs = Vec::with_capacity(disk_count);
        for (i, ((d, disk), changes)) in per_disk.into_iter().zip(&opened).zip(lists).enumerate() {
            let label =
                d.label.ok_or_else(|| Fail::argument(format!("disks[{i}]: a job of several disks labels each")))?;
            let mut job = DiskJob::new(label, &**disk);
            job.changes = changes;
            job.change_id = d.change_id;
            job.since = d.since;
            jobs.push(job);
        }
        args::put_json(report_json, &store.backup_point(&jobs, &options)?)
    })
}
