//! Packs: append-only files of chunk records that end in their own index.
//!
//! See docs/store-format.md ("Packs"). Writing goes through an
//! [`ObjectWriter`], so a pack becomes visible only when sealed and
//! committed; decoding the trailer and index is pure. In an encrypted
//! store the pack index is an envelope (see `crypto::envelope`) named by
//! the pack's key, and the trailer's signature says so.


use std::sync::Arc;

use crate::store::backend::{Backend, ObjectWriter};
use crate::store::format::record::{Compression, RECORD_HEADER, crc_mismatch, decode_header, record_crc, record_header};
use crate::store::model::id::ChunkId;
use crate::store::crypto::{Crypt, Keys, envelope};
use crate::store::error::{Result, StoreError};
use crate::store::model::id::PackId;
use crate::store::model::malformed::Malformed;

const HEADER_MAGIC: &[u8; 8] = b"VKPACK01";
const INDEX_MAGIC: &[u8; 8] = b"VKPIDX01";
/// The trailer's signature when the pack index is sealed.
const SEALED_INDEX_MAGIC: &[u8; 8] = b"VKPIDXS1";
const END_MAGIC: &[u8; 8] = b"VKPEND01";
/// Bytes at the start of a pack: magic and pack id.
pub const PACK_HEADER: u64 = 24;
/// Bytes of the trailer.
pub const TRAILER: usize = 32;
/// Bytes per pack index entry.
pub const ENTRY: usize = 44;

/// Where one record lies in its pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    /// The chunk.
    pub id: ChunkId,
    /// Offset of the record (its header) in the pack.
    pub offset: u64,
    /// Header and stored bytes.
    pub length: u32,
}

/// A pack being filled.
pub struct PackWriter {
    id: PackId,
    writer: Box<dyn ObjectWriter>,
    entries: Vec<PackEntry>,
    keys: Option<Arc<Keys>>,
    /// Small pieces (record headers, salts, tags) not yet written: they go
    /// out with the next large piece's turn, so a sealed record costs two
    /// write calls, not four (a local writer is not buffered).
    pending: Vec<u8>,
}

/// Pieces up to this size wait in `PackWriter::pending`.
const SMALL_PIECE: usize = 4096;

impl PackWriter {
    /// Starts a new pack with a fresh id, for a store sealed as `crypt`
    /// says (records given to [`PackWriter::add`] must be sealed likewise).
    pub fn create(backend: &dyn Backend, crypt: &Crypt) -> Result<PackWriter> {
        let keys = match crypt {
            Crypt::Plain => None,
            Crypt::Sealed(k) => Some(k.clone()),
            Crypt::Locked => return Err(locked()),
        };
        let id = PackId::new_random();
        let key = id.key();
        let mut writer = backend.create(&key).map_err(StoreError::io(backend.describe(&key), "create pack"))?;
        let mut header = HEADER_MAGIC.to_vec();
        header.extend_from_slice(&id.0);
        writer.write(&header).map_err(StoreError::io(backend.describe(&key), "write pack"))?;
        Ok(PackWriter { id, writer, entries: Vec::new(), keys, pending: Vec::with_capacity(2 * SMALL_PIECE) })
    }

    /// The pack's id.
    pub fn id(&self) -> PackId {
        self.id
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.writer.position() + self.pending.len() as u64
    }

    /// Writes `bytes` after what is pending; small pieces only wait.
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.len() <= SMALL_PIECE && self.pending.len() + bytes.len() <= 2 * SMALL_PIECE {
            self.pending.extend_from_slice(bytes);
            return Ok(());
        }
        self.flush_pending()?;
        self.writer.write(bytes)
    }

    fn flush_pending(&mut self) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            self.writer.write(&self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }

    /// Appends a record whose stored bytes are the pieces `stored` (for an
    /// encrypted store: salt, sealed body and tag, as `record::seal_in_place`
    /// makes them); returns where it went.
    pub fn add(
        &mut self,
        id: ChunkId,
        compression: Compression,
        plain_len: u32,
        stored: &[&[u8]],
    ) -> std::io::Result<PackEntry> {
        let header = record_header(id, compression, plain_len, stored, self.keys.is_some());
        let len: usize = stored.iter().map(|p| p.len()).sum();
        let length = u32::try_from(header.len() + len).map_err(std::io::Error::other)?;
        let entry = PackEntry { id, offset: self.bytes_written(), length };
        self.put(&header)?;
        for piece in stored.iter().filter(|p| !p.is_empty()) {
            self.put(piece)?;
        }
        self.entries.push(entry);
        Ok(entry)
    }

    /// Writes the pack index and trailer, flushes, and commits the pack
    /// under its key. Returns the id and its entries.
    pub fn seal(mut self) -> std::io::Result<(PackId, Vec<PackEntry>)> {
        let index_offset = self.bytes_written();
        let mut index = Vec::with_capacity(self.entries.len() * ENTRY);
        for e in &self.entries {
            index.extend_from_slice(&e.id.0);
            index.extend_from_slice(&e.offset.to_le_bytes());
            index.extend_from_slice(&e.length.to_le_bytes());
        }
        let (index, magic) = match &self.keys {
            Some(keys) => (envelope::seal(keys, &self.id.key(), &index), SEALED_INDEX_MAGIC),
            None => (index, INDEX_MAGIC),
        };
        let mut trailer = Vec::with_capacity(TRAILER);
        trailer.extend_from_slice(magic);
        trailer.extend_from_slice(&index_offset.to_le_bytes());
        trailer.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        trailer.extend_from_slice(&crc32c::crc32c(&index).to_le_bytes());
        trailer.extend_from_slice(END_MAGIC);
        self.put(&index)?;
        self.put(&trailer)?;
        self.flush_pending()?;
        self.writer.commit()?;
        Ok((self.id, self.entries))
    }
}

/// What a trailer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// Where the pack index starts.
    pub index_offset: u64,
    /// Entries in it.
    pub count: u32,
    /// The CRC-32C of the index as stored.
    pub crc: u32,
    /// Whether the index is sealed (an encrypted store's pack).
    pub sealed: bool,
}

/// Decodes the last [`TRAILER`] bytes of a pack of `pack_len` bytes.
pub fn decode_trailer(bytes: &[u8], pack_len: u64) -> std::result::Result<Trailer, Malformed> {
    let bad = |reason: String| Malformed::at("pack trailer", pack_len.saturating_sub(TRAILER as u64), reason);
    let sealed = bytes.get(..8) == Some(&SEALED_INDEX_MAGIC[..]);
    if bytes.len() != TRAILER || (&bytes[..8] != INDEX_MAGIC && !sealed) || &bytes[24..] != END_MAGIC {
        return Err(bad("no pack trailer (the pack was not sealed, or its end is damaged)".into()));
    }
    let index_offset = u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default());
    let count = u32::from_le_bytes(bytes[16..20].try_into().unwrap_or_default());
    let crc = u32::from_le_bytes(bytes[20..24].try_into().unwrap_or_default());
    let plain_len = u64::from(count) * ENTRY as u64;
    // Every entry names a record of at least a header's length before the
    // index: a count larger than that space allows is a lie, refused before
    // anything is allocated for it.
    if u64::from(count) * RECORD_HEADER as u64 > index_offset.saturating_sub(PACK_HEADER) {
        return Err(bad(format!("{count} entries cannot fit before the pack index at {index_offset}")));
    }
    // A sealed index's length follows from its envelope's own header,
    // checked when it is opened; here it must at least hold an envelope.
    let index_len = pack_len.checked_sub(TRAILER as u64).and_then(|end| end.checked_sub(index_offset));
    let fits = index_offset >= PACK_HEADER
        && index_len.is_some_and(|n| {
            // A sealed index holds `count` entries: no more than the
            // envelope of that many bytes, so a reader never allocates more
            // for an index than its count allows.
            if sealed {
                n >= envelope::HEADER as u64 + envelope::PER_SEGMENT && n <= envelope::max_sealed_len(plain_len)
            } else {
                n == plain_len
            }
        });
    if !fits {
        return Err(bad(format!("pack index at {index_offset} with {count} entries does not fit the {pack_len}-byte pack")));
    }
    Ok(Trailer { index_offset, count, crc, sealed })
}

/// Decodes and checks a pack index as stored in the pack whose key is
/// `pack_key` (opening it with `crypt`'s keys when it is sealed); every
/// record must lie between the header and the index.
pub fn decode_pack_index(
    stored: &[u8],
    trailer: &Trailer,
    crypt: &Crypt,
    pack_key: &str,
) -> std::result::Result<Vec<PackEntry>, Malformed> {
    let bad = |reason: String| Malformed::at("pack index", trailer.index_offset, reason);
    if crc32c::crc32c(stored) != trailer.crc {
        return Err(bad("pack index CRC mismatch".into()));
    }
    let opened;
    let bytes = match (trailer.sealed, crypt) {
        (false, Crypt::Plain) => stored,
        (true, Crypt::Sealed(keys)) => {
            opened = envelope::open(keys, pack_key, stored).map_err(|e| bad(format!("sealed pack index: {e}")))?;
            &opened[..]
        }
        (_, Crypt::Locked) => return Err(bad("the store is encrypted and was opened without its key".into())),
        (true, Crypt::Plain) => return Err(bad("a sealed pack index in a plain store".into())),
        (false, Crypt::Sealed(_)) => return Err(bad("a plain pack index in an encrypted store".into())),
    };
    if bytes.len() != trailer.count as usize * ENTRY {
        return Err(bad("pack index length does not match its count".into()));
    }
    let mut out = Vec::with_capacity(trailer.count as usize);
    for e in bytes.chunks_exact(ENTRY) {
        let mut id = [0u8; 32];
        id.copy_from_slice(&e[..32]);
        let offset = u64::from_le_bytes(e[32..40].try_into().unwrap_or_default());
        let length = u32::from_le_bytes(e[40..44].try_into().unwrap_or_default());
        let fits = offset >= PACK_HEADER
            && (length as usize) >= RECORD_HEADER
            && offset.checked_add(u64::from(length)).is_some_and(|end| end <= trailer.index_offset);
        if !fits {
            return Err(bad(format!("record at {offset} (+{length}) lies outside the pack's records")));
        }
        out.push(PackEntry { id: ChunkId(id), offset, length });
    }
    Ok(out)
}

/// Checks the first [`PACK_HEADER`] bytes of pack `id`.
pub fn check_pack_header(header: &[u8], id: PackId) -> std::result::Result<(), Malformed> {
    if header.get(..8) != Some(&HEADER_MAGIC[..]) || header.get(8..24) != Some(&id.0[..]) {
        return Err(Malformed::at("pack header", 0, "bad signature or pack id"));
    }
    Ok(())
}

/// Reads and checks a pack's header, trailer and index.
pub fn read_pack_index(backend: &dyn Backend, id: PackId, crypt: &Crypt) -> Result<Vec<PackEntry>> {
    let key = id.key();
    let path = backend.describe(&key);
    let len = backend.stat(&key).map_err(StoreError::io(&path, "read pack"))?.size;
    if len < PACK_HEADER + TRAILER as u64 {
        return Err(StoreError::corrupt(path, "pack", 0, format!("{len} bytes is too short for a pack")));
    }
    let mut header = [0u8; PACK_HEADER as usize];
    backend.read_at(&key, &mut header, 0).map_err(StoreError::io(&path, "read pack"))?;
    check_pack_header(&header, id).map_err(StoreError::malformed(&path))?;
    let mut trailer = [0u8; TRAILER];
    backend.read_at(&key, &mut trailer, len - TRAILER as u64).map_err(StoreError::io(&path, "read pack"))?;
    let t = decode_trailer(&trailer, len).map_err(StoreError::malformed(&path))?;
    // The trailer bounds the index by the pack's size.
    let mut index = vec![0u8; (len - TRAILER as u64 - t.index_offset) as usize];
    backend.read_at(&key, &mut index, t.index_offset).map_err(StoreError::io(&path, "read pack"))?;
    decode_pack_index(&index, &t, crypt, &key).map_err(StoreError::malformed(&path))
}

fn locked() -> StoreError {
    StoreError::Invalid("the store is encrypted and was opened without its key".into())
}
/// What a walk of one sealed pack without its key found.
#[derive(Debug, Default)]
pub struct SealedPackWalk {
    /// Records walked.
    pub records: u64,
    /// Records whose CRC does not hold: chunk, byte offset, why.
    pub bad_crcs: Vec<(ChunkId, u64, String)>,
    /// What stopped the walk: the pack's structure is broken there.
    pub problem: Option<String>,
}

/// Walks sealed pack `id` without its key: header, trailer, the sealed
/// index's CRC and envelope, then every record in turn by its lengths up
/// to the index, checking each record's CRC (tags need the key). `tick`
/// gets bytes checked and says whether to go on.
pub fn walk_sealed_pack(backend: &dyn Backend, id: PackId, tick: &mut dyn FnMut(u64) -> bool) -> SealedPackWalk {
    let mut out = SealedPackWalk::default();
    let key = id.key();
    let fail = |mut out: SealedPackWalk, why: String| {
        out.problem = Some(why);
        out
    };
    let len = match backend.stat(&key) {
        Ok(o) => o.size,
        Err(e) => return fail(out, format!("unreadable: {e}")),
    };
    if len < PACK_HEADER + TRAILER as u64 {
        return fail(out, format!("{len} bytes is too short for a pack"));
    }
    let mut head = [0u8; PACK_HEADER as usize];
    let mut trailer = [0u8; TRAILER];
    if let Err(e) =
        backend.read_at(&key, &mut head, 0).and_then(|()| backend.read_at(&key, &mut trailer, len - TRAILER as u64))
    {
        return fail(out, format!("unreadable: {e}"));
    }
    if let Err(r) = check_pack_header(&head, id) {
        return fail(out, r.to_string());
    }
    let t = match decode_trailer(&trailer, len) {
        Ok(t) if t.sealed => t,
        Ok(_) => return fail(out, "a plain pack index in an encrypted store".into()),
        Err(r) => return fail(out, r.to_string()),
    };
    // The trailer bounds the index by the pack's size.
    let mut index = vec![0u8; (len - TRAILER as u64 - t.index_offset) as usize];
    if let Err(e) = backend.read_at(&key, &mut index, t.index_offset) {
        return fail(out, format!("unreadable: {e}"));
    }
    if crc32c::crc32c(&index) != t.crc {
        return fail(out, format!("pack index at byte {}: CRC mismatch", t.index_offset));
    }
    match envelope::check(&index) {
        Ok(n) if n == u64::from(t.count) * ENTRY as u64 => {}
        Ok(n) => return fail(out, format!("the sealed pack index holds {n} bytes for {} entries", t.count)),
        Err(e) => return fail(out, format!("sealed pack index at byte {}: {e}", t.index_offset)),
    }
    // The records, one after another, up to the index.
    let mut pos = PACK_HEADER;
    let mut record = Vec::new();
    while pos < t.index_offset {
        let mut h = [0u8; RECORD_HEADER];
        if pos + RECORD_HEADER as u64 > t.index_offset {
            return fail(out, format!("a record header at byte {pos} runs into the index"));
        }
        if let Err(e) = backend.read_at(&key, &mut h, pos) {
            return fail(out, format!("unreadable at byte {pos}: {e}"));
        }
        let header = match decode_header(&h) {
            Ok(header) if header.sealed => header,
            Ok(_) => return fail(out, format!("a plain record at byte {pos} in an encrypted store")),
            // Records are found by their lengths: past a bad header the rest
            // cannot be told apart.
            Err(e) => return fail(out, format!("no record at byte {pos}: {e}")),
        };
        let end = pos + RECORD_HEADER as u64 + u64::from(header.stored_len);
        if end > t.index_offset {
            return fail(out, format!("the record at byte {pos} runs into the index"));
        }
        record.resize(header.stored_len as usize, 0);
        if let Err(e) = backend.read_at(&key, &mut record, pos + RECORD_HEADER as u64) {
            return fail(out, format!("unreadable at byte {pos}: {e}"));
        }
        let crc = record_crc(&h, &[&record]);
        if crc != header.crc {
            out.bad_crcs.push((header.id, pos, crc_mismatch(header.crc, crc)));
        }
        out.records += 1;
        if !tick(end - pos) {
            return out;
        }
        pos = end;
    }
    if out.records != u64::from(t.count) {
        let why = format!("{} records, the trailer says {}", out.records, t.count);
        return fail(out, why);
    }
    out
}

