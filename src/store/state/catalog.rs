//! What the store holds: committed backups and restore points, and finding
//! one by id, name or id prefix.
//!
//! A backup is committed when its manifest exists and, if it names a
//! restore point, that point's object exists too (see [`crate::store::format::point`]).
//! Listing reads every manifest's header (one small read each, bodies
//! unchecked) and every point object.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::store::state::handle::Handle;
use crate::store::error::{Result, StoreError};
use crate::store::model::id::{BackupId, PointId};
use crate::store::format::manifest::{ChangeSource, Kind, ManifestHeader, SourceInfo, id_from_key, read_header};
use crate::store::format::point::{PointDisk, PointRecord, point_from_key};
use crate::store::model::time::Moment;

/// The largest object under `dropped/` an encrypted store takes for a
/// tombstone: what prune and fencing write is a few dozen bytes sealed in
/// one envelope segment; anything larger is not read at all (a planted
/// multi-gigabyte "tombstone" would otherwise be fetched by every open).
const MAX_SEALED_TOMBSTONE: u64 = 4096;

/// One backup (one disk's manifest), as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct BackupSummary {
    /// The backup's id.
    pub id: BackupId,
    /// Its name; incrementals continue the newest backup of a name (and disk label).
    pub name: String,
    /// Full or incremental.
    pub kind: Kind,
    /// The backup it continues (incrementals).
    pub parent: Option<BackupId>,
    /// When it was taken.
    pub created: Moment,
    /// Bytes of the disk.
    pub virtual_size: u64,
    /// How its change set was found.
    pub change_source: ChangeSource,
    /// The change tracker's token stored with it (`--change-id`).
    pub change_id: Option<String>,
    /// The restore point it belongs to, if it was part of a multi-disk job
    /// or one with tags or attachments.
    pub point: Option<PointId>,
    /// Its disk's label within the point.
    pub disk: Option<String>,
    /// The point's tags.
    pub tags: BTreeMap<String, String>,
    /// Names of the point's attachments.
    pub attachments: Vec<String>,
    /// The source disk's identity at backup time.
    pub source: SourceInfo,
}

/// An attachment, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct AttachmentSummary {
    /// Its name.
    pub name: String,
    /// Its length in bytes.
    pub size: u64,
}

/// A restore point, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PointSummary {
    /// The point's id.
    pub id: PointId,
    /// The job's name (also each disk backup's name).
    pub name: String,
    /// When the job started.
    pub created: Moment,
    /// Tags given to the job.
    pub tags: BTreeMap<String, String>,
    /// Its disks, in the order the job took them.
    pub disks: Vec<PointDisk>,
    /// Its attachments.
    pub attachments: Vec<AttachmentSummary>,
}

/// What a backup spec found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
// Returned once per lookup; boxing the larger variant would only make it
// clumsier to match.
#[allow(clippy::large_enum_variant)]
pub enum Selection {
    /// One backup (a single-disk job, or one disk named by its backup id).
    Backup(BackupSummary),
    /// A restore point (a job's disks and attachments).
    Point(PointSummary),
}

/// Everything listed, and what could not be.
pub(crate) struct Catalog {
    /// Committed backups, oldest first.
    pub backups: Vec<BackupSummary>,
    /// Committed restore points, oldest first.
    pub points: Vec<PointRecord>,
    /// Manifests of jobs that never committed (their point is missing).
    pub orphans: Vec<BackupId>,
    /// Manifest generations a merge replaced (keys).
    pub superseded: Vec<String>,
    /// Backups prune dropped (tombstoned), still stored.
    pub dropped: Vec<BackupId>,
    /// Restore points prune dropped, still stored.
    pub dropped_points: Vec<PointId>,
    /// Manifests and points that could not be read: what and why.
    pub problems: Vec<(String, StoreError)>,
    /// Tombstones of an encrypted store that do not open: not written by
    /// a key holder, so they count for nothing. Verify reports them; other
    /// operations go on (a forged object must not stop backups).
    pub forged: Vec<(String, StoreError)>,
}

impl Catalog {
    /// A catalog of nothing (when listing failed and the caller goes on).
    pub(crate) fn empty() -> Catalog {
        Catalog {
            backups: Vec::new(),
            points: Vec::new(),
            orphans: Vec::new(),
            superseded: Vec::new(),
            dropped: Vec::new(),
            dropped_points: Vec::new(),
            problems: Vec::new(),
            forged: Vec::new(),
        }
    }

    /// The first problem as an error (for operations that cannot go on
    /// over damage), or the catalog.
    pub(crate) fn strict(mut self) -> Result<Catalog> {
        match self.problems.pop() {
            Some((_, e)) => Err(e),
            None => Ok(self),
        }
    }

    /// The newest committed backup of `name` with disk label `disk`.
    pub(crate) fn newest(&self, name: &str, disk: Option<&str>) -> Option<&BackupSummary> {
        self.backups.iter().rev().find(|b| b.name == name && b.disk.as_deref() == disk)
    }

    fn point_summary(p: &PointRecord) -> PointSummary {
        PointSummary {
            id: p.id.clone(),
            name: p.name.clone(),
            created: p.created,
            tags: p.tags.clone(),
            disks: p.disks.clone(),
            attachments: p
                .attachments
                .iter()
                .map(|a| AttachmentSummary { name: a.name.clone(), size: a.size })
                .collect(),
        }
    }

    /// Committed restore points, as listed.
    pub(crate) fn point_summaries(&self) -> Vec<PointSummary> {
        self.points.iter().map(Catalog::point_summary).collect()
    }

    /// Finds `spec`: an exact backup id, an exact point id, an exact name
    /// (its newest job), then a unique prefix of a backup or point id.
    pub(crate) fn select(&self, spec: &str) -> Result<Selection> {
        if let Some(b) = self.backups.iter().find(|b| b.id == spec) {
            return Ok(Selection::Backup(b.clone()));
        }
        if let Some(p) = self.points.iter().find(|p| p.id == spec) {
            return Ok(Selection::Point(Catalog::point_summary(p)));
        }
        let newest_backup = self.backups.iter().rev().find(|b| b.name == spec && b.point.is_none());
        let newest_point = self.points.iter().rev().find(|p| p.name == spec);
        match (newest_backup, newest_point) {
            (Some(b), Some(p)) if b.created >= p.created => return Ok(Selection::Backup(b.clone())),
            (_, Some(p)) => return Ok(Selection::Point(Catalog::point_summary(p))),
            (Some(b), None) => return Ok(Selection::Backup(b.clone())),
            (None, None) => {}
        }
        let backups: Vec<&BackupSummary> = self.backups.iter().filter(|b| b.id.as_str().starts_with(spec)).collect();
        let points: Vec<&PointRecord> = self.points.iter().filter(|p| p.id.as_str().starts_with(spec)).collect();
        match (backups.as_slice(), points.as_slice()) {
            ([b], []) => Ok(Selection::Backup((*b).clone())),
            ([], [p]) => Ok(Selection::Point(Catalog::point_summary(p))),
            ([], []) => Err(StoreError::NoSuchBackup(spec.to_string())),
            _ => {
                let mut candidates: Vec<String> = backups.iter().map(|b| b.id.to_string()).collect();
                candidates.extend(points.iter().map(|p| format!("{} (restore point)", p.id)));
                Err(StoreError::Ambiguous { spec: spec.to_string(), candidates })
            }
        }
    }
}

/// Reads every manifest header and point object.
pub(crate) fn catalog(store: &Handle) -> Result<Catalog> {
    let backend = store.backend();
    let list = |prefix: &str| backend.list(prefix).map_err(StoreError::io(backend.describe(prefix), "list"));
    let mut problems = Vec::new();
    let mut forged = Vec::new();
    let mut points: HashMap<PointId, PointRecord> = HashMap::new();
    let mut bad_points = std::collections::HashSet::new();
    // Tombstones: what prune dropped (a backup or a restore point). The
    // objects stay until vacuum's second phase; until then they are
    // not committed, and nothing continues from them.
    let mut tombstones: Vec<String> = match backend.list("dropped") {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        other => {
            other.map_err(StoreError::io(backend.describe("dropped"), "list"))?.into_iter().map(|o| o.key).collect()
        }
    };
    // In an encrypted store a tombstone is sealed: one that does not
    // open, or is too large to be one, was not written by a key holder
    // (forged, to hide a backup from the catalog and have vacuum delete
    // it) and counts for nothing; verify names it. A storage that
    // cannot answer is an error, never a forgery: taking it for one
    // would bring a dropped backup back as a parent whose packs vacuum
    // may already have deleted.
    if crate::store::state::keyring::is_encrypted(store) {
        let mut kept = Vec::with_capacity(tombstones.len());
        for key in tombstones {
            let read = match store.stored_backend().stat(&key) {
                Ok(info) if info.size > MAX_SEALED_TOMBSTONE => {
                    let e = std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{} bytes, more than a sealed tombstone's {MAX_SEALED_TOMBSTONE}", info.size),
                    );
                    forged.push((key.clone(), StoreError::io(backend.describe(&key), "read tombstone")(e)));
                    continue;
                }
                Ok(_) => backend.read_all(&key),
                Err(e) => Err(e),
            };
            match read {
                Ok(_) => kept.push(key),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) if crate::store::backend::is_seal_error(&e) => {
                    forged.push((key.clone(), StoreError::io(backend.describe(&key), "read tombstone")(e)));
                }
                Err(e) => return Err(StoreError::io(backend.describe(&key), "read tombstone")(e)),
            }
        }
        tombstones = kept;
    }
    let dropped_ids: std::collections::HashSet<&str> =
        tombstones.iter().filter_map(|k| k.strip_prefix("dropped/")).collect();
    let mut dropped_points = Vec::new();
    // Stores made before restore points have no points folder.
    let point_keys = match backend.list("points") {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        other => other.map_err(StoreError::io(backend.describe("points"), "list"))?,
    };
    for key in point_keys.into_iter().map(|o| o.key) {
        let Some(id) = point_from_key(&key) else { continue };
        if dropped_ids.contains(id.as_str()) {
            dropped_points.push(id);
            continue;
        }
        match PointRecord::read(backend, &id) {
            Ok(p) => {
                points.insert(id, p);
            }
            Err(e) => {
                problems.push((key, e));
                bad_points.insert(id);
            }
        }
    }
    let mut headers: Vec<ManifestHeader> = Vec::new();
    let mut orphans = Vec::new();
    // Each backup once, by its newest generation; older generations a
    // merge left behind are superseded (vacuum removes them).
    let mut newest: BTreeMap<BackupId, (u32, String)> = BTreeMap::new();
    let mut superseded = Vec::new();
    for key in list("manifests")?.into_iter().map(|o| o.key) {
        let Some((id, generation)) = id_from_key(&key) else { continue };
        match newest.get(&id) {
            Some((g, _)) if *g >= generation => superseded.push(key),
            _ => {
                if let Some((_, old)) = newest.insert(id, (generation, key)) {
                    superseded.push(old);
                }
            }
        }
    }
    let mut dropped = Vec::new();
    for (id, (_, key)) in newest {
        if dropped_ids.contains(id.as_str()) {
            dropped.push(id);
            continue;
        }
        match read_header(backend, &id) {
            Ok(h) => match &h.point {
                Some(p) if bad_points.contains(p) => {}
                Some(p) if dropped_points.contains(p) => dropped.push(h.id),
                Some(p) if !points.contains_key(p) => orphans.push(h.id),
                _ => headers.push(h),
            },
            // Deleted between the listing and the read (prune): gone.
            Err(StoreError::NoSuchBackup(_)) => {}
            Err(e) => problems.push((key, e)),
        }
    }
    let mut backups: Vec<BackupSummary> = headers
        .into_iter()
        .map(|h| {
            let point = h.point.as_ref().and_then(|p| points.get(p));
            BackupSummary {
                id: h.id,
                name: h.name,
                kind: h.kind,
                parent: h.parent,
                created: h.created,
                virtual_size: h.virtual_size,
                change_source: h.change_source,
                change_id: h.change_id,
                point: h.point,
                disk: h.disk,
                tags: point.map(|p| p.tags.clone()).unwrap_or_default(),
                attachments: point
                    .map(|p| p.attachments.iter().map(|a| a.name.clone()).collect())
                    .unwrap_or_default(),
                source: h.source,
            }
        })
        .collect();
    // Oldest first; the disks of one job (same time) in the job's order.
    let ordinal = |b: &BackupSummary| {
        b.point
            .as_ref()
            .and_then(|p| points.get(p))
            .and_then(|p| p.disks.iter().position(|d| d.backup == b.id))
            .unwrap_or(0)
    };
    backups.sort_by(|a, b| (a.created, &a.point, ordinal(a), &a.id).cmp(&(b.created, &b.point, ordinal(b), &b.id)));
    let mut points: Vec<PointRecord> = points.into_values().collect();
    points.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
    Ok(Catalog { backups, points, orphans, superseded, dropped, dropped_points, problems, forged })
}

/// [`Store::list`](crate::store::Store::list).
pub(crate) fn list(store: &Handle) -> Result<Vec<BackupSummary>> {
    Ok(catalog(store)?.strict()?.backups)
}

/// [`Store::points`](crate::store::Store::points).
pub(crate) fn points(store: &Handle) -> Result<Vec<PointSummary>> {
    Ok(catalog(store)?.strict()?.point_summaries())
}

/// [`Store::resolve`](crate::store::Store::resolve).
pub(crate) fn resolve(store: &Handle, spec: impl AsRef<str>) -> Result<Selection> {
    let spec = spec.as_ref();
    catalog(store)?.strict()?.select(spec)
}

/// [`Store::resolve_backup`](crate::store::Store::resolve_backup).
pub(crate) fn resolve_backup(store: &Handle, spec: impl AsRef<str>, disk: Option<&str>) -> Result<BackupSummary> {
    let spec = spec.as_ref();
    let catalog = catalog(store)?.strict()?;
    let missing = |label: &str| StoreError::NoSuchBackup(format!("{spec} (disk {label})"));
    let pick = |p: &PointSummary| -> Result<BackupSummary> {
        let d = match (disk, p.disks.as_slice()) {
            (Some(label), disks) => disks.iter().find(|d| d.label == label).ok_or_else(|| missing(label))?,
            (None, [only]) => only,
            (None, _) => {
                return Err(StoreError::Invalid(format!(
                    "restore point {} holds {} disks ({}): choose one by its label",
                    p.id,
                    p.disks.len(),
                    labels(p)
                )));
            }
        };
        catalog
            .backups
            .iter()
            .find(|b| b.id == d.backup)
            .cloned()
            .ok_or_else(|| StoreError::NoSuchBackup(d.backup.to_string()))
    };
    match catalog.select(spec)? {
        Selection::Backup(b) => match (disk, &b.point) {
            (None, _) => Ok(b),
            (Some(label), _) if b.disk.as_deref() == Some(label) => Ok(b),
            // Another disk of the same restore point.
            (Some(_), Some(p)) => {
                let point = catalog.points.iter().find(|x| &x.id == p).map(Catalog::point_summary);
                point.map_or_else(|| Err(StoreError::NoSuchBackup(spec.to_string())), |p| pick(&p))
            }
            (Some(label), None) => Err(missing(label)),
        },
        Selection::Point(p) => pick(&p),
    }
}

fn labels(p: &PointSummary) -> String {
    p.disks.iter().map(|d| d.label.as_str()).collect::<Vec<_>>().join(", ")
}
