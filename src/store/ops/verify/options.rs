//! What verify is asked to do and what it reports, shared by the keyed
//! check and the keyless one.

use serde::Serialize;

use crate::cancel::CancelToken;
use crate::progress::ProgressSink;
use crate::store::backend::Traffic;
use crate::store::model::id::{BackupId, PointId};
use crate::store::model::time::Moment;

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
    /// Read only this share of packs, in percent (0 < p <= 100): each pack
    /// is read or not by a hash of the seed and its id, independently, so
    /// the share holds as the store grows and nights with different seeds
    /// cover different packs (as `restic check --read-data-subset`). The
    /// chunks of packs not read count as sound; every index file, manifest
    /// and backup map is still checked.
    pub sample: Option<f64>,
    /// The seed of the sample; `None`: a random one, reported as
    /// [`VerifyReport::sample_seed`] so a night's choice can be repeated.
    pub seed: Option<u64>,
    /// Read only packs written at or after this time, and check the maps
    /// of backups made since: what last night's verify has not seen.
    pub since: Option<Moment>,
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
    /// Everything read is sound (with a sample or `since`, what was not
    /// read is not vouched for).
    pub ok: bool,
    /// Packs whose index was read.
    pub packs_checked: u64,
    /// Packs in the store (or the selection); more than `packs_checked`
    /// when a sample or `since` left some unread.
    pub packs_total: u64,
    /// The seed a sampled verify chose its packs with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_seed: Option<u64>,
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

/// Which packs a verify reads: those `since` allows and the sample takes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PackFilter {
    /// A pack is read when the first 8 bytes of BLAKE3(seed, pack id) are
    /// below this (`u64::MAX`: every pack).
    below: u64,
    seed: Option<u64>,
    since: Option<std::time::SystemTime>,
}

impl PackFilter {
    /// The filter `options` ask for; a share outside (0, 100] is refused.
    pub(crate) fn new(options: &VerifyOptions) -> crate::store::error::Result<PackFilter> {
        let since = options.since.map(std::time::SystemTime::from);
        let Some(pct) = options.sample else { return Ok(PackFilter { below: u64::MAX, seed: None, since }) };
        if !(pct > 0.0 && pct <= 100.0) {
            return Err(crate::store::error::StoreError::Invalid(format!(
                "a verify sample of {pct} %: give a share above 0 and at most 100"
            )));
        }
        let seed = options.seed.unwrap_or_else(|| {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).map_or(0x5eed, |()| u64::from_le_bytes(b))
        });
        let below = if pct >= 100.0 { u64::MAX } else { (pct / 100.0 * 18_446_744_073_709_551_616.0) as u64 };
        Ok(PackFilter { below, seed: Some(seed), since })
    }

    /// The seed, when sampling.
    pub(crate) fn seed(&self) -> Option<u64> {
        self.seed
    }

    /// Whether the pack `id`, written at `modified`, is read.
    pub(crate) fn reads(&self, id: &crate::store::model::id::PackId, modified: std::time::SystemTime) -> bool {
        if self.since.is_some_and(|t| modified < t) {
            return false;
        }
        let Some(seed) = self.seed else { return true };
        let mut h = blake3::Hasher::new();
        h.update(&seed.to_le_bytes());
        h.update(&id.0);
        let mut first = [0u8; 8];
        first.copy_from_slice(&h.finalize().as_bytes()[..8]);
        self.below == u64::MAX || u64::from_le_bytes(first) < self.below
    }
}
