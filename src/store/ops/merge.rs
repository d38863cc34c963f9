//! Synthetic merge: an incremental backup becomes a full one by folding its
//! chain into a new manifest, without reading any chunk data.
//!
//! The full manifest is written beside the old one as the backup's merged
//! generation (`manifests/<id>~1.manifest`; nothing is overwritten):
//! readers take the newest generation, so at every instant the backup has
//! either its old incremental manifest or its new full one, with the same
//! effective map. Vacuum deletes the superseded generation. Backups that name it as their parent keep working; its ancestors are
//! no longer needed by it and become droppable.

use std::time::Instant;

use serde::Serialize;

use crate::store::backend::Traffic;
use crate::store::error::Result;
use crate::store::model::id::BackupId;
use crate::store::state::chain::write_merged;
use crate::store::state::handle::Handle;
use crate::store::state::lease::LeaseMode;

/// How to merge.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct MergeOptions {
    /// The disk's label, when the backup is named by a restore point.
    pub disk: Option<String>,
    /// Wait for running backups instead of failing with `StoreBusy`.
    pub wait: bool,
}

/// What a merge did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct MergeReport {
    /// The backup, now full.
    pub id: BackupId,
    /// Manifests folded (1 when the backup was already full).
    pub chain_length: usize,
    /// Slots of the disk.
    pub slots: u64,
    /// Slots holding data.
    pub data_slots: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Requests made and bytes uploaded (`requests`, `bytes_uploaded` in JSON).
    #[serde(flatten)]
    pub traffic: Traffic,
}

/// [`Store::merge`](crate::store::Store::merge).
pub(crate) fn merge(store: &Handle, spec: impl AsRef<str>, options: &MergeOptions) -> Result<MergeReport> {
    store.require_writable()?;
    let spec = spec.as_ref();
    let t0 = store.backend().traffic();
    let _lease = store.lease(LeaseMode::Maintenance, "merge", options.wait)?;
    let id = crate::store::state::catalog::resolve_backup(store, spec, options.disk.as_deref())?.id;
    let mut report = merge_locked(store, &id)?;
    report.traffic = store.backend().traffic().since(t0);
    store.log_job("merge", &serde_json::to_value(&report).unwrap_or_default());
    Ok(report)
}

/// The merge itself ([`write_merged`]); the caller holds the exclusive lock.
pub(crate) fn merge_locked(store: &Handle, id: &BackupId) -> Result<MergeReport> {
    let started = Instant::now();
    let merged = write_merged(store.backend(), id)?;
    Ok(MergeReport {
        id: id.clone(),
        chain_length: merged.chain_length,
        slots: merged.slots,
        data_slots: merged.data_slots,
        seconds: if merged.written { started.elapsed().as_secs_f64() } else { 0.0 },
        traffic: Traffic::default(),
    })
}
