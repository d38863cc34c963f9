//! Vacuum's first phase: plan, copy, index, condemn. Deletes nothing.

use std::collections::{HashMap, HashSet};

use crate::progress::Operation;
use crate::store::backend::list_keys;
use crate::store::error::{Result, StoreError};
use crate::store::format::index_file::{IndexEntry, Location, write_index_file};
use crate::store::format::manifest::{MERGED, manifest_key, manifest_key_gen};
use crate::store::format::pack::{PackEntry, PackWriter, read_pack_index};
use crate::store::format::point::point_key;
use crate::store::format::record::{RECORD_HEADER, decode_header, decode_record};
use crate::store::model::id::BackupId;
use crate::store::model::id::ChunkId;
use crate::store::model::id::PackId;
use crate::store::model::time::Moment;
use crate::store::ops::vacuum::options::{VacuumOptions, VacuumReport};
use crate::store::state::condemned::{CondemnRecord, Condemned, LeaseSet, write_leases, write_record};
use crate::store::state::handle::Handle;
use crate::store::state::index::Index;
use crate::store::state::lease::{Lease, LeaseTable, tombstone_key};

struct PackPlan {
    id: PackId,
    entries: Vec<PackEntry>,
    live_bytes: u64,
    dead_bytes: u64,
}

/// Lists `prefix`, a missing folder being empty (buckets have no folders;
/// older stores lack the newer ones).
fn keys(store: &Handle, prefix: &str) -> Result<Vec<String>> {
    let backend = store.backend();
    match list_keys(backend, prefix) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        other => other.map_err(StoreError::io(backend.describe(prefix), "list")),
    }
}

/// Phase 1 (see the module documentation). Returns whether a record
/// was written.
pub(super) fn condemn(
    store: &Handle,
    lease: &Lease,
    options: &VacuumOptions,
    report: &mut VacuumReport,
) -> Result<bool> {
    let backend = store.backend();
    let cancelled = || options.cancel.is_cancelled();
    let catalog = crate::store::state::catalog::catalog(store)?.strict()?;
    let marked = crate::store::ops::vacuum::mark::mark(store, &catalog, &options.cancel)?;
    let live = &marked.live;
    // What earlier records condemned is on its way out already.
    let pending = Condemned::read(backend)?;
    let pending_keys = pending.keys();
    let pending_packs = pending.packs();

    // Plan: one sound copy per live chunk outside condemned packs,
    // preferring fuller packs so that fewer records move.
    let index = Index::load(backend)?;
    let index_files: Vec<String> = index.files().iter().filter(|k| !pending_keys.contains(*k)).cloned().collect();
    let mut packs = Vec::new();
    let mut unreadable = 0u64;
    for key in keys(store, "packs")? {
        let Some(id) = PackId::from_key(&key) else { continue };
        if pending_packs.contains(&id) {
            continue;
        }
        match read_pack_index(backend, id, store.crypt()) {
            Ok(entries) => {
                let live_bytes = entries
                    .iter()
                    .filter(|e| live.contains(&e.id) && !index.is_damaged(&e.id, &id))
                    .map(|e| u64::from(e.length))
                    .sum();
                packs.push(PackPlan { id, entries, live_bytes, dead_bytes: 0 });
            }
            // An unreadable pack is left alone; verify reports it.
            Err(_) => unreadable += 1,
        }
    }
    packs.sort_by(|a, b| b.live_bytes.cmp(&a.live_bytes).then(a.id.cmp(&b.id)));
    // Copies the committed index names (records a killed backup left in
    // its packs are garbage), with their plain lengths.
    let indexed: HashMap<(ChunkId, PackId, u64), u32> =
        index.entries().iter().map(|e| ((e.id, e.location.pack, e.location.offset), e.location.plain_len)).collect();
    let mut chosen: HashMap<ChunkId, (PackId, PackEntry, u32)> = HashMap::new();
    for p in &mut packs {
        let mut live_bytes = 0;
        for e in &p.entries {
            let plain_len = indexed.get(&(e.id, p.id, e.offset)).copied();
            let keep = live.contains(&e.id) && !index.is_damaged(&e.id, &p.id) && !chosen.contains_key(&e.id);
            if let (true, Some(plain_len)) = (keep, plain_len) {
                chosen.insert(e.id, (p.id, *e, plain_len));
                live_bytes += u64::from(e.length);
            } else {
                p.dead_bytes += u64::from(e.length);
            }
        }
        p.live_bytes = live_bytes;
    }
    // Live chunks without a chosen copy: only damaged copies, or only
    // copies in packs an earlier record condemned (its second phase
    // rescues those). Their entries are carried over as they are.
    let unplaced: HashSet<ChunkId> = live.iter().filter(|c| !chosen.contains_key(c)).copied().collect();
    report.lost_chunks +=
        unplaced.iter().filter(|c| index.locations(c).all(|l| !pending_packs.contains(&l.pack))).count() as u64;

    // Copy the live records of packs with too much dead weight.
    let mut locations: HashMap<ChunkId, Location> = chosen
        .iter()
        .map(|(c, (p, e, plain_len))| {
            (*c, Location { pack: *p, offset: e.offset, length: e.length, plain_len: *plain_len })
        })
        .collect();
    let mut dead_packs = Vec::new();
    let mut writer: Option<PackWriter> = None;
    let mut moved: Vec<(ChunkId, PackEntry)> = Vec::new();
    let (mut record, mut plain) = (Vec::new(), Vec::new());
    let seal = |w: &mut Option<PackWriter>,
                moved: &mut Vec<(ChunkId, PackEntry)>,
                locations: &mut HashMap<ChunkId, Location>|
     -> Result<()> {
        if let Some(pack) = w.take() {
            let key = pack.id().key();
            let (id, _) = pack.seal().map_err(StoreError::io(backend.describe(&key), "seal pack"))?;
            for (c, e) in moved.drain(..) {
                if let Some(l) = locations.get_mut(&c) {
                    *l = Location { pack: id, offset: e.offset, length: e.length, plain_len: l.plain_len };
                }
            }
        }
        Ok(())
    };
    let heavy = |p: &PackPlan| p.live_bytes > 0 && (p.dead_bytes as f64) > options.threshold * p.live_bytes as f64;
    // Under Object Lock a pack cannot go before its lock ends: copying
    // its live records sooner would only store them twice.
    let now = lease.server_now();
    // Packs an interrupted backup may still take over (see
    // `VacuumOptions::keep_unfinished`): young enough, by the listing.
    let young: HashSet<PackId> = if options.keep_unfinished.is_zero() {
        HashSet::new()
    } else {
        match backend.list("packs") {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            other => other.map_err(StoreError::io(backend.describe("packs"), "list"))?,
        }
        .iter()
        .filter(|o| now.duration_since(o.modified).unwrap_or_default() < options.keep_unfinished)
        .filter_map(|o| PackId::from_key(&o.key))
        .collect()
    };
    let locked: HashSet<PackId> = match store.config.object_lock {
        Some(_) => packs
            .iter()
            .filter(|p| heavy(p))
            .filter(|p| backend.retained_until(&p.id.key()).ok().flatten().is_some_and(|u| u > now))
            .map(|p| p.id)
            .collect(),
        None => HashSet::new(),
    };
    let sparse = |p: &PackPlan| heavy(p) && !locked.contains(&p.id);
    let total_copy: u64 = packs.iter().filter(|p| sparse(p)).map(|p| p.live_bytes).sum();
    let mut progress = options.progress.throttled(Operation::Vacuum, total_copy);
    let mut copied = 0u64;
    for p in &packs {
        if p.live_bytes == 0 {
            if !young.contains(&p.id) {
                dead_packs.push(p.id);
            }
            continue;
        }
        if !sparse(p) {
            continue;
        }
        // Copy this pack's chosen records, each checked on the way.
        let key = p.id.key();
        let mut copied_all = true;
        for e in &p.entries {
            if chosen.get(&e.id).is_none_or(|(pid, ce, _)| *pid != p.id || ce.offset != e.offset) {
                continue;
            }
            if cancelled() {
                return Err(StoreError::Cancelled);
            }
            copied += u64::from(e.length);
            if progress.tick(copied) {
                lease.check()?;
            }
            record.resize(e.length as usize, 0);
            let sound = backend.read_at(&key, &mut record, e.offset).is_ok()
                && decode_record(&record, e.id, &mut plain, store.crypt()).is_ok();
            if !sound {
                copied_all = false;
                continue;
            }
            let h = decode_header(&record)
                .map_err(|r| StoreError::corrupt(backend.describe(&key), "record", e.offset, r.to_string()))?;
            let w = match &mut writer {
                Some(w) => w,
                empty => {
                    report.packs_written += 1;
                    empty.insert(PackWriter::create(backend, store.crypt())?)
                }
            };
            let new = w
                .add(e.id, h.compression, h.plain_len, &[&record[RECORD_HEADER..]])
                .map_err(StoreError::io(backend.describe(&w.id().key()), "write pack"))?;
            moved.push((e.id, new));
            if w.bytes_written() >= store.config.pack_size {
                seal(&mut writer, &mut moved, &mut locations)?;
            }
        }
        if copied_all {
            report.packs_rewritten += 1;
            dead_packs.push(p.id);
        }
    }
    seal(&mut writer, &mut moved, &mut locations)?;
    if cancelled() {
        return Err(StoreError::Cancelled);
    }
    progress.finish();

    // The new index names every live chunk's copy; it supersedes every
    // index file listed above (not those backups committed since).
    let mut entries: Vec<IndexEntry> =
        locations.into_iter().map(|(id, location)| IndexEntry { id, location }).collect();
    entries.extend(index.entries().iter().filter(|e| unplaced.contains(&e.id)).copied());
    // Spared young packs keep whatever entries the index had for them.
    let spared: HashSet<PackId> =
        packs.iter().filter(|p| p.live_bytes == 0 && young.contains(&p.id)).map(|p| p.id).collect();
    entries.extend(index.entries().iter().filter(|e| spared.contains(&e.location.pack)).copied());
    let referenced: HashSet<PackId> = entries.iter().map(|e| e.location.pack).collect();
    let dead_packs: Vec<PackId> = dead_packs.into_iter().filter(|p| !referenced.contains(p)).collect();
    let reindexed = !dead_packs.is_empty() || report.packs_rewritten > 0 || index_files.len() > 1;
    let mut objects: Vec<String> = Vec::new();
    if reindexed {
        lease.check()?;
        // With nothing live there is nothing to name: no empty index file.
        if !entries.is_empty() {
            write_index_file(backend, &mut entries)?;
        }
        objects.extend(index_files);
    }

    // What else is unneeded: manifests no committed chain reaches
    // (unfinished and dropped jobs, and their tombstones and points),
    // superseded generations, markers of condemned copies, leftovers.
    let unreached = |id: &BackupId| !marked.reached.contains(id);
    for id in catalog.orphans.iter().chain(&catalog.dropped).filter(|id| unreached(id)) {
        objects.push(manifest_key_gen(id, MERGED));
        objects.push(manifest_key(id));
        objects.push(tombstone_key(id.as_str()));
    }
    for p in &catalog.dropped_points {
        // The point's own disks go above (they are dropped with it);
        // the object and its tombstone go once no disk is reached.
        // A point object gone already has no disks left to wait for; one
        // that cannot be read (damaged, or not this store's) is kept with
        // its tombstone rather than guessed at (verify names it).
        let record_disks = match crate::store::format::point::PointRecord::read(backend, p) {
            Ok(r) => r.disks,
            Err(StoreError::NoSuchBackup(_)) => Vec::new(),
            Err(_) => continue,
        };
        if record_disks.iter().all(|d| unreached(&d.backup)) {
            objects.push(point_key(p));
            objects.push(tombstone_key(p.as_str()));
        }
    }
    objects.extend(catalog.superseded.iter().cloned());
    let condemned_packs: HashSet<PackId> = dead_packs.iter().copied().collect();
    for key in keys(store, "damaged")? {
        let of_condemned =
            key.rsplit('.').next().and_then(PackId::from_hex).is_some_and(|p| condemned_packs.contains(&p));
        if of_condemned {
            objects.push(key);
        }
    }
    objects.extend(keys(store, "tmp")?);
    // Only what exists and is not condemned already.
    let mut existing: HashSet<String> = HashSet::new();
    for k in &objects {
        if crate::store::backend::exists(backend, k).map_err(StoreError::io(backend.describe(k), "check"))? {
            existing.insert(k.clone());
        }
    }
    let mut objects: Vec<String> =
        objects.into_iter().filter(|k| existing.contains(k) && !pending_keys.contains(k)).collect();
    objects.sort();
    objects.dedup();

    report.live_chunks = live.len() as u64;
    report.packs_before = packs.len() as u64 + unreadable + pending_packs.len() as u64;
    report.dead_records +=
        packs.iter().map(|p| p.entries.len() as u64).sum::<u64>().saturating_sub(chosen.len() as u64);
    report.packs_condemned += dead_packs.len() as u64;
    report.objects_condemned += objects.len() as u64;
    if dead_packs.is_empty() && objects.is_empty() {
        return Ok(false);
    }

    // The record, then the leases held now: a lease taken after the
    // record exists reads it and keeps away from what it condemns.
    lease.check()?;
    let id = crate::format::Guid::new_random().to_string().replace('-', "");
    let created = Moment::from(lease.server_now());
    let record =
        CondemnRecord { id: id.clone(), created, packs: dead_packs.iter().map(PackId::to_hex).collect(), objects };
    write_record(backend, &record)?;
    let table = LeaseTable::read(backend)?;
    let leases = table.leases.iter().map(|l| l.id.clone()).filter(|l| l != lease.id()).collect();
    write_leases(backend, &LeaseSet { record: id, leases })?;
    Ok(true)
}
