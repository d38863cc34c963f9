//! Backup chains: an incremental's parent, its parent's parent, down to a
//! full backup. The one place chains are walked.
//!
//! [`ChainWalk`] follows parent links through headers alone (listing,
//! prune, the chain-length cap); [`ChainCursor`] opens every manifest of the
//! chain (each checked end to end) and walks the effective map. Both apply
//! the same [`ChainCheck`]: a link may not loop, the chain may not be
//! deeper than [`MAX_DEPTH`], every link must have the size and chunk size
//! of the backup at the top, and a missing parent is damage, not a missing
//! backup. A damaged or hostile store therefore gets a `Corrupt` error
//! naming the manifest, never a hang or a wrong map.

use std::collections::HashSet;

use crate::store::backend::Backend;
use crate::store::model::id::ChunkId;
use crate::store::error::{Result, StoreError};
use crate::store::model::id::BackupId;
use crate::store::format::manifest::{
    Kind, MERGED, ManifestHeader, ManifestReader, ManifestWriter, Slot, manifest_key, read_header,
};

/// The deepest chain accepted. Backups merge at 14 by default; a chain
/// this deep means a damaged store.
pub const MAX_DEPTH: usize = 10_000;

/// The rules every link of a chain must keep, applied link by link.
pub(crate) struct ChainCheck {
    seen: HashSet<BackupId>,
    top: Option<(BackupId, u64, u32)>,
}

impl ChainCheck {
    pub(crate) fn new() -> ChainCheck {
        ChainCheck { seen: HashSet::new(), top: None }
    }

    /// Checks the next link's header; returns the parent to visit next.
    pub(crate) fn step(&mut self, backend: &dyn Backend, h: &ManifestHeader) -> Result<Option<BackupId>> {
        let path = || backend.describe(&manifest_key(&h.id));
        if !self.seen.insert(h.id.clone()) {
            return Err(StoreError::corrupt(
                path(),
                "manifest header",
                12,
                format!("the backup chain loops at {}", h.id),
            ));
        }
        if self.seen.len() > MAX_DEPTH {
            return Err(StoreError::corrupt(path(), "manifest header", 12, "the backup chain does not end"));
        }
        match &self.top {
            None => self.top = Some((h.id.clone(), h.virtual_size, h.chunk_size)),
            Some((top, size, chunk)) if (*size, *chunk) != (h.virtual_size, h.chunk_size) => {
                return Err(StoreError::corrupt(
                    path(),
                    "manifest header",
                    12,
                    format!(
                        "{} bytes in chunks of {}, but its descendant {top} has {size} in chunks of {chunk}",
                        h.virtual_size, h.chunk_size
                    ),
                ));
            }
            Some(_) => {}
        }
        Ok(match h.kind {
            Kind::Full => None,
            Kind::Incremental => h.parent.clone(),
        })
    }

    /// A parent named by `child` is missing: damage in the store.
    fn missing_parent(backend: &dyn Backend, child: &BackupId, parent: &BackupId) -> StoreError {
        StoreError::corrupt(
            backend.describe(&manifest_key(child)),
            "manifest header",
            12,
            format!("its parent {parent} is missing"),
        )
    }
}

/// Opens the next link: a missing parent (not the first) is corruption.
fn open_link<T>(
    backend: &dyn Backend,
    child: Option<&BackupId>,
    id: &BackupId,
    open: impl FnOnce(&BackupId) -> Result<T>,
) -> Result<T> {
    match (open(id), child) {
        (Err(StoreError::NoSuchBackup(_)), Some(child)) => Err(ChainCheck::missing_parent(backend, child, id)),
        (r, _) => r,
    }
}

/// The headers of a backup's chain, newest first, by parent links alone.
pub(crate) struct ChainWalk<'a> {
    backend: &'a dyn Backend,
    next: Option<BackupId>,
    child: Option<BackupId>,
    check: ChainCheck,
}

impl<'a> ChainWalk<'a> {
    /// Starts at backup `id`.
    pub(crate) fn new(backend: &'a dyn Backend, id: &BackupId) -> ChainWalk<'a> {
        ChainWalk { backend, next: Some(id.clone()), child: None, check: ChainCheck::new() }
    }
}

impl Iterator for ChainWalk<'_> {
    type Item = Result<ManifestHeader>;

    fn next(&mut self) -> Option<Self::Item> {
        let id = self.next.take()?;
        let step = (|| {
            let h = open_link(self.backend, self.child.as_ref(), &id, |id| read_header(self.backend, id))?;
            let parent = self.check.step(self.backend, &h)?;
            Ok((h, parent))
        })();
        match step {
            Ok((h, parent)) => {
                self.next = parent;
                self.child = Some(id);
                Some(Ok(h))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

/// What a slot of a backup's effective map holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// This chunk.
    Data(ChunkId),
    /// Zeros.
    Zero,
}

/// Walks a backup's effective map: its own manifest over its parent's,
/// down the chain to a full manifest, run by run.
pub struct ChainCursor<'a> {
    backend: &'a dyn Backend,
    levels: Vec<(ManifestReader<'a>, Option<(Slot, u64)>)>,
}

impl<'a> ChainCursor<'a> {
    /// Opens the chain of backup `id` (every manifest is checked end to end).
    pub fn open(backend: &'a dyn Backend, id: &BackupId) -> Result<ChainCursor<'a>> {
        let mut levels: Vec<(ManifestReader<'a>, Option<(Slot, u64)>)> = Vec::new();
        let mut check = ChainCheck::new();
        let mut next = Some(id.clone());
        while let Some(id) = next {
            let child = levels.last().map(|(r, _)| r.header().id.clone());
            let reader = open_link(backend, child.as_ref(), &id, |id| ManifestReader::open(backend, id))?;
            next = check.step(backend, reader.header())?;
            levels.push((reader, None));
        }
        Ok(ChainCursor { backend, levels })
    }

    /// The header of the backup whose map this is.
    pub fn header(&self) -> &ManifestHeader {
        self.levels[0].0.header()
    }

    /// Ids of the chain, newest first.
    pub fn chain(&self) -> Vec<BackupId> {
        self.levels.iter().map(|(r, _)| r.header().id.clone()).collect()
    }

    fn peek(&mut self, level: usize) -> Result<Option<(Slot, u64)>> {
        let (reader, pending) = &mut self.levels[level];
        if pending.is_none() {
            *pending = reader.next_run()?;
        }
        Ok(*pending)
    }

    fn short_parent(&self, level: usize) -> StoreError {
        let h = self.levels[level].0.header();
        StoreError::corrupt(
            self.backend.describe(&manifest_key(&h.id)),
            "manifest",
            0,
            "the manifest maps fewer slots than its descendant",
        )
    }

    /// The next run of the effective map: what it holds and how many slots.
    pub fn next_run(&mut self) -> Result<Option<(Resolved, u64)>> {
        self.next_run_limited(u64::MAX)
    }

    /// Like [`ChainCursor::next_run`], but at most `max` slots long.
    pub fn next_run_limited(&mut self, max: u64) -> Result<Option<(Resolved, u64)>> {
        let mut len = max.max(1);
        let mut level = 0;
        let resolved = loop {
            let Some((slot, n)) = self.peek(level)? else {
                if level == 0 {
                    return Ok(None);
                }
                return Err(self.short_parent(level));
            };
            len = len.min(n);
            match slot {
                Slot::Data(id) => break Resolved::Data(id),
                Slot::Zero => break Resolved::Zero,
                Slot::Inherit if level + 1 < self.levels.len() => level += 1,
                // The reader refuses inherit records in a full manifest, and
                // only a full manifest ends a chain.
                Slot::Inherit => return Err(self.short_parent(level)),
            }
        };
        for (_, pending) in &mut self.levels[..=level] {
            if let Some((_, n)) = pending {
                *n -= len;
                if *n == 0 {
                    *pending = None;
                }
            }
        }
        // Levels below `level` that were not consulted still cover these
        // slots: advance them too.
        for l in level + 1..self.levels.len() {
            let mut left = len;
            while left > 0 {
                let Some((_, n)) = self.peek(l)? else {
                    return Err(self.short_parent(l));
                };
                let take = n.min(left);
                if let Some((_, m)) = &mut self.levels[l].1 {
                    *m -= take;
                    if *m == 0 {
                        self.levels[l].1 = None;
                    }
                }
                left -= take;
            }
        }
        Ok(Some((resolved, len)))
    }
}

/// What [`write_merged`] wrote.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Merged {
    /// Backups in the chain that was folded (1 for a full backup).
    pub chain_length: usize,
    /// Slots in the backup's map.
    pub slots: u64,
    /// Of them, slots that name a chunk.
    pub data_slots: u64,
    /// False when the backup was full already and nothing was written.
    pub written: bool,
}

/// Folds backup `id`'s chain into a full map, written beside the old
/// manifest as its merged generation: synthetic merge, which merge, prune
/// and a backup over the chain-length cap share. The caller holds the
/// maintenance lease.
pub(crate) fn write_merged(backend: &dyn Backend, id: &BackupId) -> Result<Merged> {
    let mut cursor = ChainCursor::open(backend, id)?;
    let chain_length = cursor.chain().len();
    let mut header = cursor.header().clone();
    let slots = header.slots();
    if header.kind == Kind::Full {
        return Ok(Merged { chain_length, slots, data_slots: 0, written: false });
    }
    header.kind = Kind::Full;
    header.parent = None;
    // Beside the old manifest, never over it: readers take the newest
    // generation, and vacuum removes the superseded one.
    let mut writer = ManifestWriter::create_gen(backend, &header, MERGED)?;
    let mut data_slots = 0;
    while let Some((r, n)) = cursor.next_run()? {
        match r {
            Resolved::Data(c) => {
                writer.push(Slot::Data(c), n)?;
                data_slots += n;
            }
            Resolved::Zero => writer.push(Slot::Zero, n)?,
        }
    }
    drop(cursor);
    match writer.commit() {
        // Another merge of the same backup got there first: the same map.
        Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {}
        other => other?,
    }
    Ok(Merged { chain_length, slots, data_slots, written: true })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Guid;
    use crate::store::backend::LocalDir;
    use crate::store::format::manifest::{ChangeSource, ManifestWriter, SourceInfo};
    use crate::store::model::time::Moment;

    fn id(n: u64) -> BackupId {
        format!("2026010{n}T000000.000000Z-0000000{n}").parse().unwrap()
    }

    /// Writes a hand-made manifest: `parent` decides full or incremental,
    /// every slot zero (full) or inherited (incremental).
    fn manifest(dir: &LocalDir, me: &BackupId, parent: Option<&BackupId>, size: u64) {
        let header = ManifestHeader {
            id: me.clone(),
            name: "d".into(),
            kind: if parent.is_some() { Kind::Incremental } else { Kind::Full },
            parent: parent.cloned(),
            created: Moment::from_unix(0, 0),
            chunk_size: 64 << 10,
            virtual_size: size,
            change_source: ChangeSource::None,
            source: SourceInfo {
                format: "raw".into(),
                subformat: "fixed".into(),
                logical_sector_size: 512,
                physical_sector_size: 512,
                disk_id: Guid::NIL,
                identity: Guid::NIL,
                parent_identity: None,
                file_name: "d".into(),
            },
            change_id: None,
            point: None,
            disk: None,
        };
        let mut w = ManifestWriter::create(dir, &header).unwrap();
        let slots = header.slots();
        w.push(if parent.is_some() { Slot::Inherit } else { Slot::Zero }, slots).unwrap();
        w.commit().unwrap();
    }

    fn store() -> (tempfile::TempDir, LocalDir) {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("manifests")).unwrap();
        let dir = LocalDir::new(t.path());
        (t, dir)
    }

    fn corrupt_naming(e: StoreError, what: &str) -> String {
        match e {
            StoreError::Corrupt { path, reason, .. } => {
                assert!(reason.contains(what), "{reason:?} does not say {what:?}");
                path.display().to_string()
            }
            other => panic!("expected Corrupt ({what}), got {other:?}"),
        }
    }

    #[test]
    fn a_sound_chain_walks_to_its_full_backup_both_ways() {
        let (_t, dir) = store();
        manifest(&dir, &id(1), None, 1 << 20);
        manifest(&dir, &id(2), Some(&id(1)), 1 << 20);
        manifest(&dir, &id(3), Some(&id(2)), 1 << 20);
        let walked: Vec<BackupId> = ChainWalk::new(&dir, &id(3)).map(|h| h.unwrap().id).collect();
        assert_eq!(walked, vec![id(3), id(2), id(1)]);
        let mut c = ChainCursor::open(&dir, &id(3)).unwrap();
        assert_eq!(c.chain(), walked);
        assert_eq!(c.next_run().unwrap(), Some((Resolved::Zero, 16)));
        assert_eq!(c.next_run().unwrap(), None);
    }

    /// Parent links that loop (2 → 3 → 2) are damage, named at the
    /// manifest where the loop closes, by both walkers.
    #[test]
    fn looping_parents_are_corrupt_not_endless() {
        let (_t, dir) = store();
        manifest(&dir, &id(2), Some(&id(3)), 1 << 20);
        manifest(&dir, &id(3), Some(&id(2)), 1 << 20);
        let err = ChainWalk::new(&dir, &id(2)).find_map(|h| h.err()).expect("the walk fails");
        let path = corrupt_naming(err, "loops");
        assert!(path.contains(id(2).as_str()), "{path}");
        let err = ChainCursor::open(&dir, &id(2)).err().expect("the cursor fails");
        corrupt_naming(err, "loops");
    }

    #[test]
    fn a_parent_of_another_size_or_missing_is_corrupt() {
        let (_t, dir) = store();
        manifest(&dir, &id(1), None, 2 << 20);
        manifest(&dir, &id(2), Some(&id(1)), 1 << 20);
        let err = ChainWalk::new(&dir, &id(2)).find_map(|h| h.err()).unwrap();
        let path = corrupt_naming(err, "descendant");
        assert!(path.contains(id(1).as_str()), "the parent's manifest is named: {path}");
        corrupt_naming(ChainCursor::open(&dir, &id(2)).err().unwrap(), "descendant");

        manifest(&dir, &id(4), Some(&id(5)), 1 << 20);
        let err = ChainWalk::new(&dir, &id(4)).find_map(|h| h.err()).unwrap();
        let path = corrupt_naming(err, "missing");
        assert!(path.contains(id(4).as_str()), "the child naming the missing parent: {path}");
        corrupt_naming(ChainCursor::open(&dir, &id(4)).err().unwrap(), "missing");
        // The first link missing is a missing backup, not damage.
        assert!(matches!(ChainWalk::new(&dir, &id(9)).next(), Some(Err(StoreError::NoSuchBackup(_)))));
    }

    /// A manifest stored under another backup's name, and headers that
    /// break the kind/parent rule, are refused by the one header decoder,
    /// whether only the header is read or the whole file.
    #[test]
    fn mismatched_headers_are_refused_by_both_readers() {
        let (t, dir) = store();
        manifest(&dir, &id(1), None, 1 << 20);
        std::fs::copy(t.path().join(manifest_key(&id(1))), t.path().join(manifest_key(&id(6)))).unwrap();
        corrupt_naming(read_header(&dir, &id(6)).err().unwrap(), "says it is");
        corrupt_naming(ManifestReader::open(&dir, &id(6)).err().unwrap(), "says it is");
        // A manifest that names itself as its parent.
        manifest(&dir, &id(7), Some(&id(7)), 1 << 20);
        corrupt_naming(read_header(&dir, &id(7)).err().unwrap(), "its own parent");
        corrupt_naming(ManifestReader::open(&dir, &id(7)).err().unwrap(), "its own parent");
    }
}
