//! Chunks: ids, and the record a chunk is stored as inside a pack.
//!
//! Pure encoding and decoding; see docs/store-format.md ("Chunks"). A
//! plain store writes record version 1, an encrypted one version 2, whose
//! stored bytes are a salt, the (compressed) chunk sealed with AES-256-GCM
//! under the salt's subkey, and the tag; the associated data is the
//! record's header fields and the chunk id, so a record cannot be passed
//! off as another chunk's or with other lengths. A reader accepts only the
//! version its store writes.


use serde::{Deserialize, Serialize};

use crate::store::crypto::Crypt;
use crate::store::model::id::ChunkId;
use crate::store::model::malformed::Malformed;
use crate::store::crypto::aead::{SALT, Sealer, TAG};

/// Bytes of a record header.
pub const RECORD_HEADER: usize = 52;
const MAGIC: &[u8; 4] = b"VKCH";
/// Record version of a plain store.
const PLAIN: u8 = 1;
/// Record version of an encrypted store.
const SEALED: u8 = 2;
/// What sealing adds to a record's stored bytes: salt and tag.
pub const SEAL_OVERHEAD: usize = SALT + TAG;
/// The largest chunk a store may use.
pub const MAX_CHUNK: u32 = 4 << 20;
/// The most stored bytes a record may hold: zstd's worst case for a
/// largest chunk, with room to spare.
pub const MAX_STORED: u32 = MAX_CHUNK + (MAX_CHUNK >> 7) + 1024;
/// The longest record: header and the most stored bytes.
pub const MAX_RECORD: u32 = RECORD_HEADER as u32 + MAX_STORED;

/// How a chunk's bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Stored as is.
    None,
    /// Compressed with zstd.
    Zstd,
}

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// How the stored bytes are encoded.
    pub compression: Compression,
    /// The chunk's length.
    pub plain_len: u32,
    /// Bytes after the header.
    pub stored_len: u32,
    /// The chunk the record claims to hold.
    pub id: ChunkId,
    /// CRC-32C of the header (this field as zero) and the stored bytes.
    pub crc: u32,
    /// Whether the stored bytes are sealed (record version 2).
    pub sealed: bool,
}

/// Encodes a record for `id` whose stored bytes are `stored` (for a
/// sealed record, made by [`seal_payload`]).
#[cfg(any(test, feature = "fuzzing"))]
pub fn encode_record(
    id: ChunkId,
    compression: Compression,
    plain_len: u32,
    stored: &[u8],
    sealed: bool,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(&record_header(id, compression, plain_len, &[stored], sealed));
    out.extend_from_slice(stored);
}

/// The header of the record [`encode_record`] makes; the stored bytes,
/// given in pieces (a sealed record's salt, body and tag), follow it.
/// Writers that already hold the pieces write them without copying the
/// chunk into one buffer first.
pub fn record_header(
    id: ChunkId,
    compression: Compression,
    plain_len: u32,
    stored: &[&[u8]],
    sealed: bool,
) -> [u8; RECORD_HEADER] {
    let len: usize = stored.iter().map(|p| p.len()).sum();
    let mut h = fixed_fields(compression, plain_len, len as u32, sealed);
    h[16..48].copy_from_slice(&id.0);
    let crc = record_crc(&h, stored);
    h[48..52].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A record's CRC-32C: of its header's first 48 bytes (`head` holds at
/// least those), then its stored bytes, given in pieces.
pub(crate) fn record_crc(head: &[u8], stored: &[&[u8]]) -> u32 {
    stored.iter().fold(crc32c::crc32c(&head[..48]), |crc, p| crc32c::crc32c_append(crc, p))
}

/// What a CRC mismatch is called, wherever it is found.
pub(crate) fn crc_mismatch(stored: u32, computed: u32) -> String {
    format!("CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")
}

/// The stored bytes of `record` (after its header), checked against the
/// header's length.
fn stored_part<'a>(record: &'a [u8], h: &RecordHeader) -> Result<&'a [u8], Malformed> {
    record
        .get(RECORD_HEADER..RECORD_HEADER + h.stored_len as usize)
        .ok_or_else(|| bad(RECORD_HEADER as u64, "stored bytes cut short"))
}

fn crc_holds(record: &[u8], stored: &[u8], h: &RecordHeader) -> Result<(), Malformed> {
    let crc = record_crc(record, &[stored]);
    if crc != h.crc {
        return Err(bad(48, crc_mismatch(h.crc, crc)));
    }
    Ok(())
}

/// The header with its first 16 bytes filled: magic, version, compression,
/// lengths.
fn fixed_fields(compression: Compression, plain_len: u32, stored_len: u32, sealed: bool) -> [u8; RECORD_HEADER] {
    let mut h = [0u8; RECORD_HEADER];
    h[..4].copy_from_slice(MAGIC);
    h[4] = if sealed { SEALED } else { PLAIN };
    h[5] = match compression {
        Compression::None => 0,
        Compression::Zstd => 1,
    };
    // h[6..8]: reserved, zero.
    h[8..12].copy_from_slice(&plain_len.to_le_bytes());
    h[12..16].copy_from_slice(&stored_len.to_le_bytes());
    h
}

/// What a sealed record's tag is bound to: its header's fixed fields and
/// the chunk id.
fn record_ad(fixed: &[u8], id: &ChunkId) -> [u8; 64] {
    let mut ad = [0u8; 64];
    ad[..16].copy_from_slice(b"vhdkit record v2");
    ad[16..32].copy_from_slice(&fixed[..16]);
    ad[32..].copy_from_slice(&id.0);
    ad
}

/// Seals `payload` (a chunk's bytes, compressed as `compression` says) as
/// the stored bytes of chunk `id`'s record, into `out` (cleared first):
/// a fresh salt, the ciphertext, the tag.
#[cfg(any(test, feature = "fuzzing"))]
pub fn seal_payload(
    keys: &crate::store::crypto::Keys,
    id: ChunkId,
    compression: Compression,
    plain_len: u32,
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    out.clear();
    out.reserve(payload.len() + SEAL_OVERHEAD);
    out.extend_from_slice(&[0; SALT]);
    out.extend_from_slice(payload);
    let SealedEnds { salt, tag } = seal_in_place(keys, id, compression, plain_len, &mut out[SALT..]);
    out[..SALT].copy_from_slice(&salt);
    out.extend_from_slice(&tag);
}

/// What goes around a payload sealed in place: the salt before it and the
/// tag after it.
#[derive(Debug, Clone, Copy, Default)]
pub struct SealedEnds {
    /// The fresh salt whose subkey sealed the payload.
    pub salt: [u8; SALT],
    /// The AEAD tag.
    pub tag: [u8; TAG],
}

/// Seals `payload` in place, as [`seal_payload`] does without a copy:
/// returns the salt that goes before it and the tag that follows.
pub fn seal_in_place(
    keys: &crate::store::crypto::Keys,
    id: ChunkId,
    compression: Compression,
    plain_len: u32,
    payload: &mut [u8],
) -> SealedEnds {
    let salt = crate::store::crypto::aead::random_salt();
    let fixed = fixed_fields(compression, plain_len, (payload.len() + SEAL_OVERHEAD) as u32, true);
    let tag = Sealer::new(keys.record_key(), &salt).seal(0, true, &record_ad(&fixed, &id), payload);
    SealedEnds { salt, tag }
}

/// A record's field at `offset` is wrong.
pub(crate) fn bad(offset: u64, reason: impl Into<String>) -> Malformed {
    Malformed::at("record", offset, reason)
}

/// Decodes a record header from its first [`RECORD_HEADER`] bytes.
pub fn decode_header(bytes: &[u8]) -> Result<RecordHeader, Malformed> {
    let h = bytes.get(..RECORD_HEADER).ok_or_else(|| bad(0, "record header cut short"))?;
    if &h[..4] != MAGIC {
        return Err(bad(0, "bad record signature"));
    }
    let sealed = match h[4] {
        PLAIN => false,
        SEALED => true,
        other => return Err(bad(4, format!("record version {other}"))),
    };
    let compression = match h[5] {
        0 => Compression::None,
        1 => Compression::Zstd,
        other => return Err(bad(5, format!("unknown compression {other}"))),
    };
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let plain_len = u32_at(8);
    let stored_len = u32_at(12);
    if plain_len == 0 || plain_len > MAX_CHUNK {
        return Err(bad(8, format!("plain length {plain_len}")));
    }
    if stored_len > MAX_STORED || (sealed && (stored_len as usize) < SEAL_OVERHEAD) {
        return Err(bad(12, format!("stored length {stored_len}")));
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(&h[16..48]);
    Ok(RecordHeader { compression, plain_len, stored_len, id: ChunkId(id), crc: u32_at(48), sealed })
}

/// Checks a whole record (header and stored bytes) and returns the chunk's
/// plain bytes in `out` (resized to the plain length). `expected` is the id
/// the caller asked for; `crypt` is the store's.
pub fn decode_record(record: &[u8], expected: ChunkId, out: &mut Vec<u8>, crypt: &Crypt) -> Result<(), Malformed> {
    let h = decode_header(record)?;
    out.clear();
    out.resize(h.plain_len as usize, 0);
    decode_record_into(record, expected, out, crypt)
}

/// Checks a whole record like [`decode_record`], writing the plain bytes
/// straight into `dst`, which must be exactly as long as the chunk: a
/// restore decodes into its output buffer without an intermediate copy.
/// On error `dst` holds unspecified bytes. The record itself is never
/// changed (vacuum copies a record's bytes once they check out).
pub fn decode_record_into(record: &[u8], expected: ChunkId, dst: &mut [u8], crypt: &Crypt) -> Result<(), Malformed> {
    let h = decode_header(record)?;
    let stored = stored_part(record, &h)?;
    // A sealed record's tag covers all the CRC does (the header's fields
    // and the chunk id are its associated data): the CRC is there for
    // checks without the key, and is not computed twice.
    if !h.sealed {
        crc_holds(record, stored, &h)?;
    }
    if h.id != expected {
        return Err(bad(16, format!("record holds chunk {} not {}", h.id, expected)));
    }
    if dst.len() != h.plain_len as usize {
        return Err(bad(8, format!("the chunk holds {} bytes, {} were expected", h.plain_len, dst.len())));
    }
    match (crypt, h.sealed) {
        (Crypt::Plain, false) => decode_payload(&h, stored, dst, crypt),
        (Crypt::Sealed(keys), true) => {
            // stored_len >= SEAL_OVERHEAD was checked with the header.
            let (salt, rest) = stored.split_at(SALT);
            let (ciphertext, tag) = rest.split_at(rest.len() - TAG);
            let salt: &[u8; SALT] = salt.try_into().map_err(|_| bad(RECORD_HEADER as u64, "no salt"))?;
            let sealer = Sealer::new(keys.record_key(), salt);
            let ad = record_ad(&record[..16], &h.id);
            let unauthentic = || bad(RECORD_HEADER as u64, "the record fails authentication (wrong key, or altered)");
            if h.compression == Compression::None {
                // Decrypt where the bytes end up.
                if ciphertext.len() != dst.len() {
                    return Err(bad(12, "uncompressed record with differing lengths"));
                }
                dst.copy_from_slice(ciphertext);
                sealer.open(0, true, &ad, dst, tag).map_err(|_| unauthentic())?;
                return check_id(dst, &h.id, crypt);
            }
            SCRATCH.with(|scratch| {
                let mut payload = scratch.borrow_mut();
                payload.clear();
                payload.extend_from_slice(ciphertext);
                sealer.open(0, true, &ad, &mut payload, tag).map_err(|_| unauthentic())?;
                decode_payload(&h, &payload, dst, crypt)
            })
        }
        (Crypt::Locked, _) => Err(bad(0, "the store is encrypted and was opened without its key")),
        (_, sealed) => Err(bad(
            4,
            if sealed { "a sealed record in a plain store" } else { "a plain record in an encrypted store" },
        )),
    }
}

/// Checks a record's CRC alone (decoding a sealed record relies on its tag
/// instead; verify checks both, so it agrees with a check without the key).
pub fn check_crc(record: &[u8]) -> Result<(), Malformed> {
    let h = decode_header(record)?;
    crc_holds(record, stored_part(record, &h)?, &h)
}

thread_local! {
    /// A sealed, compressed record is decrypted here before it is
    /// decompressed: one buffer per thread instead of one per chunk.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Decompresses (or copies) a record's plain payload into `dst` and checks
/// that it is the chunk the header names.
fn decode_payload(h: &RecordHeader, payload: &[u8], dst: &mut [u8], crypt: &Crypt) -> Result<(), Malformed> {
    match h.compression {
        Compression::None => {
            if payload.len() != h.plain_len as usize {
                return Err(bad(12, "uncompressed record with differing lengths"));
            }
            // Hash where the bytes already are, then copy once.
            check_id(payload, &h.id, crypt)?;
            dst.copy_from_slice(payload);
            Ok(())
        }
        Compression::Zstd => {
            let n = zstd::bulk::decompress_to_buffer(payload, dst)
                .map_err(|e| bad(RECORD_HEADER as u64, format!("zstd: {e}")))?;
            if n != h.plain_len as usize {
                return Err(bad(8, format!("decompressed to {n} bytes, not {}", h.plain_len)));
            }
            check_id(dst, &h.id, crypt)
        }
    }
}

fn check_id(plain: &[u8], id: &ChunkId, crypt: &Crypt) -> Result<(), Malformed> {
    let actual = crypt.chunk_id(plain);
    if actual != *id {
        return Err(bad(RECORD_HEADER as u64, format!("contents hash to {actual}, not the chunk id")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;

    use crate::store::crypto::Keys;

    /// A record of `plain` as `crypt`'s store writes it.
    fn record(crypt: &Crypt, plain: &[u8], c: Compression) -> (ChunkId, Vec<u8>) {
        let id = crypt.chunk_id(plain);
        let payload = match c {
            Compression::None => plain.to_vec(),
            Compression::Zstd => zstd::bulk::compress(plain, 1).unwrap(),
        };
        let mut rec = Vec::new();
        match crypt {
            Crypt::Sealed(keys) => {
                let mut stored = Vec::new();
                seal_payload(keys, id, c, plain.len() as u32, &payload, &mut stored);
                encode_record(id, c, plain.len() as u32, &stored, true, &mut rec);
            }
            _ => encode_record(id, c, plain.len() as u32, &payload, false, &mut rec),
        }
        (id, rec)
    }

    #[test]
    fn records_round_trip_and_refuse_any_flipped_byte() {
        let plain: Vec<u8> = (0..5000u32).map(|i| (i % 7) as u8).collect();
        let sealed = Crypt::Sealed(Arc::new(Keys::for_tests(1)));
        for crypt in [Crypt::Plain, sealed] {
            for c in [Compression::None, Compression::Zstd] {
                let (id, mut rec) = record(&crypt, &plain, c);
                let before = rec.clone();
                let mut out = Vec::new();
                decode_record(&rec, id, &mut out, &crypt).unwrap();
                assert_eq!(out, plain);
                assert_eq!(rec, before, "decoding leaves the record as it was");
                // Straight into a buffer of the chunk's length, and only that.
                let mut dst = vec![0u8; plain.len()];
                decode_record_into(&rec, id, &mut dst, &crypt).unwrap();
                assert_eq!(dst, plain);
                assert!(decode_record_into(&rec, id, &mut dst[1..], &crypt).is_err());
                for i in (0..rec.len()).step_by(7) {
                    rec[i] ^= 0x10;
                    assert!(check_crc(&rec).is_err(), "flip at {i} passed the CRC");
                    // A sealed record's own CRC field is not the tag's business.
                    if !(matches!(crypt, Crypt::Sealed(_)) && (48..52).contains(&i)) {
                        assert!(decode_record(&rec, id, &mut out, &crypt).is_err(), "flip at {i} went unnoticed");
                        assert!(decode_record_into(&rec, id, &mut dst, &crypt).is_err(), "flip at {i} (into)");
                    }
                    rec[i] ^= 0x10;
                }
            }
        }
    }

    #[test]
    fn sealed_records_hide_their_bytes_and_open_only_in_their_store_and_as_their_chunk() {
        let plain = b"a marker string the disk holds, repeated; a marker string".repeat(40);
        let keys = Arc::new(Keys::for_tests(1));
        let crypt = Crypt::Sealed(keys.clone());
        let (id, rec) = record(&crypt, &plain, Compression::None);
        assert!(!rec.windows(15).any(|w| w == &plain[..15]), "plaintext in the record");
        assert_ne!(id, ChunkId::of(&plain), "the name is the plain hash");
        let mut out = Vec::new();
        // Another store's key, a plain reader, a keyless one.
        let other = Crypt::Sealed(Arc::new(Keys::for_tests(2)));
        assert!(decode_record(&rec, id, &mut out, &other).is_err());
        assert!(decode_record(&rec, id, &mut out, &Crypt::Plain).is_err());
        assert!(decode_record(&rec, id, &mut out, &Crypt::Locked).is_err());
        // A plain record offered to an encrypted store.
        let (pid, prec) = record(&Crypt::Plain, &plain, Compression::None);
        assert!(decode_record(&prec, pid, &mut out, &crypt).is_err());
        // The header rewritten to name another chunk, with its CRC fixed:
        // the tag binds the id.
        let (other_id, _) = record(&crypt, b"other bytes", Compression::None);
        let mut forged = rec.clone();
        forged[16..48].copy_from_slice(&other_id.0);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&forged[..48]), &forged[RECORD_HEADER..]);
        forged[48..52].copy_from_slice(&crc.to_le_bytes());
        let err = decode_record(&forged, other_id, &mut out, &crypt).unwrap_err();
        assert!(err.to_string().contains("authentication"), "{err}");
    }

    #[test]
    fn ids_round_trip_through_hex() {
        let id = ChunkId::of(b"abc");
        assert_eq!(id.to_hex().parse::<ChunkId>().unwrap(), id);
        assert_eq!(Crypt::Plain.chunk_id(b"abc"), id);
        assert_eq!(id.to_hex(), "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85");
    }
}
