//! Manifests: one per backup, mapping every chunk slot of the disk.
//!
//! See docs/store-format.md ("Manifests"). Manifests are written and read
//! as streams in slot order, so no operation holds a whole disk's map in
//! memory; a manifest is checked end to end (BLAKE3 over header and body,
//! slot counts) before any of it is used.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::store::backend::{Backend, ObjectWriter};
use crate::store::model::id::ChunkId;
use crate::store::error::{Result, StoreError};
use crate::store::model::id::{BackupId, PointId};
use crate::store::model::time::Moment;
use crate::format::Guid;

const MAGIC: &[u8; 8] = b"VKMANIF1";
const END: &[u8; 8] = b"VKMEND01";
const TRAILER: usize = 8 + 8 + 8 + 32;
/// The largest header accepted.
const MAX_HEADER: u32 = 1 << 20;
const TAG_DATA: u8 = 1;
const TAG_ZERO: u8 = 2;
const TAG_INHERIT: u8 = 3;

/// Full or incremental.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Maps every slot itself.
    Full,
    /// Maps changed slots; the rest are its parent's.
    Incremental,
}

/// How an incremental found what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeSource {
    /// A full backup: everything allocated was read.
    None,
    /// The source is a differencing child of the previous backup's image:
    /// its own allocation is the change set.
    Differencing,
    /// A changed-range list from the caller (RCT, CBT, any tracker).
    Ranges,
    /// Every allocated chunk read and compared with the previous backup.
    Hash,
}

/// What was backed up, as the source described itself at the time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// `vhd`, `vhdx`, `raw` or `backup`.
    pub format: String,
    /// `fixed`, `dynamic` or `differencing`.
    pub subformat: String,
    /// Logical sector size in bytes.
    pub logical_sector_size: u32,
    /// Physical sector size in bytes.
    pub physical_sector_size: u32,
    /// The disk's own id (VHDX virtual disk id, VHD unique id).
    pub disk_id: Guid,
    /// VHDX DataWriteGuid / VHD unique id at backup time.
    pub identity: Guid,
    /// For a differencing source: its parent's identity.
    pub parent_identity: Option<Guid>,
    /// The image's file name.
    pub file_name: String,
}

/// A manifest's header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestHeader {
    /// The backup's id (also the manifest's name).
    pub id: BackupId,
    /// The backup's name; incrementals continue the newest of a name.
    pub name: String,
    /// Full or incremental.
    pub kind: Kind,
    /// The parent backup (incrementals only).
    pub parent: Option<BackupId>,
    /// When the backup was taken.
    pub created: Moment,
    /// Bytes per slot.
    pub chunk_size: u32,
    /// Bytes of the disk.
    pub virtual_size: u64,
    /// How the change set was found.
    pub change_source: ChangeSource,
    /// The source's identity.
    pub source: SourceInfo,
    /// The change tracker's token for this state of the disk (an RCT id,
    /// a CBT change id), when the caller gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_id: Option<String>,
    /// The restore point this backup belongs to: then it is committed only
    /// once `points/<point>.point` exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<PointId>,
    /// The disk's label within its restore point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
}

impl ManifestHeader {
    /// Slots covering the disk.
    pub fn slots(&self) -> u64 {
        self.virtual_size.div_ceil(u64::from(self.chunk_size.max(1)))
    }

    /// Bytes of slot `slot` (the last may be short).
    pub fn slot_len(&self, slot: u64) -> u64 {
        let c = u64::from(self.chunk_size);
        self.virtual_size.saturating_sub(slot.saturating_mul(c)).min(c)
    }
}

/// One slot (or a run of slots) of a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Holds this chunk.
    Data(ChunkId),
    /// All zero.
    Zero,
    /// As in the parent backup.
    Inherit,
}

/// The generation a merge writes: a backup's manifest is written once as
/// generation 0, and a merge (which makes it full; a full backup is never
/// merged again) writes generation 1 beside it instead of replacing it.
pub const MERGED: u32 = 1;

/// The key of generation `generation` of backup `id`'s manifest:
/// `manifests/<id>.manifest`, then `manifests/<id>~<generation>.manifest`.
pub fn manifest_key_gen(id: &BackupId, generation: u32) -> String {
    crate::store::model::layout::manifest_key(id, generation)
}

/// The key of backup `id`'s first manifest, for messages.
pub fn manifest_key(id: &BackupId) -> String {
    manifest_key_gen(id, 0)
}

/// The backup id and generation in a manifest key, if the key is one.
pub fn id_from_key(key: &str) -> Option<(BackupId, u32)> {
    let name = key.strip_prefix("manifests/")?.strip_suffix(".manifest")?;
    match name.split_once('~') {
        None => Some((name.parse().ok()?, 0)),
        Some((id, text)) => {
            // Only the canonical spelling: `~1`, never `~01` or `~0`.
            let generation: u32 = text.parse().ok()?;
            (generation > 0 && generation.to_string() == text).then_some(())?;
            Some((id.parse().ok()?, generation))
        }
    }
}

/// Opens the newest generation of `id`'s manifest: `open(key)` is tried on
/// the merged generation, then on the first.
fn newest<T>(id: &BackupId, mut open: impl FnMut(&str) -> std::io::Result<T>) -> std::io::Result<(String, T)> {
    let merged = manifest_key_gen(id, MERGED);
    match open(&merged) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let first = manifest_key(id);
            open(&first).map(|t| (first, t))
        }
        other => other.map(|t| (merged, t)),
    }
}

/// Decodes the first 12 bytes: the signature and the header's length.
fn parse_head(head: &[u8; 12], path: &Path) -> Result<u32> {
    if &head[..8] != MAGIC {
        return Err(StoreError::corrupt(path, "manifest", 0, "not a manifest (bad signature)"));
    }
    let len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if len > MAX_HEADER {
        return Err(StoreError::corrupt(path, "manifest", 8, format!("header length {len}")));
    }
    Ok(len)
}

/// Decodes and checks a header: the one place a manifest header is parsed.
/// It must name the backup it was opened as, use a chunk size a store may
/// have, and link to a parent exactly when it is incremental.
fn decode_header(json: &[u8], path: &Path, expected: &BackupId) -> Result<ManifestHeader> {
    let corrupt = |reason: String| StoreError::corrupt(path, "manifest header", 12, reason);
    let h: ManifestHeader = serde_json::from_slice(json).map_err(|e| corrupt(e.to_string()))?;
    if &h.id != expected {
        return Err(corrupt(format!("the manifest of {expected} says it is {}", h.id)));
    }
    if !h.chunk_size.is_power_of_two() || !(64 * 1024..=4 << 20).contains(&h.chunk_size) {
        return Err(corrupt(format!("chunk size {}", h.chunk_size)));
    }
    match (h.kind, &h.parent) {
        (Kind::Incremental, None) => return Err(corrupt("an incremental without a parent".into())),
        (Kind::Full, Some(p)) => return Err(corrupt(format!("a full backup with a parent ({p})"))),
        (Kind::Incremental, Some(p)) if p == &h.id => return Err(corrupt("a backup that is its own parent".into())),
        _ => {}
    }
    Ok(h)
}

fn not_found_or_io(id: &BackupId, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let (id, path) = (id.clone(), path.to_path_buf());
    move |e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            StoreError::NoSuchBackup(id.to_string())
        } else {
            StoreError::io(path, "read manifest")(e)
        }
    }
}

/// Reads backup `id`'s header only (one small read, the body unchecked):
/// for listing. Everything that uses the body opens a [`ManifestReader`].
pub fn read_header(backend: &dyn Backend, id: &BackupId) -> Result<ManifestHeader> {
    let mut head = [0u8; 12];
    let (key, ()) = newest(id, |key| backend.read_at(key, &mut head, 0))
        .map_err(not_found_or_io(id, &backend.describe(&manifest_key(id))))?;
    let path = backend.describe(&key);
    let len = parse_head(&head, &path)?;
    let mut json = vec![0u8; len as usize];
    backend.read_at(&key, &mut json, 12).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            StoreError::corrupt(&path, "manifest", 12, "the file ends inside the header")
        } else {
            StoreError::io(path.clone(), "read manifest")(e)
        }
    })?;
    decode_header(&json, &path, id)
}

/// Writes a manifest as a stream of slots.
pub struct ManifestWriter {
    writer: Box<dyn ObjectWriter>,
    path: std::path::PathBuf,
    hasher: blake3::Hasher,
    buf: Vec<u8>,
    run: Option<(u8, u64)>,
    slots: u64,
    stored: u64,
    expected: u64,
    incremental: bool,
}

impl ManifestWriter {
    /// Starts writing the manifest for `header`.
    pub fn create(backend: &dyn Backend, header: &ManifestHeader) -> Result<ManifestWriter> {
        ManifestWriter::create_gen(backend, header, 0)
    }

    /// Starts writing generation `generation` of the manifest for `header`
    /// (a merge writes [`MERGED`]).
    pub fn create_gen(backend: &dyn Backend, header: &ManifestHeader, generation: u32) -> Result<ManifestWriter> {
        let key = manifest_key_gen(&header.id, generation);
        let path = backend.describe(&key);
        let writer = backend.create(&key).map_err(StoreError::io(&path, "create manifest"))?;
        let json = serde_json::to_vec(header).map_err(|e| StoreError::Internal(e.to_string()))?;
        let mut m = ManifestWriter {
            writer,
            path,
            hasher: blake3::Hasher::new(),
            buf: Vec::with_capacity(1 << 20),
            run: None,
            slots: 0,
            stored: 0,
            expected: header.slots(),
            incremental: header.kind == Kind::Incremental,
        };
        m.emit(MAGIC)?;
        m.emit(&(json.len() as u32).to_le_bytes())?;
        m.emit(&json)?;
        Ok(m)
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= 1 << 20 {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.writer.write(&self.buf).map_err(StoreError::io(&self.path, "write manifest"))?;
        self.buf.clear();
        Ok(())
    }

    fn end_run(&mut self) -> Result<()> {
        if let Some((tag, n)) = self.run.take() {
            let mut v = vec![tag];
            write_varint(&mut v, n);
            self.emit(&v)?;
        }
        Ok(())
    }

    /// Appends `count` slots of `slot` (a `Data` slot repeats its chunk).
    pub fn push(&mut self, slot: Slot, count: u64) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        match slot {
            Slot::Data(id) => {
                self.end_run()?;
                for _ in 0..count {
                    let mut rec = [0u8; 33];
                    rec[0] = TAG_DATA;
                    rec[1..].copy_from_slice(&id.0);
                    self.emit(&rec)?;
                }
                self.stored += count;
            }
            Slot::Zero | Slot::Inherit => {
                let tag = if slot == Slot::Zero { TAG_ZERO } else { TAG_INHERIT };
                if tag == TAG_INHERIT && !self.incremental {
                    return Err(StoreError::Internal("a full manifest cannot inherit slots".into()));
                }
                match &mut self.run {
                    Some((t, n)) if *t == tag => *n += count,
                    _ => {
                        self.end_run()?;
                        self.run = Some((tag, count));
                    }
                }
            }
        }
        self.slots += count;
        Ok(())
    }

    /// Finishes the manifest and commits it: from this moment the backup
    /// exists.
    pub fn commit(mut self) -> Result<()> {
        self.end_run()?;
        if self.slots != self.expected {
            return Err(StoreError::Internal(format!(
                "manifest maps {} slots, the disk has {}",
                self.slots, self.expected
            )));
        }
        let mut trailer = Vec::with_capacity(TRAILER);
        trailer.extend_from_slice(END);
        trailer.extend_from_slice(&self.slots.to_le_bytes());
        trailer.extend_from_slice(&self.stored.to_le_bytes());
        let hash = self.hasher.finalize();
        trailer.extend_from_slice(hash.as_bytes());
        self.buf.extend_from_slice(&trailer);
        self.flush()?;
        let path = self.path.clone();
        self.writer.commit().map_err(StoreError::io(path, "commit manifest"))
    }
}

fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7F) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// Reads a manifest's slots as a stream, after checking the whole file.
pub struct ManifestReader<'a> {
    backend: &'a dyn Backend,
    key: String,
    path: std::path::PathBuf,
    header: ManifestHeader,
    pos: u64,
    end: u64,
    buf: Vec<u8>,
    buf_start: u64,
    slots: u64,
    total: u64,
}

impl<'a> ManifestReader<'a> {
    /// Opens backup `id`'s manifest: reads its header, checks its checksum
    /// and trailer over the whole file, and positions at the first slot.
    pub fn open(backend: &'a dyn Backend, id: &BackupId) -> Result<ManifestReader<'a>> {
        let (key, info) =
            newest(id, |key| backend.stat(key)).map_err(not_found_or_io(id, &backend.describe(&manifest_key(id))))?;
        let path = backend.describe(&key);
        let len = info.size;
        let corrupt = |offset: u64, reason: String| StoreError::corrupt(&path, "manifest", offset, reason);
        if len < 12 + TRAILER as u64 {
            return Err(corrupt(0, format!("{len} bytes is too short")));
        }
        let read =
            |buf: &mut [u8], at: u64| backend.read_at(&key, buf, at).map_err(StoreError::io(&path, "read manifest"));
        let mut head = [0u8; 12];
        read(&mut head, 0)?;
        let header_len = parse_head(&head, &path)?;
        if 12 + u64::from(header_len) + TRAILER as u64 > len {
            return Err(corrupt(8, format!("header length {header_len} does not fit the {len}-byte file")));
        }
        let mut json = vec![0u8; header_len as usize];
        read(&mut json, 12)?;
        let header = decode_header(&json, &path, id)?;
        // Whole-file check before anything is used.
        let body_end = len - TRAILER as u64;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; (1 << 20).min(body_end as usize)];
        let mut at = 0u64;
        while at < body_end {
            let n = (body_end - at).min(buf.len() as u64) as usize;
            read(&mut buf[..n], at)?;
            hasher.update(&buf[..n]);
            at += n as u64;
        }
        let mut trailer = [0u8; TRAILER];
        read(&mut trailer, body_end)?;
        if &trailer[..8] != END || hasher.finalize().as_bytes()[..] != trailer[24..] {
            return Err(corrupt(body_end, "checksum mismatch".into()));
        }
        let slots = u64::from_le_bytes(trailer[8..16].try_into().unwrap_or_default());
        if slots != header.slots() {
            return Err(corrupt(body_end + 8, format!("{slots} slots, the disk has {}", header.slots())));
        }
        Ok(ManifestReader {
            backend,
            key,
            path,
            pos: 12 + u64::from(header_len),
            end: body_end,
            header,
            buf: Vec::new(),
            buf_start: 0,
            slots: 0,
            total: slots,
        })
    }

    /// The header.
    pub fn header(&self) -> &ManifestHeader {
        &self.header
    }

    fn byte(&mut self) -> Result<u8> {
        if self.pos >= self.end {
            return Err(StoreError::corrupt(&self.path, "manifest", self.pos, "body ends inside a record"));
        }
        let in_buf = self.pos.wrapping_sub(self.buf_start);
        if self.pos < self.buf_start || in_buf >= self.buf.len() as u64 {
            let n = (self.end - self.pos).min(1 << 20) as usize;
            self.buf.resize(n, 0);
            self.backend
                .read_at(&self.key, &mut self.buf, self.pos)
                .map_err(StoreError::io(&self.path, "read manifest"))?;
            self.buf_start = self.pos;
        }
        let b = self.buf[(self.pos - self.buf_start) as usize];
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64> {
        let at = self.pos;
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(StoreError::corrupt(&self.path, "manifest", at, "varint longer than 64 bits"))
    }

    /// The next run of slots, or `None` after the last slot.
    pub fn next_run(&mut self) -> Result<Option<(Slot, u64)>> {
        if self.slots == self.total {
            if self.pos != self.end {
                return Err(StoreError::corrupt(&self.path, "manifest", self.pos, "records after the last slot"));
            }
            return Ok(None);
        }
        let at = self.pos;
        let path = self.path.clone();
        let corrupt = |reason: String| StoreError::corrupt(&path, "manifest", at, reason);
        let tag = self.byte()?;
        let (slot, n) = match tag {
            TAG_DATA => {
                let mut id = [0u8; 32];
                for b in &mut id {
                    *b = self.byte()?;
                }
                (Slot::Data(ChunkId(id)), 1)
            }
            TAG_ZERO => (Slot::Zero, self.varint()?),
            TAG_INHERIT if self.header.kind == Kind::Incremental => (Slot::Inherit, self.varint()?),
            other => return Err(corrupt(format!("record tag {other}"))),
        };
        if n == 0 || n > self.total - self.slots {
            return Err(corrupt(format!("a run of {n} slots overflows the disk's {}", self.total)));
        }
        self.slots += n;
        Ok(Some((slot, n)))
    }
}
