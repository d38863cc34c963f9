//! Vacuum: garbage collection and compaction.
//!
//! Under the exclusive lock (taken before anything is read, so a backup
//! that committed while vacuum waited for the lock is seen):
//!
//! 1. mark: read every committed manifest, and every manifest a committed
//!    backup's chain reaches (each checked end to end; any damage stops
//!    vacuum before it changes anything), and every committed restore
//!    point's attachments, and collect the chunk ids they name: one set in
//!    memory, no per-chunk system calls;
//! 2. plan: from each pack's own index (one read per pack), choose one
//!    sound copy of every live chunk; packs with no chosen copy are to be
//!    deleted, packs whose dead bytes exceed `threshold` of their live bytes
//!    are to be rewritten;
//! 3. copy the live records of packs being rewritten into new packs
//!    (checking each record as it is copied), sealed and flushed;
//! 4. commit one new index file naming every live chunk's copy;
//! 5. only then delete the old index files (first, so no committed index
//!    names a pack about to go), the emptied and rewritten packs, leftovers
//!    in `tmp/`, manifests of jobs that never committed (their restore
//!    point is missing, and no committed chain reaches them), and damage
//!    markers of copies that no longer exist.
//!
//! Cancellation is honoured until step 4; once the new index is committed
//! vacuum finishes its deletions (a cancel then would only leave garbage).
//!
//! A crash before step 4 leaves the old state plus unreferenced new packs; a
//! crash in step 5 leaves unreferenced packs and files. Every committed
//! backup restores at every instant.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use serde::Serialize;

use super::Store;
use super::backend::LockMode;
use super::chain::ChainWalk;
use super::chunk::{ChunkId, RECORD_HEADER, decode_header, decode_record};
use super::error::{Result, StoreError};
use super::id::BackupId;
use super::index::{Index, IndexEntry, Location, write_index_file};
use super::manifest::{ManifestReader, Slot, manifest_key};
use super::pack::{PackEntry, PackId, PackWriter, read_pack_index};
use crate::cancel::CancelToken;
use crate::progress::{Operation, ProgressSink};

/// How to vacuum.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VacuumOptions {
    /// Rewrite a pack when its dead bytes exceed this share of its live
    /// bytes (default 0.25: afterwards packs hold at most 1.25 × the live data).
    pub threshold: f64,
    /// Wait for the exclusive lock instead of failing with `StoreBusy`.
    pub wait: bool,
    /// Checked between manifests and records until the new index commits.
    pub cancel: CancelToken,
    /// Receives progress: bytes of packs planned and copied.
    pub progress: ProgressSink,
}

impl Default for VacuumOptions {
    fn default() -> Self {
        VacuumOptions {
            threshold: 0.25,
            wait: false,
            cancel: CancelToken::default(),
            progress: ProgressSink::default(),
        }
    }
}

/// What vacuum did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct VacuumReport {
    /// Distinct chunks committed backups and points need.
    pub live_chunks: u64,
    /// Records no committed backup needs (and duplicates of live ones).
    pub dead_records: u64,
    /// Packs before vacuum.
    pub packs_before: u64,
    /// Packs deleted (emptied or rewritten).
    pub packs_deleted: u64,
    /// Packs whose live records were copied to new packs.
    pub packs_rewritten: u64,
    /// New packs written.
    pub packs_written: u64,
    /// Live chunks whose every stored copy is damaged (left as they are).
    pub lost_chunks: u64,
    /// Manifests of unfinished jobs deleted.
    pub unfinished_jobs_removed: u64,
    /// Bytes the store occupied before.
    pub bytes_before: u64,
    /// And after.
    pub bytes_after: u64,
    /// The difference.
    pub bytes_reclaimed: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

struct PackPlan {
    id: PackId,
    entries: Vec<PackEntry>,
    live_bytes: u64,
    dead_bytes: u64,
}

impl Store {
    /// Reclaims space; see the module documentation for the steps.
    pub fn vacuum(&self, options: &VacuumOptions) -> Result<VacuumReport> {
        let started = Instant::now();
        let _lock = self.lock(LockMode::Exclusive, options.wait)?;
        let backend = self.backend();
        let total = |what| super::backend::total_bytes(backend, "").map_err(StoreError::io(backend.describe(""), what));
        let bytes_before = total("measure")?;

        // 1. Mark: every manifest a committed backup's chain reaches, and
        //    every committed point's attachments.
        let catalog = self.catalog()?.strict()?;
        let cancelled = || options.cancel.is_cancelled();
        let mut live: HashSet<ChunkId> = HashSet::new();
        let mut reached: HashSet<BackupId> = HashSet::new();
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
                if cancelled() {
                    return Err(StoreError::Cancelled);
                }
            }
        }
        for p in &catalog.points {
            live.extend(p.attachments.iter().flat_map(|a| a.chunks.iter().flatten().copied()));
        }
        let unfinished: Vec<BackupId> = catalog.orphans.iter().filter(|id| !reached.contains(*id)).cloned().collect();

        // 2. Plan: one sound copy per live chunk, preferring fuller packs so
        //    that fewer records move.
        let index = Index::load(backend)?;
        let old_index_files: Vec<String> = index.files().to_vec();
        let mut packs = Vec::new();
        let mut unreadable = Vec::new();
        for key in
            super::backend::list_keys(backend, "packs").map_err(StoreError::io(backend.describe("packs"), "list"))?
        {
            let Some(id) = PackId::from_key(&key) else { continue };
            match read_pack_index(backend, id) {
                Ok(entries) => {
                    let live_bytes = entries
                        .iter()
                        .filter(|e| live.contains(&e.id) && !index.is_damaged(&e.id, &id))
                        .map(|e| u64::from(e.length))
                        .sum();
                    packs.push(PackPlan { id, entries, live_bytes, dead_bytes: 0 });
                }
                Err(_) => unreadable.push(id),
            }
        }
        packs.sort_by(|a, b| b.live_bytes.cmp(&a.live_bytes).then(a.id.cmp(&b.id)));
        // Copies the committed index names (records a killed backup left in
        // its packs are garbage), with their plain lengths.
        let indexed: HashMap<(ChunkId, PackId, u64), u32> = index
            .entries()
            .iter()
            .map(|e| ((e.id, e.location.pack, e.location.offset), e.location.plain_len))
            .collect();
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
        let lost: Vec<ChunkId> = live.iter().filter(|c| !chosen.contains_key(c)).copied().collect();

        // 3. Rewrite packs with too much dead weight; note packs to delete.
        let mut locations: HashMap<ChunkId, Location> = chosen
            .iter()
            .map(|(c, (p, e, plain_len))| {
                (*c, Location { pack: *p, offset: e.offset, length: e.length, plain_len: *plain_len })
            })
            .collect();
        let mut delete = Vec::new();
        let mut rewritten = 0u64;
        let mut written = 0u64;
        let mut writer: Option<PackWriter> = None;
        let mut pending: Vec<(ChunkId, PackEntry)> = Vec::new();
        let (mut record, mut plain) = (Vec::new(), Vec::new());
        let seal = |w: &mut Option<PackWriter>,
                    pending: &mut Vec<(ChunkId, PackEntry)>,
                    locations: &mut HashMap<ChunkId, Location>|
         -> Result<()> {
            if let Some(pack) = w.take() {
                let key = pack.id().key();
                let (id, _) = pack.seal().map_err(StoreError::io(backend.describe(&key), "seal pack"))?;
                for (c, e) in pending.drain(..) {
                    if let Some(l) = locations.get_mut(&c) {
                        *l = Location { pack: id, offset: e.offset, length: e.length, plain_len: l.plain_len };
                    }
                }
            }
            Ok(())
        };
        let total_copy: u64 = packs
            .iter()
            .filter(|p| p.live_bytes > 0 && (p.dead_bytes as f64) > options.threshold * p.live_bytes as f64)
            .map(|p| p.live_bytes)
            .sum();
        let mut progress = options.progress.throttled(Operation::Vacuum, total_copy);
        let mut copied = 0u64;
        for p in &packs {
            if p.live_bytes == 0 {
                delete.push(p.id);
                continue;
            }
            if (p.dead_bytes as f64) <= options.threshold * p.live_bytes as f64 {
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
                progress.tick(copied);
                record.resize(e.length as usize, 0);
                let sound = backend.read_at(&key, &mut record, e.offset).is_ok()
                    && decode_record(&record, e.id, &mut plain).is_ok();
                if !sound {
                    copied_all = false;
                    continue;
                }
                let h = decode_header(&record)
                    .map_err(|r| StoreError::corrupt(backend.describe(&key), "record", e.offset, r.to_string()))?;
                if writer.is_none() {
                    writer = Some(PackWriter::create(backend)?);
                    written += 1;
                }
                let w = writer.as_mut().ok_or_else(|| StoreError::Invalid("no pack".into()))?;
                let new = w
                    .add(e.id, h.compression, h.plain_len, &record[RECORD_HEADER..])
                    .map_err(StoreError::io(backend.describe(&w.id().key()), "write pack"))?;
                pending.push((e.id, new));
                if w.bytes_written() >= self.config.pack_size {
                    seal(&mut writer, &mut pending, &mut locations)?;
                }
            }
            if copied_all {
                rewritten += 1;
                delete.push(p.id);
            }
        }
        seal(&mut writer, &mut pending, &mut locations)?;
        if cancelled() {
            return Err(StoreError::Cancelled);
        }
        progress.finish();

        // 4. The new index: every live chunk's copy.
        let mut entries: Vec<IndexEntry> =
            locations.into_iter().map(|(id, location)| IndexEntry { id, location }).collect();
        // Chunks with only damaged copies keep their old entries, and their
        // packs are kept.
        let lost_set: HashSet<ChunkId> = lost.iter().copied().collect();
        entries.extend(index.entries().iter().filter(|e| lost_set.contains(&e.id)).copied());
        let referenced: HashSet<PackId> = entries.iter().map(|e| e.location.pack).collect();
        let delete: Vec<PackId> = delete.into_iter().filter(|p| !referenced.contains(p)).collect();
        // With nothing live there is nothing to name: no empty index file.
        if !entries.is_empty() {
            write_index_file(backend, &mut entries)?;
        }

        // 5. Delete: old index files first, then packs and leftovers.
        let del = |k: &str| backend.delete(k).map_err(StoreError::io(backend.describe(k), "delete"));
        for k in &old_index_files {
            del(k)?;
        }
        for p in &delete {
            del(&p.key())?;
        }
        for k in super::backend::list_keys(backend, "tmp").map_err(StoreError::io(backend.describe("tmp"), "list"))? {
            del(&k)?;
        }
        for id in &unfinished {
            del(&manifest_key(id))?;
        }
        // Generations a merge replaced: nothing reads them any more.
        for key in &catalog.superseded {
            del(key)?;
        }
        let deleted: HashSet<PackId> = delete.iter().copied().collect();
        for k in super::backend::list_keys(backend, "damaged")
            .map_err(StoreError::io(backend.describe("damaged"), "list"))?
        {
            let gone = k.rsplit('.').next().and_then(PackId::from_hex).is_some_and(|p| deleted.contains(&p));
            if gone {
                del(&k)?;
            }
        }
        let bytes_after = total("measure")?;
        let dead_records = packs.iter().map(|p| p.entries.len() as u64).sum::<u64>() - chosen.len() as u64;
        let report = VacuumReport {
            live_chunks: live.len() as u64,
            dead_records,
            packs_before: (packs.len() + unreadable.len()) as u64,
            packs_deleted: delete.len() as u64,
            packs_rewritten: rewritten,
            packs_written: written,
            lost_chunks: lost.len() as u64,
            unfinished_jobs_removed: unfinished.len() as u64,
            bytes_before,
            bytes_after,
            bytes_reclaimed: bytes_before.saturating_sub(bytes_after),
            seconds: started.elapsed().as_secs_f64(),
        };
        self.log_job("vacuum", &serde_json::to_value(&report).unwrap_or_default());
        Ok(report)
    }
}
