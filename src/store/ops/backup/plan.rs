//! Planning a backup: full or incremental, against which parent, and which
//! slots to read, zero, inherit or patch.

use std::ops::Range;

use crate::disk::{DiskInfo, ExtentState, VirtualDisk};
use crate::store::error::{Result, StoreError};
use crate::store::format::changes::ChangeList;
use crate::store::format::manifest::{ChangeSource, SourceInfo};
use crate::store::state::catalog::BackupSummary;

/// What to do with a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Plan {
    Read,
    Zero,
    Inherit,
    /// A differencing child holds part of the slot: the previous backup's
    /// chunk with the child's own bytes laid over it.
    Partial,
}

/// What changed since the previous backup.
#[derive(Debug, Clone)]
pub(super) enum ChangeSet {
    /// Everything allocated (a full backup, or hash comparison).
    All,
    /// These slot ranges (sorted, merged); the rest is inherited.
    Slots(Vec<Range<u64>>),
    /// The source's own allocation (a differencing child of the previous
    /// backup's image); the rest is inherited.
    Own,
}

/// An incremental's parent and change set.
pub(super) struct IncrementalPlan {
    pub parent: BackupSummary,
    pub source: ChangeSource,
    pub change: ChangeSet,
}

/// What the caller said about changes, for one disk.
pub(super) struct ChangeInput<'a> {
    pub name: &'a str,
    pub full: bool,
    pub force: bool,
    pub changes: Option<&'a ChangeList>,
    pub since: Option<&'a str>,
}

/// Checks what can be checked before anything is written: a range list
/// must fit the disk, and `since` must name the previous backup's token.
pub(super) fn precheck(info: &DiskInfo, previous: Option<&BackupSummary>, input: &ChangeInput<'_>) -> Result<()> {
    if let Some(changes) = input.changes {
        changes.check_fits(info.virtual_size)?;
    } else if let Some(since) = input.since {
        // `since` vouches for a change list; without one it would be
        // silently ignored, and the caller would believe it was checked.
        return Err(StoreError::Invalid(format!(
            "since {since:?} is given without a changed-range list: it names the tracker state the list starts from"
        )));
    }
    if let Some(since) = input.since {
        let stored = previous.and_then(|p| p.change_id.as_deref());
        if stored != Some(since) && !input.force {
            return Err(StoreError::BaselineMismatch(match (previous, stored) {
                (None, _) => format!("--since {since:?} but there is no previous backup named {:?}", input.name),
                (Some(p), None) => format!("--since {since:?} but the previous backup {} stored no change id", p.id),
                (Some(p), Some(s)) => {
                    format!("the changes are since {since:?} but the previous backup {} was taken at {s:?}", p.id)
                }
            }));
        }
    }
    Ok(())
}

/// Decides whether the backup is incremental, against which parent, and
/// how to find what changed:
///
/// 1. a changed-range list, for the same disk (same disk id) as the
///    previous backup;
/// 2. a differencing source whose parent is the image the previous backup
///    captured (its identity): its own allocation;
/// 3. otherwise, every allocated chunk compared with the previous backup.
///
/// A range list for another disk, or a differencing source whose parent is
/// neither the previous backup's image nor shared with it (the same disk
/// backed up again), is refused unless `force` (then 3): a wrong
/// incremental is worse than none.
pub(super) fn incremental_plan(
    info: &DiskInfo,
    chunk: u64,
    previous: Option<&BackupSummary>,
    input: &ChangeInput<'_>,
) -> Result<Option<IncrementalPlan>> {
    let Some(prev) = previous else {
        if input.changes.is_some() && !input.force {
            return Err(StoreError::BaselineMismatch(format!(
                "a changed-range list was given but there is no previous backup named {:?}",
                input.name
            )));
        }
        return Ok(None);
    };
    if input.full || prev.virtual_size != info.virtual_size {
        // A disk that changed size gets a full backup, not a wrong incremental.
        return Ok(None);
    }
    let plan = |source, change| Ok(Some(IncrementalPlan { parent: prev.clone(), source, change }));
    if let Some(changes) = input.changes {
        if prev.source.disk_id != info.disk_id && !input.force {
            return Err(StoreError::BaselineMismatch(format!(
                "the changed ranges are for disk {} but the previous backup {} captured disk {}",
                info.disk_id, prev.id, prev.source.disk_id
            )));
        }
        return plan(ChangeSource::Ranges, ChangeSet::Slots(changes.slots(chunk)));
    }
    if let Some(link) = &info.parent {
        let is = |g: &crate::Guid| *g == link.expected_identity || Some(*g) == link.alternate_identity;
        if is(&prev.source.identity) {
            return plan(ChangeSource::Differencing, ChangeSet::Own);
        }
        let same_disk_again = prev.source.parent_identity.as_ref().is_some_and(is)
            && prev.source.file_name == source_info(info).file_name;
        if !same_disk_again && !input.force {
            return Err(StoreError::BaselineMismatch(format!(
                "the source is a differencing child of {} but the previous backup {} captured {}; \
                 back up with --full, or --force to compare every chunk",
                link.expected_identity, prev.id, prev.source.identity
            )));
        }
    }
    plan(ChangeSource::Hash, ChangeSet::All)
}

/// The identity a manifest records for its source.
pub(super) fn source_info(info: &DiskInfo) -> SourceInfo {
    let name = |v: &dyn erased_name::Name| v.name();
    SourceInfo {
        format: name(&info.format),
        subformat: name(&info.subformat),
        logical_sector_size: info.logical_sector_size,
        physical_sector_size: info.physical_sector_size,
        disk_id: info.disk_id,
        identity: info.identity,
        parent_identity: info.parent.as_ref().map(|p| p.expected_identity),
        file_name: info.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
    }
}

mod erased_name {
    /// The snake_case name serde gives an enum value.
    pub trait Name {
        fn name(&self) -> String;
    }
    impl<T: serde::Serialize> Name for T {
        fn name(&self) -> String {
            serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
        }
    }
}

/// The slot runs a disk needs, from its allocation map: slots no extent
/// with data touches are zero; with `ChangeSet::Slots`, slots outside the
/// change are inherited; with `ChangeSet::Own`, slots the source holds none
/// of are inherited and slots it holds only part of are partial.
pub(super) fn plan_window(
    disk: &dyn VirtualDisk,
    chunk: u64,
    slots: Range<u64>,
    change: &ChangeSet,
    out: &mut Vec<(Plan, u64)>,
) -> crate::Result<()> {
    let size = disk.size();
    let bytes = slots.start * chunk..(slots.end * chunk).min(size);
    let mut push = |p: Plan, n: u64| {
        if n == 0 {
            return;
        }
        match out.last_mut() {
            Some((q, m)) if *q == p => *m += n,
            _ => out.push((p, n)),
        }
    };
    if let ChangeSet::Own = change {
        // Per slot: how many of its bytes the child holds itself, and
        // whether any of them is data (rather than explicit zeros).
        let own = disk.own_extents(bytes.clone())?;
        let mut held = vec![0u64; (slots.end - slots.start) as usize];
        let mut data = vec![false; held.len()];
        for e in own.iter().filter(|e| e.depth == 0 && matches!(e.state, ExtentState::Data | ExtentState::Zero)) {
            let mut off = e.offset;
            while off < e.offset + e.length {
                let slot = off / chunk;
                let end = ((slot + 1) * chunk).min(e.offset + e.length);
                let i = (slot - slots.start) as usize;
                held[i] += end - off;
                data[i] |= e.state == ExtentState::Data;
                off = end;
            }
        }
        for (i, (&h, &d)) in held.iter().zip(&data).enumerate() {
            let slot = slots.start + i as u64;
            let len = (size - slot * chunk).min(chunk);
            push(
                match (h, d) {
                    (0, _) => Plan::Inherit,
                    (h, false) if h == len => Plan::Zero,
                    (h, _) if h == len => Plan::Read,
                    _ => Plan::Partial,
                },
                1,
            );
        }
        return Ok(());
    }
    let changed = match change {
        ChangeSet::Slots(v) => Some(v.as_slice()),
        _ => None,
    };
    let mut reads: Vec<Range<u64>> = Vec::new();
    for e in disk.extents(bytes.clone())? {
        if matches!(e.state, ExtentState::Data | ExtentState::Parent) {
            let (a, b) = (e.offset / chunk, (e.offset + e.length).div_ceil(chunk));
            match reads.last_mut() {
                Some(last) if last.end >= a => last.end = last.end.max(b),
                _ => reads.push(a..b),
            }
        }
    }
    // Walk the window slot run by slot run, intersecting reads and changes.
    let mut s = slots.start;
    let mut r = reads.iter().peekable();
    let mut c = changed.map(|c| c.iter().filter(|x| x.end > slots.start && x.start < slots.end).peekable());
    while s < slots.end {
        while r.peek().is_some_and(|x| x.end <= s) {
            r.next();
        }
        let (in_read, read_edge) = match r.peek() {
            Some(x) if x.start <= s => (true, x.end),
            Some(x) => (false, x.start),
            None => (false, slots.end),
        };
        let (in_changed, change_edge) = match &mut c {
            None => (true, slots.end),
            Some(c) => {
                while c.peek().is_some_and(|x| x.end <= s) {
                    c.next();
                }
                match c.peek() {
                    Some(x) if x.start <= s => (true, x.end),
                    Some(x) => (false, x.start),
                    None => (false, slots.end),
                }
            }
        };
        let end = read_edge.min(change_edge).min(slots.end).max(s + 1);
        let plan = match (in_changed, in_read) {
            (false, _) => Plan::Inherit,
            (true, true) => Plan::Read,
            (true, false) => Plan::Zero,
        };
        push(plan, end - s);
        s = end;
    }
    Ok(())
}
