//! Synthetic merge: an incremental backup becomes a full one by folding its
//! chain into a new manifest, without reading any chunk data.
//!
//! The full manifest is written beside the old one and committed under the
//! same id by an atomic rename: at every instant the backup has either its
//! old incremental manifest or its new full one, with the same effective
//! map. Backups that name it as their parent keep working; its ancestors are
//! no longer needed by it and become droppable.

use std::time::Instant;

use serde::Serialize;

use super::Store;
use super::backend::LockMode;
use super::error::Result;
use super::manifest::{ChainCursor, Kind, ManifestWriter, Resolved, Slot};

/// What a merge did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MergeReport {
    pub id: String,
    /// Manifests folded (1 when the backup was already full).
    pub chain_length: usize,
    pub slots: u64,
    pub data_slots: u64,
    pub seconds: f64,
}

impl Store {
    /// Makes backup `spec` a full backup (exclusive lock; waits for it when
    /// `wait`). Metadata only: no chunk is read.
    pub fn merge(&self, spec: &str, wait: bool) -> Result<MergeReport> {
        let _lock = self.lock(LockMode::Exclusive, wait)?;
        let id = self.resolve(spec)?.id;
        let report = self.merge_locked(&id)?;
        self.log_job("merge", &serde_json::to_value(&report).unwrap_or_default());
        Ok(report)
    }

    /// The merge itself; the caller holds the exclusive lock.
    pub(crate) fn merge_locked(&self, id: &str) -> Result<MergeReport> {
        let started = Instant::now();
        let mut cursor = ChainCursor::open(self.backend(), id)?;
        let chain_length = cursor.chain().len();
        let mut header = cursor.header().clone();
        let slots = header.slots();
        if header.kind == Kind::Full {
            return Ok(MergeReport { id: id.to_string(), chain_length, slots, data_slots: 0, seconds: 0.0 });
        }
        header.kind = Kind::Full;
        header.parent = None;
        let mut writer = ManifestWriter::create(self.backend(), &header)?;
        let mut data_slots = 0;
        while let Some((r, n)) = cursor.next_run()? {
            match r {
                Resolved::Data(c) => {
                    writer.push(Slot::Data(c), n)?;
                    data_slots += n;
                }
                Resolved::Zero => writer.push(Slot::Zero, n)?,
            }
        }
        drop(cursor);
        writer.commit()?;
        Ok(MergeReport {
            id: id.to_string(),
            chain_length,
            slots,
            data_slots,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Manifests in backup `id`'s chain (itself included), by following
    /// parent links in the headers.
    pub(crate) fn chain_length(&self, id: &str) -> Result<usize> {
        let mut n = 0;
        let mut next = Some(id.to_string());
        while let Some(id) = next {
            n += 1;
            let h = self.header(&id)?;
            next = h.parent.filter(|_| h.kind == Kind::Incremental && n < 100_000);
        }
        Ok(n)
    }
}
