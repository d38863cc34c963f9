//! Object Lock upkeep: live objects stay locked, locked ones stay put.
//!
//! In a store under Object Lock ([`ObjectLock`]) every object a backup
//! needs was locked for `days` when written. Vacuum keeps it so: each run
//! asks the storage for the retain-until date of every object that is not
//! condemned and extends to `days` from now any that has less than half of
//! that left (or none: a writer killed between its upload and its lock).
//! And it never deletes a locked object: a condemnation record with any
//! object still retained waits, whole, for a later run. Job-log entries
//! are not extended (they are kept for `days` from when they were
//! written), but one left unlocked by a writer killed before it locked it
//! is locked then.

use std::time::{Duration, SystemTime};

use crate::store::backend::{Backend, list_keys};
use crate::store::error::{Result, StoreError};
use crate::store::model::layout::Folder;
use crate::store::model::object_lock::ObjectLock;
use crate::store::ops::vacuum::options::VacuumReport;
use crate::store::state::condemned::{Condemned, Found};
use crate::store::state::handle::Handle;
use crate::store::state::lease::Lease;

/// Whether `key` is locked past `now`.
fn retained(backend: &dyn Backend, key: &str, now: SystemTime) -> Result<bool> {
    match backend.retained_until(key) {
        Ok(until) => Ok(until.is_some_and(|u| u > now)),
        // Gone already: nothing to keep.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::io(backend.describe(key), "read the retention")(e)),
    }
}

/// Whether any object of record `f` is still locked (then the record
/// waits: deleting part of it would hide the rest behind delete
/// markers, and the locked part cannot go anyway).
pub(super) fn locked_record(store: &Handle, f: &Found, now: SystemTime) -> Result<bool> {
    if store.config.object_lock.is_none() {
        return Ok(false);
    }
    let backend = store.backend();
    let packs = f.record.packs.iter().filter_map(|p| crate::store::model::id::PackId::from_hex(p)).map(|p| p.key());
    for key in packs.chain(f.record.objects.iter().cloned()) {
        if crate::store::model::layout::locked_key(&key) && retained(backend, &key, now)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Extends the lock of every object not condemned that has less than
/// half its retention left.
pub(super) fn extend_retention(
    store: &Handle,
    lease: &Lease,
    lock: ObjectLock,
    report: &mut VacuumReport,
) -> Result<()> {
    let backend = store.backend();
    let condemned = Condemned::read(backend)?;
    let (packs, keys) = (condemned.packs(), condemned.keys());
    let now = lease.server_now();
    let half = Duration::from_secs(u64::from(lock.days) * 86_400 / 2);
    let mut objects = vec!["config".to_string()];
    for prefix in ["packs", "index", "manifests", "points"] {
        objects.extend(list_keys(backend, prefix).map_err(StoreError::io(backend.describe(prefix), "list"))?);
    }
    // The store's own key objects; one planted by someone who can only
    // write is left to expire, and a removed one is gone.
    if let Some(keys) = store.crypt().keys() {
        objects.extend(crate::store::state::keyring::authentic_keys(backend, keys)?);
    }
    // Job-log entries keep the lock they were written with; one whose
    // writer died before locking it (written within the lock's days)
    // is locked now, once.
    let window = Duration::from_secs(u64::from(lock.days) * 86_400);
    let log = Folder::Log.name();
    let unlocked_logs = match backend.list(log) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        other => other.map_err(StoreError::io(backend.describe(log), "list"))?,
    };
    for o in unlocked_logs.iter().filter(|o| now.duration_since(o.modified).unwrap_or_default() < window) {
        match backend.retained_until(&o.key) {
            Ok(Some(_)) => continue,
            Ok(None) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::io(backend.describe(&o.key), "read the retention")(e)),
        }
        lease.check()?;
        backend
            .retain(&o.key, lock.mode, lock.until(o.modified))
            .map_err(StoreError::io(backend.describe(&o.key), "lock a job-log entry"))?;
        report.retention_extended += 1;
    }
    for key in objects {
        let pack = crate::store::model::id::PackId::from_key(&key);
        if keys.contains(&key) || pack.is_some_and(|p| packs.contains(&p)) {
            continue;
        }
        let until = match backend.retained_until(&key) {
            Ok(u) => u,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::io(backend.describe(&key), "read the retention")(e)),
        };
        if until.is_some_and(|u| u > now + half) {
            continue;
        }
        lease.check()?;
        backend
            .retain(&key, lock.mode, lock.until(now))
            .map_err(StoreError::io(backend.describe(&key), "extend the retention"))?;
        report.retention_extended += 1;
    }
    Ok(())
}
