//! Marking: what committed backups and restore points need.

use std::collections::HashSet;

use crate::cancel::CancelToken;
use crate::store::error::{Result, StoreError};
use crate::store::format::manifest::{ManifestReader, Slot};
use crate::store::model::id::BackupId;
use crate::store::model::id::ChunkId;
use crate::store::state::catalog::Catalog;
use crate::store::state::chain::ChainWalk;
use crate::store::state::handle::Handle;

/// The live set.
pub(super) struct Marked {
    /// Every chunk a committed backup's chain or a restore point's
    /// attachment names.
    pub live: HashSet<ChunkId>,
    /// Every backup whose manifest a committed chain reaches (committed
    /// ones, and the uncommitted parents a backup continued from).
    pub reached: HashSet<BackupId>,
}

/// Reads every manifest a committed backup's chain reaches (each
/// checked end to end: damage stops vacuum before it changes anything)
/// and every committed point, and collects the chunks they name: one
/// set in memory, no per-chunk system calls.
pub(super) fn mark(store: &Handle, catalog: &Catalog, cancel: &CancelToken) -> Result<Marked> {
    let backend = store.backend();
    let mut live = HashSet::new();
    let mut reached = HashSet::new();
    for b in &catalog.backups {
        for h in ChainWalk::new(backend, &b.id) {
            let h = h?;
            if !reached.insert(h.id.clone()) {
                break;
            }
            let mut reader = ManifestReader::open(backend, &h.id)?;
            while let Some((slot, _)) = reader.next_run()? {
                if let Slot::Data(c) = slot {
                    live.insert(c);
                }
            }
            if cancel.is_cancelled() {
                return Err(StoreError::Cancelled);
            }
        }
    }
    for p in &catalog.points {
        live.extend(p.attachments.iter().flat_map(|a| a.chunks.iter().flatten().copied()));
    }
    Ok(Marked { live, reached })
}
