//! Verification: every pack record, every index entry, every manifest.
//!
//! Reads every pack (its index and each record: CRC, decompression, BLAKE3
//! against the id), checks that each global index entry points at a sound
//! record, checks each manifest's checksum and that every chunk of each
//! backup's effective map has a sound copy, and names the backups a damaged
//! chunk affects. Damaged copies are recorded under `damaged/`, so later
//! backups store those chunks again instead of deduplicating against them.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Instant;

use serde::Serialize;

use super::Store;
use super::backend::LockMode;
use super::chunk::{ChunkId, decode_record};
use super::error::Result;
use super::index::{damaged_key, decode_index};
use super::manifest::{ChainCursor, Resolved, id_from_key};
use super::pack::{PackEntry, PackId, read_pack_index};

/// A stored copy of a chunk that failed verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, PartialOrd, Ord)]
pub struct DamagedChunk {
    pub chunk: String,
    pub pack: String,
    pub reason: String,
}

/// What verify found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifyReport {
    /// No damage of any kind.
    pub ok: bool,
    pub packs_checked: u64,
    pub chunks_checked: u64,
    pub backups_checked: u64,
    /// Copies that failed (a chunk with another sound copy is still restorable).
    pub damaged_chunks: Vec<DamagedChunk>,
    /// Backups that cannot be restored in full.
    pub damaged_backups: Vec<String>,
    /// Other damage: unreadable packs, index files or manifests, missing chunks.
    pub problems: Vec<String>,
    pub seconds: f64,
}

impl Store {
    /// Verifies the whole store; see the module documentation.
    pub fn verify(&self) -> Result<VerifyReport> {
        let started = Instant::now();
        let _lock = self.lock(LockMode::Shared, false)?;
        let backend = self.backend();
        let mut problems = Vec::new();

        // Index files one by one, so one bad file does not hide the rest.
        let mut indexed: Vec<(ChunkId, PackId, u64, u32)> = Vec::new();
        for key in backend.list("index").unwrap_or_default() {
            match backend
                .read_all(&key)
                .map_err(|e| e.to_string())
                .and_then(|b| decode_index(&b).map_err(|(o, r)| format!("byte {o}: {r}")))
            {
                Ok(entries) => indexed
                    .extend(entries.iter().map(|e| (e.id, e.location.pack, e.location.offset, e.location.length))),
                Err(e) => problems.push(format!("index file {}: {e}", backend.describe(&key).display())),
            }
        }

        // Every pack, on every core.
        let pack_keys: Vec<String> = backend.list("packs").unwrap_or_default();
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let next = std::sync::atomic::AtomicUsize::new(0);
        type PackResult = (PackId, std::result::Result<Vec<(PackEntry, Option<String>)>, String>);
        let results: Vec<PackResult> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut out = Vec::new();
                        let (mut plain, mut record) = (Vec::new(), Vec::new());
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(key) = pack_keys.get(i) else { break };
                            let Some(id) = PackId::from_key(key) else { continue };
                            let entries = match read_pack_index(backend, id) {
                                Ok(e) => e,
                                Err(e) => {
                                    out.push((id, Err(e.to_string())));
                                    continue;
                                }
                            };
                            let mut checked = Vec::with_capacity(entries.len());
                            for e in entries {
                                record.resize(e.length as usize, 0);
                                let verdict = match backend.read_at(key, &mut record, e.offset) {
                                    Err(err) => Some(format!("unreadable: {err}")),
                                    Ok(()) => decode_record(&record, e.id, &mut plain).err().map(|r| r.to_string()),
                                };
                                checked.push((e, verdict));
                            }
                            out.push((id, Ok(checked)));
                        }
                        out
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
        });

        let mut damaged: BTreeSet<DamagedChunk> = BTreeSet::new();
        let mut sound: HashSet<(ChunkId, PackId, u64)> = HashSet::new();
        let mut packs_present: HashSet<PackId> = HashSet::new();
        let mut bad_packs: HashMap<PackId, String> = HashMap::new();
        let mut chunks_checked = 0u64;
        for (pack, result) in &results {
            packs_present.insert(*pack);
            match result {
                Err(e) => {
                    problems.push(format!("pack {pack}: {e}"));
                    bad_packs.insert(*pack, e.clone());
                }
                Ok(entries) => {
                    for (e, verdict) in entries {
                        chunks_checked += 1;
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
        for (id, pack, offset, _) in &indexed {
            if sound.contains(&(*id, *pack, *offset)) {
                usable.insert(*id);
                continue;
            }
            let reason = if let Some(e) = bad_packs.get(pack) {
                format!("its pack is unreadable: {e}")
            } else if !packs_present.contains(pack) {
                "its pack is missing".to_string()
            } else if damaged.iter().any(|d| d.chunk == id.to_hex() && d.pack == pack.to_hex()) {
                continue; // already listed
            } else {
                format!("the index points at byte {offset}, where the pack holds no such record")
            };
            damaged.insert(DamagedChunk { chunk: id.to_hex(), pack: pack.to_hex(), reason });
        }

        // Every backup's effective map must resolve to sound chunks.
        let mut damaged_backups = Vec::new();
        let manifests = backend.list("manifests").unwrap_or_default();
        let mut backups_checked = 0;
        for key in &manifests {
            let Some(id) = id_from_key(key) else { continue };
            backups_checked += 1;
            let mut missing: Vec<ChunkId> = Vec::new();
            let walk = (|| -> Result<()> {
                let mut cursor = ChainCursor::open(backend, id)?;
                while let Some((r, _)) = cursor.next_run()? {
                    if let Resolved::Data(c) = r
                        && !usable.contains(&c)
                        && missing.len() < 16
                    {
                        missing.push(c);
                    }
                }
                Ok(())
            })();
            match walk {
                Err(e) => {
                    problems.push(format!("backup {id}: {e}"));
                    damaged_backups.push(id.to_string());
                }
                Ok(()) if !missing.is_empty() => {
                    let list: Vec<String> = missing.iter().map(|c| c.to_hex()[..16].to_string()).collect();
                    problems.push(format!("backup {id}: chunks without a sound copy: {}", list.join(", ")));
                    damaged_backups.push(id.to_string());
                }
                Ok(()) => {}
            }
        }

        // Record damaged copies so backups stop deduplicating against them.
        for d in &damaged {
            if let (Ok(c), Some(p)) = (d.chunk.parse::<ChunkId>(), PackId::from_hex(&d.pack)) {
                let key = damaged_key(&c, &p);
                if !backend.exists(&key)
                    && let Ok(w) = backend.create(&key)
                {
                    let _ = w.commit();
                }
            }
        }
        let damaged_chunks: Vec<DamagedChunk> = damaged.into_iter().collect();
        let report = VerifyReport {
            ok: damaged_chunks.is_empty() && damaged_backups.is_empty() && problems.is_empty(),
            packs_checked: results.len() as u64,
            chunks_checked,
            backups_checked,
            damaged_chunks,
            damaged_backups,
            problems,
            seconds: started.elapsed().as_secs_f64(),
        };
        self.log_job("verify", &serde_json::to_value(&report).unwrap_or_default());
        Ok(report)
    }
}
