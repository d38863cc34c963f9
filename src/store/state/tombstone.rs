//! Tombstones (`dropped/<id>`): an id tombstoned is never committed,
//! whatever its holder uploads later. Prune drops backups with them;
//! vacuum fences a stale lease with them before deleting what it held.

use crate::store::backend::{Backend, exists, put_new};
use crate::store::error::{Result, StoreError};
use crate::store::model::id::{BackupId, PointId};
use crate::store::model::layout::{manifest_key, point_key, tombstone_key};
use crate::store::state::lease::LeaseInfo;

/// Fences a stale lease: tombstones every id it may commit that is not
/// committed yet, so nothing it creates from now on counts. Ids already
/// committed are left alone (the holder died after its commit).
pub(crate) fn fence(backend: &dyn Backend, lease: &LeaseInfo) -> Result<()> {
    for id in &lease.record.commits {
        let mut committed = false;
        // An id that is no id (a hand-written lease) names nothing to fence.
        let (Ok(backup), Ok(point)) = (id.parse::<BackupId>(), id.parse::<PointId>()) else {
            continue;
        };
        for k in [manifest_key(&backup, 0), point_key(&point)] {
            committed |= exists(backend, &k).map_err(StoreError::io(backend.describe(&k), "check commit"))?;
        }
        if committed {
            continue;
        }
        let key = tombstone_key(id);
        let why = format!("fenced: lease {} went stale before committing", lease.id);
        match put_new(backend, &key, why.as_bytes()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(StoreError::io(backend.describe(&key), "fence lease")(e)),
        }
    }
    Ok(())
}
