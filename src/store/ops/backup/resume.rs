//! Resuming an interrupted backup: the packs a killed or cancelled job
//! sealed (and uploaded) but never named in an index file are offered to
//! the next job's deduplication, and the copies it uses are indexed before
//! its commit, in the normal write order. A 2 TB first full that dies at
//! 90 % then uploads the last 10 % and what was in flight, not all of it
//! again.
//!
//! What a killed job leaves: every pack it sealed is whole (records, its
//! own index, its trailer); index files are written every
//! [`crate::store::ops::backup::packer::Limits::index_flush`] sealed entries and at the end,
//! so only the tail since the last one is unnamed: these are the *orphan*
//! packs, present in `packs/`, named by no index file, held by no
//! condemnation record.
//!
//! Safe beside vacuum for the reason a backup's own new packs are. The
//! condemnation records are read after the job's lease is taken and before
//! `packs/` is listed (vacuum's second phase deletes a record's packs
//! before the record, so a record this job missed had deleted its packs
//! before the listing). A pack condemned by a record this job read is
//! skipped; one condemned by a later record was condemned while this
//! job's lease was held, so that record's lease list names this job and
//! nothing is deleted until it ends; its next mark then finds the commit
//! needing the pack and rescues it (docs/store-format.md, "Deleting on
//! shared storage").
//!
//! Checked before use: the pack's header, trailer and index CRC (in an
//! encrypted store, the index's seal, which binds the pack's key), and
//! that its records lie end to end as the pack writer lays them. Records
//! are not read back, as a backup never reads back the indexed copies it
//! deduplicates against: every restore verifies each chunk it reads, and
//! verify finds a bad copy, which later backups then store again.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::error::Result;
use crate::store::format::index_file::{IndexEntry, Location};
use crate::store::format::pack::{PACK_HEADER, PackEntry, read_pack_index};
use crate::store::format::record::{MAX_RECORD, RECORD_HEADER};
use crate::store::model::id::ChunkId;
use crate::store::model::id::PackId;
use crate::store::state::handle::Handle;
use crate::store::state::index::Index;

/// Orphan copies remembered at most: a million, about 100 MiB, more than
/// the unindexed tail of several interrupted jobs (index files are written
/// every 65,536 records).
const MAX_ORPHAN_COPIES: usize = 1 << 20;

/// The orphan packs' records, by chunk: the first sound copy of each.
#[derive(Default)]
pub(super) struct Orphans {
    copies: HashMap<ChunkId, (PackId, PackEntry)>,
    /// Chunks this job took from orphan packs so far.
    adopted: AtomicU64,
}

impl Orphans {
    /// The entry to index when this job deduplicates `id` against an
    /// orphan copy; `plain_len` is the length of the chunk just hashed,
    /// which a record of that id holds (its id is the hash of those bytes).
    pub(super) fn entry(&self, id: &ChunkId, plain_len: u32) -> Option<IndexEntry> {
        let (pack, e) = self.copies.get(id)?;
        Some(IndexEntry { id: *id, location: Location { pack: *pack, offset: e.offset, length: e.length, plain_len } })
    }

    /// Counts a chunk this job took over (once per chunk).
    pub(super) fn count(&self) {
        self.adopted.fetch_add(1, Ordering::Relaxed);
    }

    /// Chunks taken from orphan packs so far.
    pub(super) fn adopted(&self) -> u64 {
        self.adopted.load(Ordering::Relaxed)
    }
}

/// Whether a pack index describes what the pack writer lays down: records
/// end to end from the header, each of a possible length.
fn contiguous(entries: &[PackEntry]) -> bool {
    let mut at = PACK_HEADER;
    for e in entries {
        if e.offset != at || !(RECORD_HEADER as u32..=MAX_RECORD).contains(&e.length) {
            return false;
        }
        at += u64::from(e.length);
    }
    true
}

/// The global index avoiding condemned packs (as
/// [`Handle::index_avoiding_condemned`]) and the orphan packs' records.
/// Call it holding the job's lease. Costs a listing and, per orphan
/// pack, the reads of its trailer and index.
pub(super) fn index_and_orphans(store: &Handle) -> Result<(Index, Orphans)> {
    let backend = store.backend();
    let (index, present, condemned) = store.index_and_packs()?;
    let named: HashSet<PackId> = index.entries().iter().map(|e| e.location.pack).collect();
    let mut candidates: Vec<PackId> =
        present.iter().filter(|p| !named.contains(p) && !condemned.contains(p)).copied().collect();
    candidates.sort();
    let mut orphans = Orphans::default();
    for pack in candidates {
        // Deleted since the listing (it was garbage), damaged, or not
        // one of ours: skipped, and its chunks are stored again.
        let Ok(entries) = read_pack_index(backend, pack, store.crypt()) else { continue };
        if !contiguous(&entries) {
            continue;
        }
        for e in entries {
            // Memory stays bounded (about 100 bytes a copy): past the
            // cap, the rest is stored again as it would have been.
            if orphans.copies.len() >= MAX_ORPHAN_COPIES {
                break;
            }
            if !index.is_damaged(&e.id, &pack) && !index.contains(&e.id) {
                orphans.copies.entry(e.id).or_insert((pack, e));
            }
        }
    }
    Ok((index, orphans))
}
