//! What a backup is asked to do ([`BackupOptions`], [`DiskJob`]) and what
//! it reports ([`BackupReport`], [`PointReport`]): shared by the job in
//! `mod.rs` and the pipeline that fills the report.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::cancel::CancelToken;
use crate::disk::VirtualDisk;
use crate::progress::ProgressSink;
use crate::store::backend::Traffic;
use crate::store::format::changes::ChangeList;
use crate::store::format::manifest::{ChangeSource, Kind};
use crate::store::model::id::{BackupId, PointId};
use crate::store::model::time::Moment;
use crate::store::ops::backup::attach::Attachment;
use crate::store::state::catalog::AttachmentSummary;

/// The default cap on incremental chains.
pub const DEFAULT_MAX_CHAIN: usize = 14;

/// How to back up. Build it with [`BackupOptions::new`] and set the fields
/// you need; every field has a default.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct BackupOptions {
    /// The backup's name: usually the disk's or the VM's. Incrementals
    /// continue the newest backup of the same name (and, in a multi-disk
    /// job, the same disk label).
    pub name: String,
    /// Make a full backup even if an incremental is possible.
    pub full: bool,
    /// Byte ranges of the disk that changed since the previous backup of
    /// this name (from RCT, CBT or any tracker); widened to chunks. For
    /// [`Store::backup`]; a multi-disk job gives each disk its own in
    /// [`DiskJob`].
    pub changes: Option<ChangeList>,
    /// The change tracker's token for the disk's state now (an RCT id, a
    /// CBT change id), stored in the manifest for the next `since`.
    pub change_id: Option<String>,
    /// The token the change list is relative to: refused unless it is the
    /// one the previous backup stored.
    pub since: Option<String>,
    /// Back up even if the change information does not match the previous
    /// backup's source identity (then every chunk is compared by hash).
    pub force: bool,
    /// Worker threads (0: one per core).
    pub threads: usize,
    /// Longest incremental chain kept before the new backup is merged into
    /// a full one (0: the default, [`DEFAULT_MAX_CHAIN`]).
    pub max_chain: usize,
    /// When the backup was taken (default: now). For importing backups made
    /// elsewhere, and for testing retention.
    pub created: Option<Moment>,
    /// Tags kept with the job's restore point (a point is made when any are given).
    pub tags: BTreeMap<String, String>,
    /// Small files kept with the job's restore point (a VM's configuration).
    pub attachments: Vec<Attachment>,
    /// Checked between chunks; a cancelled job commits nothing.
    pub cancel: CancelToken,
    /// Receives progress, per disk.
    pub progress: ProgressSink,
    /// Fail, committing nothing, when a source file changed while it was
    /// read (a running VM's disk without a checkpoint); by default the
    /// backup commits and says so in [`BackupReport::source_changed`] and
    /// the job log.
    pub require_stable: bool,
    /// Set by a copy between stores: the ids, parents and source records
    /// the job keeps instead of making its own.
    pub(crate) copy: Option<CopyIdentity>,
}

/// What a copied backup keeps of its original (see `copy.rs`).
#[derive(Debug, Clone)]
pub(crate) struct CopyIdentity {
    /// The original's restore point, if it is part of one.
    pub point: Option<PointId>,
    /// Per disk of the job, in order.
    pub disks: Vec<CopiedDisk>,
}

/// One copied disk: its id, the parent it continues in the destination
/// (`None`: copied as a full backup), and its source as first recorded.
#[derive(Debug, Clone)]
pub(crate) struct CopiedDisk {
    pub id: BackupId,
    pub parent: Option<BackupId>,
    pub source: crate::store::format::manifest::SourceInfo,
}

impl BackupOptions {
    /// Options for a backup named `name`, everything else default.
    pub fn new(name: impl Into<String>) -> BackupOptions {
        BackupOptions { name: name.into(), ..Default::default() }
    }
}

/// One disk of a multi-disk job ([`Store::backup_point`]).
#[non_exhaustive]
pub struct DiskJob<'a> {
    /// The disk's label in the restore point (unique in the job); its
    /// chain continues the newest backup of the job's name with this label.
    pub label: String,
    /// The disk.
    pub disk: &'a dyn VirtualDisk,
    /// What changed since the previous backup of this disk.
    pub changes: Option<ChangeList>,
    /// The tracker's token for this disk's state now.
    pub change_id: Option<String>,
    /// The token `changes` is relative to.
    pub since: Option<String>,
}

impl<'a> DiskJob<'a> {
    /// Disk `disk`, labelled `label`, without change information.
    pub fn new(label: impl Into<String>, disk: &'a dyn VirtualDisk) -> DiskJob<'a> {
        DiskJob { label: label.into(), disk, changes: None, change_id: None, since: None }
    }
}

/// What a backup of one disk did (the JSON keys of the command-line contract).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct BackupReport {
    /// The new backup's id.
    pub id: BackupId,
    /// Its name.
    pub name: String,
    /// Full or incremental.
    pub kind: Kind,
    /// The backup it continues.
    pub parent: Option<BackupId>,
    /// How the change set was found.
    pub change_source: ChangeSource,
    /// Bytes of the disk the backup considered (the whole disk for a full
    /// backup; the change set for an incremental).
    pub bytes_scanned: u64,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Chunks stored for the first time.
    pub new_chunks: u64,
    /// Their plain bytes.
    pub new_bytes: u64,
    /// Chunks already in the store (or met earlier in this job).
    pub dedup_chunks: u64,
    /// Slots that are all zero.
    pub zero_chunks: u64,
    /// Bytes written to packs (records with their headers, after compression).
    pub stored_bytes: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// The chain grew past its cap and this backup was merged into a full
    /// one (metadata only), or the merge was deferred because the store was busy.
    pub merged: Option<bool>,
    /// The restore point it belongs to.
    pub point: Option<PointId>,
    /// Its disk's label in the point.
    pub disk: Option<String>,
    /// The tracker token stored with it.
    pub change_id: Option<String>,
    /// The label of the disk whose chain this backup continues, when it is
    /// not this disk's own: Hyper-V names the running disk anew at every
    /// checkpoint, and a disk whose chain holds the image a previous job
    /// captured (by identity) continues that disk's chain under its new
    /// label rather than starting over with a full backup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub continues_label: Option<String>,
    /// Why the source may have changed while it was read (its size,
    /// modification time or VHDX header sequence differed before and
    /// after): empty when it held still.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_changed: Vec<String>,
    /// Chunks taken over from packs an interrupted backup sealed but never
    /// indexed (counted among `dedup_chunks`): what resuming saved
    /// uploading again.
    pub resumed_chunks: u64,
    /// Requests made and bytes uploaded (`requests`, `bytes_uploaded` in JSON).
    #[serde(flatten)]
    pub traffic: Traffic,
}

/// What a job did: one report per disk, and the restore point.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PointReport {
    /// The restore point (none for a single-disk job without tags or attachments).
    pub point: Option<PointId>,
    /// The job's name.
    pub name: String,
    /// Each disk's backup, in job order.
    pub disks: Vec<BackupReport>,
    /// The attachments kept.
    pub attachments: Vec<AttachmentSummary>,
    /// Bytes written to packs for the attachments.
    pub attachment_bytes: u64,
    /// Wall-clock seconds for the whole job.
    pub seconds: f64,
    /// Requests made and bytes uploaded (`requests`, `bytes_uploaded` in JSON).
    #[serde(flatten)]
    pub traffic: Traffic,
}
