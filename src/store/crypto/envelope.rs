//! Envelopes: how a whole object (an index file, a manifest, a restore
//! point, a job-log entry, a vacuum record, a pack's index) is sealed in an
//! encrypted store. Pure encoding and decoding; the sealing backend
//! (`backend::sealing`) puts it under every such key.
//!
//! ```text
//! header (32):  "VKSEAL01" | segment size u32 | header CRC u32 | salt (16)
//! segments:     ciphertext (segment size; the last 0..=segment size) | tag (16) | CRC-32C u32
//! ```
//!
//! The plaintext is cut into segments sealed one by one (AES-256-GCM under
//! the subkey of the salt, see `aead`), so a reader streams a large
//! manifest, or reads a range of it, without holding it whole. Segment `i`
//! is sealed with nonce (`i`, last?) and associated data = the header and
//! the object's key: a segment moved within the object, an object cut short
//! or extended at a segment boundary, a header altered, or an object copied
//! under another key all fail to open. An object of `n` plaintext bytes has
//! `max(1, ceil(n / segment))` segments (an empty one has one empty
//! segment). The CRC-32C of each segment's ciphertext and tag, and that
//! of the header (its other 28 bytes), let `verify --no-key` find damage
//! without the key.

use crate::store::model::malformed::Malformed as Error;
use crate::store::crypto::Keys;
use crate::store::crypto::aead::{SALT, Sealer, TAG};

const MAGIC: &[u8; 8] = b"VKSEAL01";
/// Bytes of the header.
pub const HEADER: usize = 32;
/// The segment size this crate writes.
pub const SEGMENT: u32 = 64 * 1024;
/// The segment sizes a reader accepts.
const SEGMENTS: std::ops::RangeInclusive<u32> = 4096..=(4 << 20);
/// Bytes each segment adds: tag and CRC.
pub const PER_SEGMENT: u64 = (TAG + 4) as u64;

/// Bytes of the sealed object holding `plain` bytes in `segment`-byte
/// segments.
pub fn sealed_len(plain: u64, segment: u32) -> u64 {
    let segments = plain.div_ceil(u64::from(segment)).max(1);
    HEADER as u64 + plain + segments * PER_SEGMENT
}

/// The most bytes a sealed object of `plain` bytes can have, whatever
/// segment size its header names (the smallest segment costs most).
pub fn max_sealed_len(plain: u64) -> u64 {
    sealed_len(plain, *SEGMENTS.start())
}

/// The plaintext bytes of a sealed object of `sealed` bytes, if that is a
/// size such an object can have.
pub fn plain_len(sealed: u64, segment: u32) -> Option<u64> {
    let body = sealed.checked_sub(HEADER as u64)?;
    let full = u64::from(segment) + PER_SEGMENT;
    // Every segment but the last is full; the last holds its tag and CRC
    // and up to a whole segment.
    let segments = body.div_ceil(full).max(1);
    let plain = body.checked_sub(segments.checked_mul(PER_SEGMENT)?)?;
    // A last segment with less than its tag and CRC: no size of ours.
    let last = plain.checked_sub((segments - 1) * u64::from(segment))?;
    (last <= u64::from(segment) && (last > 0 || segments == 1)).then_some(plain)
}

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Plaintext bytes per segment.
    pub segment: u32,
    /// The object's salt.
    pub salt: [u8; SALT],
    bytes: [u8; HEADER],
}

impl Header {
    /// A new header with a fresh salt.
    fn new(segment: u32) -> Header {
        let salt = crate::store::crypto::aead::random_salt();
        let mut bytes = [0u8; HEADER];
        bytes[..8].copy_from_slice(MAGIC);
        bytes[8..12].copy_from_slice(&segment.to_le_bytes());
        bytes[16..].copy_from_slice(&salt);
        let crc = header_crc(&bytes);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
        Header { segment, salt, bytes }
    }

    /// The header's bytes.
    pub fn bytes(&self) -> &[u8; HEADER] {
        &self.bytes
    }
}

/// Decodes a header from the first [`HEADER`] bytes of an object.
pub fn decode_header(bytes: &[u8]) -> Result<Header, Error> {
    let h: [u8; HEADER] = bytes.get(..HEADER).and_then(|h| h.try_into().ok()).ok_or_else(|| bad(0, "cut short"))?;
    if &h[..8] != MAGIC {
        return Err(bad(0, "not a sealed object (bad signature)"));
    }
    let segment = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if !SEGMENTS.contains(&segment) {
        return Err(bad(8, format!("segment size {segment}")));
    }
    let crc = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
    if crc != header_crc(&h) {
        return Err(bad(12, format!("header CRC mismatch (stored {crc:#010x}, computed {:#010x})", header_crc(&h))));
    }
    let mut salt = [0u8; SALT];
    salt.copy_from_slice(&h[16..]);
    Ok(Header { segment, salt, bytes: h })
}

/// The CRC-32C of a header's bytes but its CRC field.
fn header_crc(h: &[u8; HEADER]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&h[..12]), &h[16..])
}

/// Where segment `index` of an object lies: offset, and bytes (with tag
/// and CRC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentAt {
    /// Offset in the sealed object.
    pub offset: u64,
    /// Bytes, ciphertext, tag and CRC.
    pub len: usize,
    /// Offset of its plaintext in the object's plaintext.
    pub plain_offset: u64,
    /// Whether it is the last.
    pub last: bool,
}

/// The layout of one sealed object: which segment holds what.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    header: Header,
    plain: u64,
    segments: u64,
}

impl Layout {
    /// The layout of an object of `sealed` bytes with header `header`.
    pub fn new(header: Header, sealed: u64) -> Result<Layout, Error> {
        let plain = plain_len(sealed, header.segment)
            .ok_or_else(|| bad(0, format!("{sealed} bytes is no size a sealed object can have")))?;
        let segments = plain.div_ceil(u64::from(header.segment)).max(1);
        Ok(Layout { header, plain, segments })
    }

    /// Plaintext bytes.
    pub fn plain_len(&self) -> u64 {
        self.plain
    }

    /// Segments.
    pub fn segments(&self) -> u64 {
        self.segments
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Where segment `index` lies (`index` < [`Layout::segments`]).
    pub fn segment(&self, index: u64) -> SegmentAt {
        let s = u64::from(self.header.segment);
        let plain_offset = index * s;
        let plain = self.plain.saturating_sub(plain_offset).min(s);
        SegmentAt {
            offset: HEADER as u64 + index * (s + PER_SEGMENT),
            len: (plain + PER_SEGMENT) as usize,
            plain_offset,
            last: index + 1 == self.segments,
        }
    }

    /// The segments holding plaintext bytes `start..end` (an empty range
    /// when `start == end`).
    pub fn segments_for(&self, start: u64, end: u64) -> std::ops::Range<u64> {
        let s = u64::from(self.header.segment);
        if start >= end {
            return 0..0;
        }
        start / s..end.div_ceil(s).min(self.segments)
    }
}

/// Opens the segments of one object.
pub struct Opener {
    sealer: Sealer,
    ad: Vec<u8>,
}

impl Opener {
    /// The opener for the object `name` with header `header`.
    pub fn new(keys: &Keys, name: &str, header: &Header) -> Opener {
        Opener { sealer: Sealer::new(keys.envelope_key(), &header.salt), ad: associated_data(header, name) }
    }

    /// Checks and decrypts segment `at` in place (`bytes` as stored: its
    /// ciphertext, tag and CRC); returns its plaintext.
    pub fn open<'b>(&self, index: u64, at: &SegmentAt, bytes: &'b mut [u8]) -> Result<&'b [u8], Error> {
        let len = bytes.len();
        if len != at.len || len < PER_SEGMENT as usize {
            return Err(bad(at.offset, format!("segment {index} is {len} bytes, not {}", at.len)));
        }
        check_crc(bytes).map_err(|r| bad(at.offset, format!("segment {index}: {r}")))?;
        let (ct, rest) = bytes.split_at_mut(len - PER_SEGMENT as usize);
        self.sealer
            .open(index, at.last, &self.ad, ct, &rest[..TAG])
            .map_err(|_| bad(at.offset, format!("segment {index} fails authentication (wrong key, or altered)")))?;
        Ok(ct)
    }
}

/// Header, then the object's key: what every segment is bound to.
fn associated_data(header: &Header, name: &str) -> Vec<u8> {
    let mut ad = Vec::with_capacity(HEADER + name.len());
    ad.extend_from_slice(&header.bytes);
    ad.extend_from_slice(name.as_bytes());
    ad
}

fn check_crc(segment: &[u8]) -> Result<(), String> {
    let (body, crc) = segment.split_at(segment.len().saturating_sub(4));
    let stored = u32::from_le_bytes(crc.try_into().map_err(|_| "cut short".to_string())?);
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(format!("CRC mismatch (stored {stored:#010x}, computed {computed:#010x})"));
    }
    Ok(())
}

/// Seals a whole object: `plain` as object `name`.
pub fn seal(keys: &Keys, name: &str, plain: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(sealed_len(plain.len() as u64, SEGMENT) as usize);
    let mut w = Writer::new(keys, name);
    out.extend_from_slice(w.header());
    w.push(plain, &mut |b| {
        out.extend_from_slice(b);
        Ok(())
    })
    .and_then(|()| {
        w.finish(&mut |b| {
            out.extend_from_slice(b);
            Ok(())
        })
    })
    .expect("writing to memory does not fail");
    out
}

/// Opens a whole sealed object `name`; every segment must authenticate.
pub fn open(keys: &Keys, name: &str, sealed: &[u8]) -> Result<Vec<u8>, Error> {
    let layout = Layout::new(decode_header(sealed)?, sealed.len() as u64)?;
    let opener = Opener::new(keys, name, layout.header());
    let mut plain = Vec::with_capacity(layout.plain_len() as usize);
    let mut segment = Vec::new();
    for i in 0..layout.segments() {
        let at = layout.segment(i);
        let bytes = (at.offset as usize).checked_add(at.len).and_then(|end| sealed.get(at.offset as usize..end));
        segment.clear();
        segment.extend_from_slice(bytes.ok_or_else(|| bad(at.offset, format!("segment {i} cut short")))?);
        plain.extend_from_slice(opener.open(i, &at, &mut segment)?);
    }
    Ok(plain)
}

/// Checks what can be checked without the key: header, size, every
/// segment's CRC. Returns the plaintext length.
pub fn check(sealed: &[u8]) -> Result<u64, Error> {
    let layout = Layout::new(decode_header(sealed)?, sealed.len() as u64)?;
    for i in 0..layout.segments() {
        let at = layout.segment(i);
        let bytes = sealed.get(at.offset as usize..at.offset as usize + at.len).ok_or_else(|| bad(at.offset, "cut"))?;
        check_segment(i, &at, bytes)?;
    }
    Ok(layout.plain_len())
}

/// Checks one stored segment's length and CRC (no key needed).
pub fn check_segment(index: u64, at: &SegmentAt, bytes: &[u8]) -> Result<(), Error> {
    if bytes.len() != at.len {
        return Err(bad(at.offset, format!("segment {index} is {} bytes, not {}", bytes.len(), at.len)));
    }
    check_crc(bytes).map_err(|r| bad(at.offset, format!("segment {index}: {r}")))
}

/// Seals an object as a stream: the header first, then a segment each time
/// one fills, the last at [`Writer::finish`]. Holds one segment of
/// plaintext.
pub struct Writer {
    sealer: Sealer,
    header: Header,
    ad: Vec<u8>,
    buf: Vec<u8>,
    counter: u64,
    written: u64,
}

/// Where a [`Writer`] puts sealed bytes.
pub type Sink<'a> = dyn FnMut(&[u8]) -> std::io::Result<()> + 'a;

impl Writer {
    /// Starts sealing object `name`; write [`Writer::header`] first.
    pub fn new(keys: &Keys, name: &str) -> Writer {
        let header = Header::new(SEGMENT);
        Writer {
            sealer: Sealer::new(keys.envelope_key(), &header.salt),
            ad: associated_data(&header, name),
            header,
            buf: Vec::with_capacity(SEGMENT as usize + PER_SEGMENT as usize),
            counter: 0,
            written: 0,
        }
    }

    /// The header's bytes.
    pub fn header(&self) -> &[u8; HEADER] {
        self.header.bytes()
    }

    /// Plaintext bytes taken so far.
    pub fn position(&self) -> u64 {
        self.written
    }

    /// Takes plaintext; each segment that fills goes to `out`. A segment is
    /// sealed only once more bytes follow it (or at `finish`), since only
    /// then is it known whether it is the last.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Sink<'_>) -> std::io::Result<()> {
        let segment = self.header.segment as usize;
        self.written += bytes.len() as u64;
        while !bytes.is_empty() {
            if self.buf.len() == segment {
                self.emit(false, out)?;
            }
            let n = (segment - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Seals the last segment.
    pub fn finish(mut self, out: &mut Sink<'_>) -> std::io::Result<()> {
        self.emit(true, out)
    }

    fn emit(&mut self, last: bool, out: &mut Sink<'_>) -> std::io::Result<()> {
        let tag = self.sealer.seal(self.counter, last, &self.ad, &mut self.buf);
        self.buf.extend_from_slice(&tag);
        let crc = crc32c::crc32c(&self.buf);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        out(&self.buf)?;
        self.buf.clear();
        self.counter += 1;
        Ok(())
    }
}

/// A field of the sealed object at `offset` is wrong.
fn bad(offset: u64, reason: impl Into<String>) -> Error {
    Error::at("sealed object", offset, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::for_tests(5)
    }

    #[test]
    fn objects_of_any_length_round_trip_and_have_the_size_the_layout_says() {
        let s = SEGMENT as usize;
        for len in [0, 1, 100, s - 1, s, s + 1, 2 * s, 3 * s + 17] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let sealed = seal(&keys(), "manifests/a.manifest", &plain);
            assert_eq!(sealed.len() as u64, sealed_len(len as u64, SEGMENT), "{len}");
            assert_eq!(plain_len(sealed.len() as u64, SEGMENT), Some(len as u64), "{len}");
            assert_eq!(open(&keys(), "manifests/a.manifest", &sealed).unwrap(), plain, "{len}");
            assert_eq!(check(&sealed).unwrap(), len as u64);
        }
    }

    #[test]
    fn every_size_near_a_segment_boundary_is_judged_without_overflow() {
        // Sizes whose last segment is shorter than a tag and CRC (found by
        // review: the subtraction went below zero).
        let full = u64::from(SEGMENT) + PER_SEGMENT;
        for k in 0..3u64 {
            for extra in 0..=2 * PER_SEGMENT {
                let sealed = HEADER as u64 + k * full + extra;
                if let Some(p) = plain_len(sealed, SEGMENT) {
                    assert_eq!(sealed_len(p, SEGMENT), sealed, "{sealed}");
                }
            }
        }
        for sealed in [0, 1, 31, 32, 51, 52, u64::MAX, u64::MAX - 20] {
            if let Some(p) = plain_len(sealed, SEGMENT) {
                assert_eq!(sealed_len(p, SEGMENT), sealed);
            }
        }
    }

    #[test]
    fn impossible_sizes_are_refused() {
        let s = u64::from(SEGMENT);
        // One byte short of a header and an empty segment; a full segment
        // followed by an empty one (an empty last segment exists only alone).
        assert_eq!(plain_len(HEADER as u64 + PER_SEGMENT - 1, SEGMENT), None);
        assert_eq!(plain_len(HEADER as u64 + 2 * (s + PER_SEGMENT) - s, SEGMENT), None);
        for plain in 0..3 * s + 5 {
            if plain % 997 == 0 || plain % s < 3 || plain % s > s - 3 {
                assert_eq!(plain_len(sealed_len(plain, SEGMENT), SEGMENT), Some(plain));
            }
        }
    }

    #[test]
    fn a_streamed_object_equals_a_whole_one_and_reads_by_segment() {
        let plain: Vec<u8> = (0..200_000u32).map(|i| (i % 13) as u8).collect();
        let mut sealed = Vec::new();
        let mut w = Writer::new(&keys(), "index/x.idx");
        sealed.extend_from_slice(w.header());
        let mut out = |b: &[u8]| {
            sealed.extend_from_slice(b);
            Ok(())
        };
        for piece in plain.chunks(7000) {
            w.push(piece, &mut out).unwrap();
        }
        w.finish(&mut out).unwrap();
        assert_eq!(open(&keys(), "index/x.idx", &sealed).unwrap(), plain);
        // A range read: only the segments that hold it.
        let layout = Layout::new(decode_header(&sealed).unwrap(), sealed.len() as u64).unwrap();
        let opener = Opener::new(&keys(), "index/x.idx", layout.header());
        let range = layout.segments_for(70_000, 140_000);
        assert_eq!(range, 1..3);
        for i in range {
            let at = layout.segment(i);
            let mut bytes = sealed[at.offset as usize..at.offset as usize + at.len].to_vec();
            let got = opener.open(i, &at, &mut bytes).unwrap();
            assert_eq!(got, &plain[at.plain_offset as usize..at.plain_offset as usize + got.len()]);
        }
    }

    #[test]
    fn any_change_moves_renames_or_truncation_fail_to_open() {
        let plain: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        let sealed = seal(&keys(), "points/p.point", &plain);
        assert!(open(&keys(), "points/q.point", &sealed).is_err(), "under another key");
        assert!(open(&Keys::for_tests(6), "points/p.point", &sealed).is_err(), "with another master key");
        for i in (0..sealed.len()).step_by(4099) {
            let mut b = sealed.clone();
            b[i] ^= 0x40;
            assert!(open(&keys(), "points/p.point", &b).is_err(), "flip at {i}");
        }
        // Cut at a segment boundary: what remains has a size the layout
        // allows, but its last segment was not sealed as the last.
        let s = SEGMENT as usize + PER_SEGMENT as usize;
        let cut = &sealed[..HEADER + 2 * s];
        assert!(plain_len(cut.len() as u64, SEGMENT).is_some());
        assert!(open(&keys(), "points/p.point", cut).is_err(), "truncated");
        assert!(check(cut).is_ok(), "without the key, a clean cut looks sound");
        // Two segments swapped (CRCs intact): each fails its nonce.
        let mut swapped = sealed.clone();
        let (a, b) = (HEADER, HEADER + s);
        let first = sealed[a..a + s].to_vec();
        swapped.copy_within(b..b + s, a);
        swapped[b..b + s].copy_from_slice(&first);
        assert!(check(&swapped).is_ok());
        assert!(open(&keys(), "points/p.point", &swapped).is_err(), "segments swapped");
        // Without the key, a flipped byte is found by a CRC, wherever it is.
        for i in (0..sealed.len()).step_by(997).chain([0, 9, 13, 20, 31]) {
            let mut flipped = sealed.clone();
            flipped[i] ^= 1;
            assert!(check(&flipped).is_err(), "flip at {i}");
        }
    }

    #[test]
    fn equal_plaintexts_seal_differently() {
        let a = seal(&keys(), "log/x.json", b"same");
        let b = seal(&keys(), "log/x.json", b"same");
        assert_ne!(a, b);
    }
}
