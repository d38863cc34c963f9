//! What vacuum is asked to do and what it reports, shared by its phases.

use std::time::Duration;

use serde::Serialize;

use crate::cancel::CancelToken;
use crate::progress::ProgressSink;
use crate::store::backend::Traffic;

/// How to vacuum.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VacuumOptions {
    /// Rewrite a pack when its dead bytes exceed this share of its live
    /// bytes (default 0.25: afterwards packs hold at most 1.25 × the live data).
    pub threshold: f64,
    /// Wait for another maintenance operation instead of failing with `StoreBusy`.
    pub wait: bool,
    /// How long condemned objects are kept before they may be deleted
    /// (default 24 hours). Zero deletes as soon as no lease that was held
    /// when they were condemned remains: right for a store nothing else
    /// uses at the time.
    pub grace: Duration,
    /// Packs no committed backup needs that are younger than this are
    /// neither condemned nor dropped from the index, so a re-run of the
    /// backup that was interrupted while writing them takes their chunks
    /// over instead of uploading them again (default: zero, every such
    /// pack is condemned).
    pub keep_unfinished: Duration,
    /// Checked between manifests and records until deleting starts.
    pub cancel: CancelToken,
    /// Receives progress: bytes of records copied.
    pub progress: ProgressSink,
}

impl Default for VacuumOptions {
    fn default() -> Self {
        VacuumOptions {
            threshold: 0.25,
            wait: false,
            grace: Duration::from_secs(24 * 3600),
            keep_unfinished: Duration::ZERO,
            cancel: CancelToken::default(),
            progress: ProgressSink::default(),
        }
    }
}

impl VacuumOptions {
    /// Default options with a grace period of zero: delete what is dead as
    /// soon as nothing could be using it.
    pub fn immediate() -> VacuumOptions {
        VacuumOptions { grace: Duration::ZERO, ..Default::default() }
    }
}

/// What vacuum did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct VacuumReport {
    /// Distinct chunks committed backups and points need.
    pub live_chunks: u64,
    /// Records no committed backup needs (and duplicates of live ones).
    pub dead_records: u64,
    /// Packs before vacuum.
    pub packs_before: u64,
    /// Packs whose live records were copied to new packs.
    pub packs_rewritten: u64,
    /// New packs written.
    pub packs_written: u64,
    /// Live chunks whose every stored copy is damaged (left as they are).
    pub lost_chunks: u64,
    /// Packs this run condemned.
    pub packs_condemned: u64,
    /// Other objects this run condemned.
    pub objects_condemned: u64,
    /// Condemnation records finished (their objects deleted).
    pub records_finished: u64,
    /// Records not yet due (grace period, or leases that may still use them).
    pub records_pending: u64,
    /// Packs deleted.
    pub packs_deleted: u64,
    /// Other objects deleted.
    pub objects_deleted: u64,
    /// Condemned packs kept because a backup committed since needs them.
    pub packs_rescued: u64,
    /// Manifests of unfinished jobs deleted.
    pub unfinished_jobs_removed: u64,
    /// Stale backup leases fenced (what they had not committed is tombstoned).
    pub leases_fenced: u64,
    /// Records due but kept because some of their objects are still under
    /// Object Lock (a later run deletes them).
    pub records_locked: u64,
    /// Objects whose Object Lock was extended (they are still needed).
    pub retention_extended: u64,
    /// Bytes the store occupied before.
    pub bytes_before: u64,
    /// And after.
    pub bytes_after: u64,
    /// The difference.
    pub bytes_reclaimed: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Requests made and bytes uploaded (`requests`, `bytes_uploaded` in JSON).
    #[serde(flatten)]
    pub traffic: Traffic,
}
