//! Walking a volume's tree, and checking it: every folder listed, every
//! entry's record read, file data read (all, a sample, or none) and
//! compared with a source when one is given. A restore test without a
//! hypervisor.
//!
//! Walks end on damaged trees: a folder that is its own ancestor (the same
//! NTFS record anywhere, or elsewhere the same listing as one of its
//! ancestors') is reported, not entered, and depth is bounded.

use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;

use serde::Serialize;

use super::error::{FsError, Result};
use super::partition::partitions;
use super::volume::Volume;
use super::{DirEntry, FileKind, FsKind};
use crate::cancel::CancelToken;
use crate::disk::VirtualDisk;

/// Deeper than any real tree (Windows paths end at 32 767 characters, so
/// a folder's depth near 16 000 at most; Linux's PATH_MAX gives ~2 000).
const MAX_DEPTH: usize = 4096;
/// Bytes read per call when checking data.
const READ_BLOCK: usize = 1 << 20;

/// Calls `visit` with every entry under `root` (its full path and entry),
/// folders before what they hold; a folder that cannot be listed or that
/// would loop is passed to `problem` and skipped.
pub fn walk(
    volume: &Volume,
    root: &str,
    cancel: &CancelToken,
    visit: &mut dyn FnMut(&str, &DirEntry) -> Result<()>,
    problem: &mut dyn FnMut(&str, String),
) -> Result<()> {
    // Each folder on the stack carries the chain of its ancestors' listing
    // fingerprints (outside NTFS, where records identify folders).
    struct Ancestor {
        listing: [u8; 32],
        parent: Option<Rc<Ancestor>>,
    }
    let mut stack: Vec<(String, usize, Option<Rc<Ancestor>>)> = vec![(root.trim_end_matches('/').to_string(), 0, None)];
    let mut seen_ids = HashSet::new();
    while let Some((dir, depth, ancestors)) = stack.pop() {
        if cancel.is_cancelled() {
            return Err(FsError::Cancelled);
        }
        let shown = if dir.is_empty() { "/" } else { dir.as_str() };
        let entries = match volume.read_dir(shown) {
            Ok(e) => e,
            Err(e @ (FsError::Disk(_) | FsError::Cancelled | FsError::Panicked { .. })) => return Err(e),
            Err(e) => {
                problem(shown, e.to_string());
                continue;
            }
        };
        let mut chain = None;
        if volume.kind() != FsKind::Ntfs {
            let mut h = blake3::Hasher::new();
            for e in &entries {
                h.update(e.name.as_bytes());
                h.update(&[0]);
                h.update(serde_json::to_string(&e.metadata).unwrap_or_default().as_bytes());
            }
            let listing = *h.finalize().as_bytes();
            let mut up = ancestors.as_deref();
            let mut repeats = false;
            while let Some(a) = up {
                repeats |= a.listing == listing;
                up = a.parent.as_deref();
            }
            if repeats && entries.iter().any(|e| e.metadata.is_dir()) {
                problem(shown, "lists exactly what a folder above it lists (a loop in the tree?); not entered".into());
                continue;
            }
            chain = Some(Rc::new(Ancestor { listing, parent: ancestors }));
        }
        for entry in entries.iter() {
            let path = format!("{dir}/{}", entry.name);
            visit(&path, entry)?;
            if let Some(p) = &entry.problem {
                problem(&path, p.clone());
            }
            if entry.metadata.kind == FileKind::Dir && entry.problem.is_none() && entry.metadata.unsupported.is_none() {
                if depth + 1 >= MAX_DEPTH {
                    problem(&path, format!("deeper than {MAX_DEPTH} folders; not entered"));
                    continue;
                }
                if let Some(id) = entry.metadata.id
                    && !seen_ids.insert(id)
                {
                    problem(&path, format!("folder record {id} appears twice in the tree (a loop?); not entered"));
                    continue;
                }
                stack.push((path, depth + 1, chain.clone()));
            }
        }
    }
    Ok(())
}

/// What [`check_disk`] does besides walking.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CheckOptions {
    /// Read every file's data.
    pub read_files: bool,
    /// Read this percentage of files (chosen by BLAKE3 of seed and path,
    /// stable for a seed); ignored when `read_files` is set.
    pub sample: Option<f64>,
    /// The sample's seed.
    pub seed: u64,
    /// Compare every file's bytes with the same partition and path of this
    /// disk (the source the backup was made from); implies reading them.
    pub against: Option<Arc<dyn VirtualDisk>>,
    /// Checked between entries and between blocks of data.
    pub cancel: CancelToken,
}

impl std::fmt::Debug for dyn VirtualDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.info().path.display())
    }
}

/// Something wrong at a path.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// Where.
    pub path: String,
    /// What.
    pub reason: String,
}

/// What checking one partition found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The partition's number (0: the whole disk).
    pub partition: u32,
    /// Its file system, if it has one vhdkit knows.
    pub filesystem: Option<FsKind>,
    /// The volume label.
    pub label: Option<String>,
    /// Why it was not walked (no file system, or one vhdkit cannot read).
    pub skipped: Option<String>,
    /// Entries by kind.
    pub files: u64,
    /// Folders (the root not counted).
    pub folders: u64,
    /// Symbolic links.
    pub links: u64,
    /// Devices, FIFOs, sockets, other reparse points.
    pub others: u64,
    /// Files whose data was read, and their bytes.
    pub files_read: u64,
    /// Bytes of file data read.
    pub bytes_read: u64,
    /// Bytes the walk asked of the disk (after the volume's cache).
    pub disk_bytes_read: u64,
    /// Files whose data vhdkit cannot read (NTFS-compressed...), by path
    /// and reason. Not problems: the file system is whole.
    pub unsupported: Vec<Problem>,
    /// What is unreadable or inconsistent. Empty when sound.
    pub problems: Vec<Problem>,
}

impl CheckReport {
    /// Whether nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Opens every partition's file system on `disk` and checks it: a report
/// per partition, in number order. Fails only for the disk itself (its
/// partition table, a read the disk refuses) or a cancel.
pub fn check_disk(disk: Arc<dyn VirtualDisk>, options: &CheckOptions) -> Result<Vec<CheckReport>> {
    let table = partitions(&*disk)?;
    let mut out = Vec::new();
    for p in &table.partitions {
        let mut report = CheckReport {
            partition: p.number,
            filesystem: p.filesystem,
            label: None,
            skipped: None,
            files: 0,
            folders: 0,
            links: 0,
            others: 0,
            files_read: 0,
            bytes_read: 0,
            disk_bytes_read: 0,
            unsupported: Vec::new(),
            problems: Vec::new(),
        };
        match p.filesystem {
            None => report.skipped = Some("no file system vhdkit knows".into()),
            Some(FsKind::Unreadable(name)) => report.skipped = Some(format!("{name} cannot be read by vhdkit")),
            Some(_) => match Volume::open(disk.clone(), p) {
                // A reader that gave up on this volume is this partition's
                // problem; the other partitions are still checked.
                Ok(volume) => match check_volume(&volume, options, &mut report) {
                    Err(e @ FsError::Panicked { .. }) => {
                        report.problems.push(Problem { path: "/".into(), reason: e.to_string() })
                    }
                    r => r?,
                },
                Err(e @ (FsError::Disk(_) | FsError::Cancelled)) => return Err(e),
                Err(e) => report.problems.push(Problem { path: "/".into(), reason: e.to_string() }),
            },
        }
        out.push(report);
    }
    Ok(out)
}

fn check_volume(volume: &Volume, options: &CheckOptions, report: &mut CheckReport) -> Result<()> {
    report.filesystem = Some(volume.kind());
    report.label = volume.label();
    let source = match &options.against {
        Some(disk) => match Volume::open(disk.clone(), volume.partition()) {
            Ok(v) => Some(v),
            Err(e) => {
                report.problems.push(Problem {
                    path: "/".into(),
                    reason: format!("the source's partition cannot be opened: {e}"),
                });
                None
            }
        },
        None => None,
    };
    let problems = std::cell::RefCell::new(Vec::new());
    let mut buf = Vec::new();
    let mut other = Vec::new();
    walk(
        volume,
        "",
        &options.cancel,
        &mut |path, entry| {
            match entry.metadata.kind {
                FileKind::Dir => report.folders += 1,
                FileKind::Symlink => report.links += 1,
                FileKind::Other => report.others += 1,
                FileKind::File => report.files += 1,
            }
            if entry.problem.is_some() {
                return Ok(());
            }
            if let Some(what) = &entry.metadata.unsupported {
                report.unsupported.push(Problem { path: path.into(), reason: what.clone() });
                return Ok(());
            }
            if entry.metadata.kind != FileKind::File {
                return Ok(());
            }
            if !(options.read_files || source.is_some() || sampled(options, path)) {
                return Ok(());
            }
            report.files_read += 1;
            match read_and_compare(volume, source.as_ref(), path, &options.cancel, &mut buf, &mut other) {
                Ok(n) => report.bytes_read += n,
                Err(e @ (FsError::Disk(_) | FsError::Cancelled)) => return Err(e),
                Err(e) => problems.borrow_mut().push(Problem { path: path.into(), reason: e.to_string() }),
            }
            Ok(())
        },
        &mut |path, reason| problems.borrow_mut().push(Problem { path: path.into(), reason }),
    )?;
    report.problems.extend(problems.into_inner());
    report.disk_bytes_read = volume.disk_traffic().0;
    Ok(())
}

fn sampled(options: &CheckOptions, path: &str) -> bool {
    let Some(pct) = options.sample else { return false };
    let h = blake3::Hasher::new().update(&options.seed.to_le_bytes()).update(path.as_bytes()).finalize();
    let x = u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or_default());
    (x as f64 / u64::MAX as f64) * 100.0 < pct
}

/// Reads the file at `path` to its end (and the source's, comparing):
/// the bytes read.
fn read_and_compare(
    volume: &Volume,
    source: Option<&Volume>,
    path: &str,
    cancel: &CancelToken,
    buf: &mut Vec<u8>,
    other: &mut Vec<u8>,
) -> Result<u64> {
    let mut file = volume.open_file(path)?;
    let mut theirs = match source {
        Some(s) => Some(s.open_file(path).map_err(|e| FsError::Corrupt {
            fs: volume.kind(),
            volume_offset: volume.partition().offset,
            path: path.into(),
            reason: format!("the source cannot give this file: {e}"),
        })?),
        None => None,
    };
    if let Some(t) = &theirs
        && t.len() != file.len()
    {
        return Err(differs(volume, path, format!("{} bytes here, {} in the source", file.len(), t.len())));
    }
    buf.resize(READ_BLOCK, 0);
    other.resize(READ_BLOCK, 0);
    let mut at = 0u64;
    while at < file.len() {
        if cancel.is_cancelled() {
            return Err(FsError::Cancelled);
        }
        let n = file.read_at(buf, at)?;
        if n == 0 {
            return Err(differs(volume, path, format!("the data ends at byte {at} of {}", file.len())));
        }
        if let Some(t) = theirs.as_mut() {
            let m = t.read_at(&mut other[..n], at)?;
            if let Some(i) = (0..n).find(|&i| i >= m || buf[i] != other[i]) {
                return Err(differs(volume, path, format!("differs from the source at byte {}", at + i as u64)));
            }
        }
        at += n as u64;
    }
    Ok(at)
}

fn differs(volume: &Volume, path: &str, reason: String) -> FsError {
    FsError::Corrupt { fs: volume.kind(), volume_offset: volume.partition().offset, path: path.into(), reason }
}
