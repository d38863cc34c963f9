//! Leases as others see them: reading one holder's newest lease object,
//! or every lease in the store, and judging whether its holder may still be
//! running.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};


use crate::store::backend::{Backend, ObjectInfo};
use crate::store::error::{Result, StoreError};
use crate::store::state::lease::host::{machine_id, process_gone};
use crate::store::state::lease::{LeaseRecord, LeaseSettings, MAX_LEASE_OBJECT, io};


/// One lease as others see it.
#[derive(Debug, Clone)]
pub(crate) struct LeaseInfo {
    pub id: String,
    pub record: LeaseRecord,
    /// The newest lease object's time.
    pub modified: SystemTime,
}

impl LeaseInfo {
    /// Whether the holder may still be running: false only for a holder on
    /// this machine (same boot, same pid namespace) whose process is gone,
    /// which is over for certain however fresh its lease looks.
    pub(crate) fn holder_may_run(&self) -> bool {
        let mine = machine_id();
        if mine.is_empty() || self.record.machine != mine {
            return true;
        }
        !process_gone(self.record.pid, self.record.first)
    }

    /// Whether the lease is younger than `ttl + margin` at `now`, with the
    /// longer of the holder's ttl and ours.
    pub(crate) fn fresh(&self, now: SystemTime, settings: &LeaseSettings) -> bool {
        let age = now.duration_since(self.modified).unwrap_or_default();
        // The holder refreshes by its own ttl, which may be longer than ours
        // (up to a day: a lease that claims more cannot hold maintenance
        // for longer than that).
        let ttl = settings.ttl.max(Duration::from_secs(self.record.ttl_secs.min(86_400)));
        age <= ttl.saturating_add(settings.margin)
    }
}

/// Every lease in the store.
#[derive(Debug, Clone, Default)]
pub(crate) struct LeaseTable {
    pub leases: Vec<LeaseInfo>,
}

impl LeaseTable {
    /// Lists `locks/` and reads each lease's newest record and its fence.
    pub(crate) fn read(backend: &dyn Backend) -> Result<LeaseTable> {
        let listed = match backend.list("locks") {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            other => other.map_err(io(backend, "locks", "list leases"))?,
        };
        let mut by_id: BTreeMap<String, (u64, ObjectInfo)> = BTreeMap::new();
        for o in listed {
            let Some(rest) = o.key.strip_prefix("locks/") else { continue };
            let Some((id, name)) = rest.split_once('/') else { continue };
            let Some(seq) = name.strip_suffix(".lease").and_then(|s| s.parse::<u64>().ok()) else { continue };
            if by_id.get(id).is_none_or(|(s, _)| *s < seq) {
                by_id.insert(id.to_string(), (seq, o));
            }
        }
        let mut leases = Vec::new();
        for (id, (_, info)) in by_id {
            // A refresh creates `seq + 1` before it deletes `seq`: an object
            // gone since the listing means a newer one exists, unless the
            // lease ended. Look again in its own folder before leaving it out.
            let found = match read_record(backend, &info)? {
                Read::Record(record) => Some((record, info.modified)),
                Read::Gone => lease_info(backend, &id)?.map(|l| (l.record, l.modified)),
                Read::Unreadable => None,
            };
            if let Some((record, modified)) = found {
                leases.push(LeaseInfo { id, record, modified });
            }
        }
        Ok(LeaseTable { leases })
    }
}

/// What reading a lease object found.
enum Read {
    /// Its record.
    Record(LeaseRecord),
    /// Gone: refreshed or released since it was listed.
    Gone,
    /// There, but not a lease this vhdkit reads (written by hand, or by a
    /// newer vhdkit): it names nobody, as before, and is never retried.
    Unreadable,
}

fn read_record(backend: &dyn Backend, info: &ObjectInfo) -> Result<Read> {
    match crate::store::backend::read_small(backend, &info.key, MAX_LEASE_OBJECT) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).map_or(Read::Unreadable, Read::Record)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Read::Gone),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Ok(Read::Unreadable),
        Err(e) => Err(io(backend, &info.key, "read lease")(e)),
    }
}

/// Whether `id` can be a lease id (32 lower-case hex digits, as `take`
/// makes them): an id read from a claim becomes part of a key.
fn lease_id_ok(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Lease `id` as it stands: its newest object's record and time, read from
/// a listing of its own folder, tried again while refreshes race the read
/// (a few times: each retry means its holder refreshed in between). `None`
/// only when its folder is empty: the lease has ended.
pub(crate) fn lease_info(backend: &dyn Backend, id: &str) -> Result<Option<LeaseInfo>> {
    if !lease_id_ok(id) {
        return Ok(None);
    }
    let folder = crate::store::model::layout::lease_folder(id);
    for _ in 0..8 {
        let listed = match backend.list(&folder) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            other => other.map_err(io(backend, &folder, "list lease"))?,
        };
        let newest = listed
            .into_iter()
            .filter_map(|o| {
                let seq = o.key.rsplit('/').next()?.strip_suffix(".lease")?.parse::<u64>().ok()?;
                Some((seq, o))
            })
            .max_by_key(|(seq, _)| *seq);
        let Some((_, info)) = newest else { return Ok(None) };
        match read_record(backend, &info)? {
            Read::Record(record) => return Ok(Some(LeaseInfo { id: id.to_string(), record, modified: info.modified })),
            Read::Unreadable => return Ok(None),
            Read::Gone => {}
        }
    }
    Err(StoreError::io(backend.describe(&folder), "read lease")(std::io::Error::other(
        "the lease changed under every one of 8 reads",
    )))
}
