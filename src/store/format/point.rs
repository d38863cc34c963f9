//! Restore points: one job's backups of several disks, with tags and
//! attachments, committed together.
//!
//! A job writes each disk's manifest (naming the point in its header), the
//! attachments' chunks (packs sealed, index file committed), and only then
//! `points/<point id>.point`: **that object is the job's commit**. A manifest
//! that names a point whose object does not exist belongs to a job that
//! never finished: it is not listed, nothing continues from it, and vacuum
//! deletes it. So a job killed or cancelled at any instant leaves either the
//! whole restore point or none of it.
//!
//! The object is JSON, checksummed like the store config: BLAKE3 of the
//! compact serialisation with `checksum` set to `""`.

use crate::store::model::checked_json::Checksummed;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::store::backend::Backend;
use crate::store::model::id::ChunkId;
use crate::store::error::{Result, StoreError};
use crate::store::model::id::{BackupId, PointId};
use crate::store::model::time::Moment;

/// The largest attachment: writers and readers hold one in memory whole,
/// and a point naming a larger one is refused.
pub const MAX_ATTACHMENT_BYTES: u64 = 64 << 20;

const FORMAT: &str = "vhdkit-point";
const VERSION: u32 = 1;
/// The largest point object read (a point lists its disks and its
/// attachments' chunk ids: 1 MiB is thousands of disks or 1.5 GiB of
/// attachments at 512 KiB chunks).
pub(crate) const MAX_POINT_BYTES: u64 = 1 << 20;

/// One disk of a restore point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointDisk {
    /// The disk's label in the job (its file name, unless the caller chose one).
    pub label: String,
    /// The disk's backup.
    pub backup: BackupId,
}

/// A small file kept with a restore point (a VM's configuration), stored as
/// chunks like disk data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentRecord {
    /// The attachment's name (a file name, no folders).
    pub name: String,
    /// Its length in bytes.
    pub size: u64,
    /// Its chunks in order; `None` for an all-zero chunk, which is not stored.
    pub chunks: Vec<Option<ChunkId>>,
}

/// What `points/<id>.point` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointRecord {
    /// Always `vhdkit-point`.
    pub format: String,
    /// 1.
    pub version: u32,
    /// The point's id (also its object's name).
    pub id: PointId,
    /// The job's name.
    pub name: String,
    /// When the job started.
    pub created: Moment,
    /// The job's tags.
    pub tags: BTreeMap<String, String>,
    /// Its disks in job order.
    pub disks: Vec<PointDisk>,
    /// Its attachments.
    pub attachments: Vec<AttachmentRecord>,
    /// BLAKE3 of the compact JSON with this field empty.
    pub checksum: String,
}

/// Whether `name` is a plain file name, safe to create in a folder: labels
/// and attachment names come from the store and are checked before a
/// restore writes under them.
pub(crate) fn plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 255
        && !name.contains(['/', '\\', '\0'])
        && !name.chars().any(char::is_control)
}

/// The key of point `id`.
pub(crate) fn point_key(id: &PointId) -> String {
    crate::store::model::layout::point_key(id)
}

/// The point id in a key, if the key is one.
pub(crate) fn point_from_key(key: &str) -> Option<PointId> {
    key.strip_prefix("points/")?.strip_suffix(".point")?.parse().ok()
}

impl Checksummed for PointRecord {
    fn checksum_mut(&mut self) -> &mut String {
        &mut self.checksum
    }
}

impl PointRecord {
    pub(crate) fn new(
        id: PointId,
        name: String,
        created: Moment,
        tags: BTreeMap<String, String>,
        disks: Vec<PointDisk>,
        attachments: Vec<AttachmentRecord>,
    ) -> PointRecord {
        let mut p = PointRecord {
            format: FORMAT.into(),
            version: VERSION,
            id,
            name,
            created,
            tags,
            disks,
            attachments,
            checksum: String::new(),
        };
        p.checksum = p.compute_checksum();
        p
    }

    /// The object's bytes.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_pretty()
    }

    /// Decodes and checks a point object read as point `expected`.
    pub fn decode(bytes: &[u8], expected: &PointId) -> std::result::Result<PointRecord, String> {
        let p: PointRecord = serde_json::from_slice(bytes).map_err(|e| format!("not a restore point: {e}"))?;
        if p.format != FORMAT || p.version != VERSION {
            return Err(format!(
                "format {:?} version {} (this vhdkit reads {FORMAT:?} {VERSION})",
                p.format, p.version
            ));
        }
        if p.checksum != p.compute_checksum() {
            return Err("checksum mismatch: the object was changed or damaged".into());
        }
        if &p.id != expected {
            return Err(format!("the object of point {expected} says it is {}", p.id));
        }
        Ok(p)
    }

    /// Writes and commits the object: from this instant the job exists.
    pub(crate) fn commit(&self, backend: &dyn Backend) -> Result<()> {
        let key = point_key(&self.id);
        let path = backend.describe(&key);
        let mut w = backend.create(&key).map_err(StoreError::io(&path, "create restore point"))?;
        w.write(&self.encode()).map_err(StoreError::io(&path, "write restore point"))?;
        w.commit().map_err(StoreError::io(&path, "commit restore point"))
    }

    /// Reads and checks point `id`.
    pub(crate) fn read(backend: &dyn Backend, id: &PointId) -> Result<PointRecord> {
        let key = point_key(id);
        let path = backend.describe(&key);
        let size = backend.stat(&key).map(|o| o.size).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                StoreError::NoSuchBackup(id.to_string())
            } else {
                StoreError::io(path.clone(), "read restore point")(e)
            }
        })?;
        if size > MAX_POINT_BYTES {
            return Err(StoreError::corrupt(&path, "restore point", 0, format!("{size} bytes is too large")));
        }
        let bytes = backend.read_all(&key).map_err(StoreError::io(&path, "read restore point"))?;
        PointRecord::decode(&bytes, id).map_err(|r| StoreError::corrupt(&path, "restore point", 0, r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_round_trip_and_refuse_changes() {
        let id = PointId::generate(Moment::from_unix(1_800_000_000, 0));
        let p = PointRecord::new(
            id.clone(),
            "vm".into(),
            Moment::from_unix(1_800_000_000, 0),
            BTreeMap::from([("site".to_string(), "a".to_string())]),
            vec![PointDisk { label: "d0.vhdx".into(), backup: BackupId::generate(Moment::now()) }],
            vec![AttachmentRecord { name: "vm.vmcx".into(), size: 3, chunks: vec![Some(ChunkId::of(b"abc"))] }],
        );
        let bytes = p.encode();
        assert_eq!(PointRecord::decode(&bytes, &id).unwrap(), p);
        let other = PointId::generate(Moment::now());
        assert!(PointRecord::decode(&bytes, &other).is_err(), "a point moved under another id");
        let text = String::from_utf8(bytes).unwrap().replace("\"site\": \"a\"", "\"site\": \"b\"");
        assert!(PointRecord::decode(text.as_bytes(), &id).is_err(), "a changed tag went unnoticed");
    }
}
