//! Verification: every pack record, every index entry, every manifest and
//! restore point, or only what one backup or restore point needs.
//!
//! Reads every pack (its index and each record: CRC, decompression, BLAKE3
//! against the id), checks that each global index entry points at a sound
//! record, checks each manifest's checksum and that every chunk of each
//! backup's effective map (and each attachment) has a sound copy, and names
//! the backups and restore points a damaged chunk affects. A listing or
//! read that fails is a problem in the report, never an empty list: `ok`
//! is true only when everything was read and found sound. Damaged copies
//! are recorded under `damaged/`, so later backups store those chunks again
//! instead of deduplicating against them.
//!
//! In an encrypted store every record's and every sealed object's tag is
//! checked too (reading them does); opened without the key, verify checks
//! what it can without it (see [`keyless`]).
//!
//! May import: the layers below `ops`; `keyless.rs` imports `options.rs`,
//! never this file.

mod keyless;
pub(crate) mod options;

use options::PackFilter;
pub use options::{DamagedChunk, VerifyOptions, VerifyReport};

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use crate::cancel::CancelToken;
use crate::progress::Operation;
use crate::store::crypto::Crypt;
use crate::store::error::{Result, StoreError};
use crate::store::format::index_file::Location;
use crate::store::format::index_file::decode_index;
use crate::store::format::pack::{PackEntry, read_pack_index};
use crate::store::format::record::{check_crc, decode_record};
use crate::store::model::id::ChunkId;
use crate::store::model::id::PackId;
use crate::store::model::id::{BackupId, PointId};
use crate::store::state::catalog::{Catalog, Selection};
use crate::store::state::chain::{ChainCursor, Resolved};
use crate::store::state::condemned::Condemned;
use crate::store::state::handle::Handle;
use crate::store::state::index::damaged_key;
use crate::store::state::readplan::{Want, coalesce};

type PackResult = (PackId, std::result::Result<Vec<(PackEntry, Option<String>)>, String>);

/// [`Store::verify`](crate::store::Store::verify).
pub(crate) fn verify(store: &Handle, options: &VerifyOptions) -> Result<VerifyReport> {
    let filter = PackFilter::new(options)?;
    if matches!(store.crypt(), Crypt::Locked) {
        if options.only.is_some() {
            return Err(StoreError::KeyRequired { path: store.path() });
        }
        return crate::store::ops::verify::keyless::verify_keyless(store, options, &filter);
    }
    let started = Instant::now();
    let t0 = store.backend().traffic();
    let _lease = store.read_lease("verify")?;
    let backend = store.backend();
    let mut problems = Vec::new();
    let mut damaged_backups: BTreeSet<BackupId> = BTreeSet::new();
    let list = |prefix: &str, problems: &mut Vec<String>| match backend.list(prefix) {
        Ok(objects) => objects,
        Err(e) => {
            problems.push(format!("listing {} failed: {e}", backend.describe(prefix).display()));
            Vec::new()
        }
    };

    // Condemned objects may vanish while we read them (a vacuum's second
    // phase): that is not damage.
    let condemned = match Condemned::read(backend) {
        Ok(c) => c,
        Err(e) => {
            problems.push(format!("reading the condemnation records failed: {e}"));
            Condemned::default()
        }
    };
    let condemned_keys = condemned.keys();
    let gone = |key: &str, kind: Option<std::io::ErrorKind>| {
        kind == Some(std::io::ErrorKind::NotFound) && condemned_keys.contains(key)
    };

    let catalog = match crate::store::state::catalog::catalog(store) {
        Ok(c) => c,
        Err(e) => {
            problems.push(format!("listing the backups failed: {e}"));
            Catalog::empty()
        }
    };
    problems.extend(crate::store::state::keyring::key_problems(store)?);
    for (key, e) in &catalog.forged {
        problems.push(format!("{key}: ignored, it does not open (not written with the store's key): {e}"));
    }
    for (key, e) in &catalog.problems {
        problems.push(format!("{key}: {e}"));
        if let Some((id, _)) = crate::store::format::manifest::id_from_key(key) {
            damaged_backups.insert(id);
        }
    }

    // What to check: every committed backup and point, or one selection.
    // With `since`, the backups and points made since.
    let recent = |t: &crate::store::model::time::Moment| options.since.is_none_or(|s| *t >= s);
    let (backups, points): (Vec<BackupId>, Vec<PointId>) = match &options.only {
        None => (
            catalog.backups.iter().filter(|b| recent(&b.created)).map(|b| b.id.clone()).collect(),
            catalog.points.iter().filter(|p| recent(&p.created)).map(|p| p.id.clone()).collect(),
        ),
        Some(spec) => match catalog.select(spec)? {
            Selection::Backup(b) => (vec![b.id], Vec::new()),
            Selection::Point(p) => (p.disks.iter().map(|d| d.backup.clone()).collect(), vec![p.id]),
        },
    };
    // With a selection, only the chunks it needs are read back.
    let point_chunks = |p: &crate::store::format::point::PointRecord| -> HashSet<ChunkId> {
        p.attachments.iter().flat_map(|a| a.chunks.iter().flatten().copied()).collect()
    };
    let scope: Option<HashSet<ChunkId>> = match &options.only {
        None => None,
        Some(_) => {
            let mut s = HashSet::new();
            for id in &backups {
                // A chain that cannot be walked is reported below.
                if let Ok(set) = chunks_of(backend, id, &options.cancel) {
                    s.extend(set);
                }
            }
            for p in catalog.points.iter().filter(|p| points.contains(&p.id)) {
                s.extend(point_chunks(p));
            }
            Some(s)
        }
    };
    if options.cancel.is_cancelled() {
        return Err(StoreError::Cancelled);
    }
    let wanted = |id: &ChunkId| scope.as_ref().is_none_or(|s| s.contains(id));

    // Index files one by one, so one bad file does not hide the rest.
    let mut indexed: Vec<(ChunkId, PackId, u64, u32)> = Vec::new();
    for key in list("index", &mut problems).into_iter().map(|o| o.key) {
        let bytes = match backend.read_all(&key) {
            Err(e) if gone(&key, Some(e.kind())) => continue,
            other => other,
        };
        match bytes.map_err(|e| e.to_string()).and_then(|b| decode_index(&b).map_err(|m| m.to_string())) {
            Ok(entries) => indexed.extend(
                entries
                    .iter()
                    .filter(|e| wanted(&e.id))
                    .map(|e| (e.id, e.location.pack, e.location.offset, e.location.length)),
            ),
            Err(e) => problems.push(format!("index file {}: {e}", backend.describe(&key).display())),
        }
    }

    // An encrypted store's other sealed objects: each must open.
    if options.only.is_none() && crate::store::state::keyring::is_encrypted(store) {
        for prefix in ["log", "condemned"] {
            for key in list(prefix, &mut problems).into_iter().map(|o| o.key) {
                match backend.read_all(&key) {
                    Err(e) if gone(&key, Some(e.kind())) || e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => problems.push(format!("{}: {e}", backend.describe(&key).display())),
                    Ok(_) => {}
                }
            }
        }
    }

    // Every pack (or every pack the selection needs), less those a sample
    // or `since` leaves unread: their chunks count as sound.
    let listed: Vec<(String, u64, std::time::SystemTime)> = match &scope {
        None => list("packs", &mut problems).into_iter().map(|o| (o.key, o.size, o.modified)).collect(),
        Some(_) => {
            let packs: BTreeSet<PackId> = indexed.iter().map(|e| e.1).collect();
            let mut listed = Vec::new();
            for p in &packs {
                let key = p.key();
                match backend.stat(&key) {
                    Ok(o) => listed.push((key, o.size, o.modified)),
                    // A pack that is gone is reported with the chunks it held.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    // Any other failure: read it anyway, so it is reported
                    // as unreadable (never sampled out or left unread).
                    Err(_) => listed.push((key, 0, std::time::SystemTime::now())),
                }
            }
            listed
        }
    };
    let packs_total = listed.len() as u64;
    let mut unread: HashSet<PackId> = HashSet::new();
    let mut pack_keys: Vec<(String, u64)> = Vec::new();
    for (key, size, modified) in listed {
        match PackId::from_key(&key) {
            Some(id) if !filter.reads(&id, modified) => {
                unread.insert(id);
            }
            _ => pack_keys.push((key, size)),
        }
    }
    let results = check_packs(store, &pack_keys, &scope, &gone, options)?;

    let mut damaged: BTreeSet<DamagedChunk> = BTreeSet::new();
    let mut sound: HashSet<(ChunkId, PackId, u64)> = HashSet::new();
    let mut packs_present: HashSet<PackId> = HashSet::new();
    let mut bad_packs: HashMap<PackId, String> = HashMap::new();
    let mut records_checked = 0u64;
    let mut distinct: HashSet<ChunkId> = HashSet::new();
    for (pack, result) in &results {
        packs_present.insert(*pack);
        match result {
            Err(e) => {
                problems.push(format!("pack {pack}: {e}"));
                bad_packs.insert(*pack, e.clone());
            }
            Ok(entries) => {
                for (e, verdict) in entries {
                    records_checked += 1;
                    distinct.insert(e.id);
                    match verdict {
                        None => {
                            sound.insert((e.id, *pack, e.offset));
                        }
                        Some(reason) => {
                            damaged.insert(DamagedChunk {
                                chunk: e.id.to_hex(),
                                pack: pack.to_hex(),
                                reason: format!("at byte {}: {reason}", e.offset),
                            });
                        }
                    }
                }
            }
        }
    }
    // Index entries must point at sound records.
    let mut usable: HashSet<ChunkId> = HashSet::new();
    let mut stale_entries = 0u64;
    for (id, pack, offset, _) in &indexed {
        if sound.contains(&(*id, *pack, *offset)) || unread.contains(pack) {
            usable.insert(*id);
            continue;
        }
        let reason = if let Some(e) = bad_packs.get(pack) {
            format!("its pack is unreadable: {e}")
        } else if !packs_present.contains(pack) {
            // An index file can outlive a pack vacuum deleted (a paused
            // backup wrote it late); backups ignore such entries. It is
            // damage only if a backup needs the chunk and has no other
            // copy, which the check of every backup below reports.
            stale_entries += 1;
            continue;
        } else if damaged.iter().any(|d| d.chunk == id.to_hex() && d.pack == pack.to_hex()) {
            continue; // already listed
        } else {
            format!("the index points at byte {offset}, where the pack holds no such record")
        };
        damaged.insert(DamagedChunk { chunk: id.to_hex(), pack: pack.to_hex(), reason });
    }

    // Every backup's effective map must resolve to sound chunks.
    let mut backups_checked = 0;
    for id in &backups {
        match missing_in(backend, id, &usable, &options.cancel) {
            Ok(missing) => {
                backups_checked += 1;
                if !missing.is_empty() {
                    problems.push(format!("backup {id}: chunks without a sound copy: {}", missing.join(", ")));
                    damaged_backups.insert(id.clone());
                }
            }
            Err(StoreError::Cancelled) => return Err(StoreError::Cancelled),
            Err(e) => {
                problems.push(format!("backup {id}: {e}"));
                damaged_backups.insert(id.clone());
            }
        }
    }
    let mut damaged_points: BTreeSet<PointId> = BTreeSet::new();
    for p in catalog.points.iter().filter(|p| points.contains(&p.id)) {
        let mut missing: Vec<String> =
            point_chunks(p).iter().filter(|c| !usable.contains(c)).map(|c| c.to_hex()[..16].to_string()).collect();
        missing.sort();
        if !missing.is_empty() {
            missing.truncate(16);
            problems.push(format!(
                "restore point {}: attachment chunks without a sound copy: {}",
                p.id,
                missing.join(", ")
            ));
            damaged_points.insert(p.id.clone());
        }
        if p.disks.iter().any(|d| damaged_backups.contains(&d.backup)) {
            damaged_points.insert(p.id.clone());
        }
    }

    // Record damaged copies so backups stop deduplicating against them
    // (not in a read-only store, which is not written).
    for d in damaged.iter().filter(|_| !store.is_read_only()) {
        if let (Ok(c), Some(p)) = (d.chunk.parse::<ChunkId>(), PackId::from_hex(&d.pack)) {
            let key = damaged_key(&c, &p);
            if !crate::store::backend::exists(backend, &key).unwrap_or(true)
                && let Ok(w) = backend.create(&key)
            {
                let _ = w.commit();
            }
        }
    }
    let damaged_chunks: Vec<DamagedChunk> = damaged.into_iter().collect();
    let report = VerifyReport {
        ok: damaged_chunks.is_empty() && damaged_backups.is_empty() && damaged_points.is_empty() && problems.is_empty(),
        packs_checked: results.len() as u64,
        packs_total,
        sample_seed: filter.seed(),
        chunks_checked: distinct.len() as u64,
        records_checked,
        backups_checked,
        damaged_chunks,
        damaged_backups: damaged_backups.into_iter().collect(),
        damaged_points: damaged_points.into_iter().collect(),
        problems,
        unfinished_jobs: catalog.orphans.len() as u64,
        stale_index_entries: stale_entries,
        structure_only: false,
        seconds: started.elapsed().as_secs_f64(),
        traffic: store.backend().traffic().since(t0),
    };
    store.log_job("verify", &serde_json::to_value(&report).unwrap_or_default());
    Ok(report)
}

/// The largest ranged read of a pack's records: a 64 MiB pack is read in
/// eight requests, not one per record.
const VERIFY_READ: u64 = 8 << 20;

/// Reads each pack's index and checks its records (those in `scope`, or
/// all), as many packs at once as the store reads with connections.
/// Records are read in ranges of up to [`VERIFY_READ`]: memory is that
/// per connection.
fn check_packs(
    store: &Handle,
    keys: &[(String, u64)],
    scope: &Option<HashSet<ChunkId>>,
    gone: &(dyn Fn(&str, Option<std::io::ErrorKind>) -> bool + Sync),
    options: &VerifyOptions,
) -> Result<Vec<PackResult>> {
    let backend = store.backend();
    let threads = store.reads.connections.min(keys.len()).max(1);
    let next = AtomicUsize::new(0);
    let done = AtomicU64::new(0);
    let cancelled = AtomicBool::new(false);
    let total: u64 = keys.iter().map(|(_, size)| size).sum();
    let progress = std::sync::Mutex::new(options.progress.throttled(Operation::Verify, total));
    let results = std::thread::scope(|scope_| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope_.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((key, _)) = keys.get(i) else { break };
                        let Some(id) = PackId::from_key(key) else { continue };
                        let entries = match read_pack_index(backend, id, store.crypt()) {
                            Ok(e) => e,
                            Err(e) if gone(key, e.io_error_kind()) => continue,
                            Err(e) => {
                                out.push((id, Err(e.to_string())));
                                continue;
                            }
                        };
                        let entries: Vec<PackEntry> =
                            entries.into_iter().filter(|e| scope.as_ref().is_none_or(|s| s.contains(&e.id))).collect();
                        let tick = |n: u64| {
                            let d = done.fetch_add(n, Ordering::Relaxed) + n;
                            if let Ok(mut p) = progress.try_lock() {
                                p.tick(d);
                            }
                        };
                        match check_records(store, id, key, entries, &options.cancel, &tick) {
                            Some(checked) => out.push((id, Ok(checked))),
                            None => {
                                cancelled.store(true, Ordering::Relaxed);
                                return out;
                            }
                        }
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect::<Vec<PackResult>>()
    });
    if cancelled.load(Ordering::Relaxed) {
        return Err(StoreError::Cancelled);
    }
    if let Ok(mut p) = progress.lock() {
        p.finish();
    }
    Ok(results)
}

/// Checks `entries` of pack `id` (at `key`), reading records that lie
/// together in one ranged read; each record's verdict (`None`: sound).
/// `None` if cancelled.
fn check_records(
    store: &Handle,
    id: PackId,
    key: &str,
    entries: Vec<PackEntry>,
    cancel: &CancelToken,
    tick: &dyn Fn(u64),
) -> Option<Vec<(PackEntry, Option<String>)>> {
    let backend = store.backend();
    let sealed = crate::store::state::keyring::is_encrypted(store);
    let wants: Vec<Want> = entries
        .iter()
        .map(|e| Want { id: e.id, loc: Location { pack: id, offset: e.offset, length: e.length, plain_len: 0 } })
        .collect();
    let mut by_place: HashMap<(ChunkId, u64), PackEntry> = entries.into_iter().map(|e| ((e.id, e.offset), e)).collect();
    let mut checked = Vec::with_capacity(by_place.len());
    let (mut raw, mut plain, mut one) = (Vec::new(), Vec::new(), Vec::new());
    // Decoding a plain record checks its CRC; a sealed one's tag stands in
    // for it, so it is checked here.
    let mut verdict = |record: &[u8], e: &PackEntry| {
        (if sealed { check_crc(record) } else { Ok(()) })
            .and_then(|()| decode_record(record, e.id, &mut plain, store.crypt()))
            .err()
            .map(|r| r.to_string())
    };
    let mut alone = |e: &PackEntry, verdict: &mut dyn FnMut(&[u8], &PackEntry) -> Option<String>| {
        one.resize(e.length as usize, 0);
        match backend.read_at(key, &mut one, e.offset) {
            Err(err) => Some(format!("unreadable: {err}")),
            Ok(()) => verdict(&one, e),
        }
    };
    for fetch in coalesce(&wants, 1 << 20, VERIFY_READ) {
        if cancel.is_cancelled() {
            return None;
        }
        raw.resize(fetch.len() as usize, 0);
        let read = backend.read_at(key, &mut raw, fetch.start);
        for m in &fetch.members {
            let Some(e) = by_place.remove(&(m.id, m.loc.offset)) else { continue };
            let v = match &read {
                // A range fails as a whole (a record claimed past the
                // pack's end, a dropped connection): each record in it is
                // read alone, so the verdicts name the records at fault.
                Err(_) => alone(&e, &mut verdict),
                Ok(()) => {
                    let at = (m.loc.offset - fetch.start) as usize;
                    verdict(&raw[at..at + m.loc.length as usize], &e)
                }
            };
            tick(u64::from(e.length));
            checked.push((e, v));
        }
    }
    // A chunk stored twice in one pack is planned once; its other copies
    // are read alone.
    let mut rest: Vec<PackEntry> = by_place.into_values().collect();
    rest.sort_by_key(|e| e.offset);
    for e in rest {
        if cancel.is_cancelled() {
            return None;
        }
        let v = alone(&e, &mut verdict);
        tick(u64::from(e.length));
        checked.push((e, v));
    }
    Some(checked)
}

/// Up to 16 chunks (short hex) of backup `id`'s effective map that have no
/// sound copy; walking the map checks every manifest of its chain.
fn missing_in(
    backend: &dyn crate::store::backend::Backend,
    id: &BackupId,
    usable: &HashSet<ChunkId>,
    cancel: &CancelToken,
) -> Result<Vec<String>> {
    let mut missing = BTreeSet::new();
    let mut cursor = ChainCursor::open(backend, id)?;
    while let Some((r, _)) = cursor.next_run()? {
        if cancel.is_cancelled() {
            return Err(StoreError::Cancelled);
        }
        if let Resolved::Data(c) = r
            && !usable.contains(&c)
            && missing.len() < 16
        {
            missing.insert(c.to_hex()[..16].to_string());
        }
    }
    Ok(missing.into_iter().collect())
}

/// The chunks backup `id`'s effective map names (its whole chain checked).
fn chunks_of(
    backend: &dyn crate::store::backend::Backend,
    id: &BackupId,
    cancel: &CancelToken,
) -> Result<HashSet<ChunkId>> {
    let mut set = HashSet::new();
    let mut cursor = ChainCursor::open(backend, id)?;
    while let Some((r, _)) = cursor.next_run()? {
        if cancel.is_cancelled() {
            return Err(StoreError::Cancelled);
        }
        if let Resolved::Data(c) = r {
            set.insert(c);
        }
    }
    Ok(set)
}
