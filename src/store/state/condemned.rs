//! Condemnation records: what vacuum found unreferenced, kept until it is
//! safe to delete.
//!
//! Vacuum never deletes what it has just found dead. It writes a record,
//! `condemned/<id>.record`, naming the packs and other objects it found
//! dead. Then it lists the leases held at that moment and writes them as
//! `condemned/<id>.leases`. A later vacuum deletes them only after three
//! things: the grace period has passed, every lease in the list has ended
//! (or was stale and has been fenced), and a fresh mark shows them still
//! unreferenced.
//!
//! A backup reads every record after taking its lease and does not
//! deduplicate against a condemned pack: it stores such a chunk again. See
//! docs/store-format.md ("Deleting on shared storage") for why no committed
//! backup can lose a chunk this way.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::store::backend::Backend;
use crate::store::error::{Result, StoreError};
use crate::store::backend::put_new;
use crate::store::model::id::PackId;
use crate::store::model::time::Moment;

/// What one vacuum condemned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CondemnRecord {
    /// The record's id (also its key's name).
    pub id: String,
    /// When it was made (the vacuum's storage-time estimate).
    pub created: Moment,
    /// Packs no committed backup needed.
    pub packs: Vec<String>,
    /// Other objects to delete: index files superseded by a newer one,
    /// manifests of unfinished or dropped jobs, superseded manifest
    /// generations, damage markers, temporary files, tombstones.
    pub objects: Vec<String>,
}

/// The leases that were held when a record was committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeaseSet {
    pub record: String,
    pub leases: Vec<String>,
}

/// A record as found, with its lease list if that was written.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub record: CondemnRecord,
    pub leases: Option<LeaseSet>,
    /// The record object's time, by the storage's clock.
    pub modified: std::time::SystemTime,
}

/// Every record in the store.
#[derive(Debug, Clone, Default)]
pub(crate) struct Condemned {
    pub found: Vec<Found>,
}

pub(crate) fn record_key(id: &str) -> String {
    format!("condemned/{id}.record")
}

pub(crate) fn leases_key(id: &str) -> String {
    format!("condemned/{id}.leases")
}

impl Condemned {
    /// Reads every record and lease list. A record that cannot be read is
    /// an error: treating it as absent could hand its packs to a backup.
    pub(crate) fn read(backend: &dyn Backend) -> Result<Condemned> {
        let listed = match backend.list("condemned") {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            other => other.map_err(StoreError::io(backend.describe("condemned"), "list"))?,
        };
        let mut found = Vec::new();
        for o in listed.iter().filter(|o| o.key.ends_with(".record")) {
            let path = backend.describe(&o.key);
            let bytes = match backend.read_all(&o.key) {
                Ok(b) => b,
                // Finished and removed since the listing.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io(&path, "read condemnation record")(e)),
            };
            let record: CondemnRecord = serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::corrupt(&path, "condemnation record", 0, e.to_string()))?;
            let lk = leases_key(&record.id);
            let leases = if listed.iter().any(|x| x.key == lk) {
                match backend.read_all(&lk) {
                    Ok(b) => Some(serde_json::from_slice::<LeaseSet>(&b).map_err(|e| {
                        StoreError::corrupt(backend.describe(&lk), "condemnation lease list", 0, e.to_string())
                    })?),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(StoreError::io(backend.describe(&lk), "read lease list")(e)),
                }
            } else {
                None
            };
            found.push(Found { record, leases, modified: o.modified });
        }
        Ok(Condemned { found })
    }

    /// Every condemned pack, in any record.
    pub(crate) fn packs(&self) -> HashSet<PackId> {
        self.found.iter().flat_map(|f| f.record.packs.iter()).filter_map(|p| PackId::from_hex(p)).collect()
    }

    /// Every condemned object key (packs included).
    pub(crate) fn keys(&self) -> HashSet<String> {
        let mut keys: HashSet<String> = self.found.iter().flat_map(|f| f.record.objects.iter().cloned()).collect();
        keys.extend(self.packs().iter().map(PackId::key));
        keys
    }
}

/// Commits a new record.
pub(crate) fn write_record(backend: &dyn Backend, record: &CondemnRecord) -> Result<()> {
    let key = record_key(&record.id);
    put_new(backend, &key, &serde_json::to_vec_pretty(record).unwrap_or_default())
        .map_err(StoreError::io(backend.describe(&key), "write condemnation record"))
}

/// Commits a record's lease list.
pub(crate) fn write_leases(backend: &dyn Backend, set: &LeaseSet) -> Result<()> {
    let key = leases_key(&set.record);
    put_new(backend, &key, &serde_json::to_vec_pretty(set).unwrap_or_default())
        .map_err(StoreError::io(backend.describe(&key), "write lease list"))
}
