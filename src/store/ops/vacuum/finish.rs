//! Vacuum's second phase: delete what earlier records condemned, once it is
//! safe to.

use std::collections::{BTreeSet, HashSet};

use crate::store::backend::list_keys;
use crate::store::error::{Result, StoreError};
use crate::store::format::index_file::{IndexEntry, write_index_file};
use crate::store::format::manifest::{MERGED, id_from_key, manifest_key_gen};
use crate::store::format::pack::read_pack_index;
use crate::store::model::id::ChunkId;
use crate::store::model::id::PackId;
use crate::store::ops::vacuum::options::{VacuumOptions, VacuumReport};
use crate::store::state::condemned::{Condemned, Found, LeaseSet, leases_key, record_key, write_leases};
use crate::store::state::handle::Handle;
use crate::store::state::index::Index;
use crate::store::state::lease::{Lease, LeaseMode, LeaseTable};
use crate::store::state::tombstone::fence;

/// What stands in the way of a record: leases it lists that may still use
/// what it condemns. Stale backup leases are fenced on the way (so they can
/// never commit), stale reads and maintenance are ignored.
fn blocked(store: &Handle, me: &Lease, set: &LeaseSet, table: &LeaseTable, report: &mut VacuumReport) -> Result<bool> {
    let now = me.server_now();
    let settings = me.settings();
    let mut blocked = false;
    for id in &set.leases {
        let Some(l) = table.leases.iter().find(|l| &l.id == id) else { continue };
        if l.fresh(now, &settings) && l.holder_may_run() {
            blocked = true;
            continue;
        }
        if l.record.mode == LeaseMode::Backup {
            fence(store.backend(), l)?;
            report.leases_fenced += 1;
        }
    }
    Ok(blocked)
}

/// Phase 2 (see the module documentation) for every record that is due.
pub(super) fn finish(store: &Handle, lease: &Lease, options: &VacuumOptions, report: &mut VacuumReport) -> Result<()> {
    let backend = store.backend();
    let condemned = Condemned::read(backend)?;
    if condemned.found.is_empty() {
        return Ok(());
    }
    let table = LeaseTable::read(backend)?;
    let now = lease.server_now();
    let mut due: Vec<&Found> = Vec::new();
    for f in &condemned.found {
        let Some(set) = &f.leases else {
            // Its vacuum stopped before listing the leases. Every lease
            // held when the record was made is either over or held now,
            // so the leases of now stand in for them.
            let leases = table.leases.iter().map(|l| l.id.clone()).filter(|l| l != lease.id()).collect();
            write_leases(backend, &LeaseSet { record: f.record.id.clone(), leases })?;
            report.records_pending += 1;
            continue;
        };
        let young = now.duration_since(f.modified).unwrap_or_default() < options.grace;
        if young || blocked(store, lease, set, &table, report)? {
            report.records_pending += 1;
            continue;
        }
        if crate::store::ops::vacuum::retention::locked_record(store, f, now)? {
            report.records_pending += 1;
            report.records_locked += 1;
            continue;
        }
        due.push(f);
    }
    if due.is_empty() {
        return Ok(());
    }

    // Mark again: backups committed since the records were made count.
    let catalog = crate::store::state::catalog::catalog(store)?.strict()?;
    let marked = crate::store::ops::vacuum::mark::mark(store, &catalog, &options.cancel)?;
    if options.cancel.is_cancelled() {
        return Err(StoreError::Cancelled);
    }
    let going: HashSet<PackId> = condemned.packs();
    let due_keys: HashSet<String> = due.iter().flat_map(|f| f.record.objects.iter().cloned()).collect();
    let due_packs: BTreeSet<PackId> =
        due.iter().flat_map(|f| f.record.packs.iter()).filter_map(|p| PackId::from_hex(p)).collect();

    // Every live chunk must keep an indexed copy that survives: in an
    // index file that is not condemned, in a pack that is not. Where
    // it would not, rescue the pack and index the copy anew.
    let files = list_keys(backend, "index").map_err(StoreError::io(backend.describe("index"), "list"))?;
    let condemned_files = condemned.keys();
    let (kept_files, doomed_files): (Vec<String>, Vec<String>) =
        files.into_iter().partition(|k| !condemned_files.contains(k));
    let kept = Index::load_files(backend, &kept_files)?;
    let doomed = Index::load_files(backend, &doomed_files)?;
    let survives = |index: &Index, c| index.locations(c).any(|l| !going.contains(&l.pack));
    let mut rescued: BTreeSet<PackId> = BTreeSet::new();
    let mut carry: Vec<IndexEntry> = Vec::new();
    // In id order: the storage calls below then come in an order the
    // store fixes, not a hash map's.
    let mut live: Vec<&ChunkId> = marked.live.iter().collect();
    live.sort();
    for c in live {
        if survives(&kept, c) {
            continue;
        }
        let copies: Vec<IndexEntry> =
            kept.locations(c).chain(doomed.locations(c)).map(|l| IndexEntry { id: *c, location: *l }).collect();
        // Prefer a copy that survives anyway; else rescue a pack.
        let mut pick = copies.iter().find(|e| !going.contains(&e.location.pack));
        if pick.is_none() {
            for e in copies.iter().filter(|e| due_packs.contains(&e.location.pack)) {
                let key = e.location.pack.key();
                if crate::store::backend::exists(backend, &key)
                    .map_err(StoreError::io(backend.describe(&key), "check pack"))?
                {
                    pick = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = pick {
            if going.contains(&e.location.pack) {
                rescued.insert(e.location.pack);
            }
            carry.push(*e);
        }
    }
    // A rescued pack keeps all its indexed live entries.
    for p in &rescued {
        if let Ok(list) = read_pack_index(backend, *p, store.crypt()) {
            for e in list.iter().filter(|e| marked.live.contains(&e.id)) {
                let same = |l: &&crate::store::format::index_file::Location| l.pack == *p && l.offset == e.offset;
                if let Some(l) = doomed.locations(&e.id).chain(kept.locations(&e.id)).find(same) {
                    carry.push(IndexEntry { id: e.id, location: *l });
                }
            }
        }
    }
    report.packs_rescued += rescued.len() as u64;
    let deleting: BTreeSet<PackId> = due_packs.iter().filter(|p| !rescued.contains(p)).copied().collect();
    // No index file may outlive a pack it names: a later backup would
    // deduplicate against a copy that is gone. An index file committed
    // after the record was made can name a deleted pack (a backup that
    // wrote it stopped before its commit, so its pack was dead): it
    // goes too, and what else it names is carried over.
    let mut stale_files = Vec::new();
    for key in &kept_files {
        let one = Index::load_files(backend, std::slice::from_ref(key))?;
        if one.entries().iter().any(|e| deleting.contains(&e.location.pack)) {
            carry.extend(one.entries().iter().filter(|e| !deleting.contains(&e.location.pack)).copied());
            stale_files.push(key.clone());
        }
    }
    carry.sort_unstable_by_key(|e| (e.id, e.location.pack, e.location.offset));
    carry.dedup();

    // From here on, deletes. The lease is checked before each batch: a
    // vacuum paused past its lease stops rather than act on old facts.
    lease.check()?;
    if !carry.is_empty() {
        write_index_file(backend, &mut carry)?;
    }
    let del = |k: &str| backend.delete(k).map_err(StoreError::io(backend.describe(k), "delete"));
    lease.check()?;
    let mut index_files: Vec<&String> = due_keys.iter().filter(|k| k.starts_with("index/")).collect();
    index_files.extend(&stale_files);
    index_files.sort();
    index_files.dedup();
    for k in index_files {
        del(k)?;
        report.objects_deleted += 1;
    }
    lease.check()?;
    for p in &deleting {
        del(&p.key())?;
        report.packs_deleted += 1;
    }
    lease.check()?;
    let orphans: HashSet<&str> = catalog.orphans.iter().map(|id| id.as_str()).collect();
    // Tombstones last: a crash part-way must never leave a dropped
    // manifest without its tombstone, which would make it committed
    // again with its parents gone.
    let class = |k: &str| match k.split('/').next() {
        Some("manifests") => 0,
        Some("points") => 1,
        Some("dropped") => 3,
        _ => 2,
    };
    let mut rest: Vec<&String> = due_keys.iter().filter(|k| !k.starts_with("index/")).collect();
    rest.sort_by_key(|k| (class(k), *k));
    for k in rest {
        // A manifest (and its tombstone) a committed chain now reaches
        // stays: a backup continued from it meanwhile.
        // (A superseded generation goes regardless: the newer one stays.)
        let reached_manifest = match id_from_key(k) {
            Some((id, generation)) if marked.reached.contains(&id) => {
                let merged = manifest_key_gen(&id, MERGED);
                let superseded = generation < MERGED
                    && crate::store::backend::exists(backend, &merged)
                        .map_err(StoreError::io(backend.describe(&merged), "check manifest"))?;
                !superseded
            }
            _ => false,
        };
        let reached_tombstone =
            k.strip_prefix("dropped/").and_then(|id| id.parse().ok()).is_some_and(|id| marked.reached.contains(&id));
        if reached_manifest || reached_tombstone {
            continue;
        }
        if let Some((id, 0)) = id_from_key(k)
            && orphans.contains(id.as_str())
        {
            report.unfinished_jobs_removed += 1;
        }
        del(k)?;
        report.objects_deleted += 1;
    }
    for f in due {
        del(&leases_key(&f.record.id))?;
        del(&record_key(&f.record.id))?;
        report.records_finished += 1;
    }
    Ok(())
}
