//! What verify is asked to do and what it reports, shared by the keyed
//! check and the keyless one.

use serde::Serialize;

use crate::cancel::CancelToken;
use crate::progress::ProgressSink;
use crate::store::backend::Traffic;
use crate::store::model::id::{BackupId, PointId};

/// How to verify.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct VerifyOptions {
    /// Check only what this backup or restore point needs (an id, a name or
    /// an id prefix); `None` checks the whole store.
    pub only: Option<String>,
    /// Checked between records; a cancelled verify returns `Cancelled`.
    pub cancel: CancelToken,
    /// Receives progress: bytes of records checked.
    pub progress: ProgressSink,
}

/// A stored copy of a chunk that failed verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, PartialOrd, Ord)]
#[non_exhaustive]
pub struct DamagedChunk {
    /// The chunk id (hex).
    pub chunk: String,
    /// The pack holding the copy (hex).
    pub pack: String,
    /// What is wrong with it.
    pub reason: String,
}

/// What verify found.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Everything was read and is sound.
    pub ok: bool,
    /// Packs whose index was read.
    pub packs_checked: u64,
    /// Distinct chunks checked (as [`Stats::chunks`](crate::store::Stats::chunks)
    /// counts them; without the key, where copies cannot be told apart,
    /// every record).
    pub chunks_checked: u64,
    /// Records checked: every stored copy, duplicates and records no backup
    /// needs any more included.
    pub records_checked: u64,
    /// Backups whose whole map was checked.
    pub backups_checked: u64,
    /// Copies that failed (a chunk with another sound copy is still restorable).
    pub damaged_chunks: Vec<DamagedChunk>,
    /// Backups that cannot be restored in full.
    pub damaged_backups: Vec<BackupId>,
    /// Restore points with a damaged disk or attachment.
    pub damaged_points: Vec<PointId>,
    /// Other damage and failures: listings or files that could not be read,
    /// manifests that do not decode, missing chunks.
    pub problems: Vec<String>,
    /// Manifests of jobs that never committed (vacuum removes them; not damage).
    pub unfinished_jobs: u64,
    /// Index entries naming a pack that no longer exists (vacuum removes
    /// them; not damage unless a backup needs the chunk, reported above).
    pub stale_index_entries: u64,
    /// Checked without the key (an encrypted store opened keyless):
    /// structure, sizes and CRCs only, no tags, no backup's map.
    pub structure_only: bool,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Requests made and bytes uploaded (`requests`, `bytes_uploaded` in JSON).
    #[serde(flatten)]
    pub traffic: Traffic,
}
