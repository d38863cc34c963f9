//! Changed-range lists: what a change tracker says changed since the
//! previous backup, in the shapes trackers give it.
//!
//! Three JSON shapes are read:
//! - ours: `[{"offset": N, "length": N}, ...]`;
//! - Hyper-V's `GetVirtualDiskChanges` (RCT), as PowerShell serialises it:
//!   `{"ChangedByteOffsets": [...], "ChangedByteLengths": [...],
//!   "ProcessedByteLength": N}` (a single number where PowerShell unrolled
//!   a one-element array);
//! - VMware's `QueryChangedDiskAreas` (CBT): `{"startOffset": N, "length":
//!   N, "changedArea": [{"start": N, "length": N}, ...]}`.
//!
//! A tracker may answer for only part of the disk: RCT's
//! `ProcessedByteLength` says how far from the request's `ByteOffset` it
//! got (the caller must ask again for the rest; the answer does not repeat
//! the offset, so a list for a request that did not start at 0 carries
//! `"ByteOffset": N` beside it, and merged answers carry neither), CBT's `startOffset` and `length` which
//! area its answer covers. A list says nothing about the bytes outside that
//! area, so a backup refuses a list that does not cover the whole disk
//! ([`StoreError::PartialChangeList`]) rather than take silence for "no
//! change": a wrong incremental is worse than none. A caller that wants the
//! uncovered bytes read instead says so with [`ChangeList::cover_rest`].
//! Our own shape has no such field and covers the whole disk.
//!
//! Whatever the shape, ranges are normalised: empty ones dropped, the rest
//! sorted and merged where they overlap or touch. A range that reaches past
//! the disk's end is refused when the backup starts (the list belongs to
//! another disk), before anything is written.
//!
//! The text may be UTF-8 (with or without a byte-order mark) or UTF-16 with
//! a byte-order mark, as Windows PowerShell 5.1 writes files by default
//! ([`crate::json_text`]).

use std::ops::Range;

use serde::Deserialize;
use serde_json::Value;

use crate::store::error::{Result, StoreError};

/// Byte ranges of a virtual disk that changed, sorted and merged.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChangeList {
    ranges: Vec<Range<u64>>,
    /// The bytes the tracker answered for; `None`: the whole disk.
    covered: Option<Range<u64>>,
}

#[derive(Deserialize)]
struct OffsetLength {
    offset: u64,
    length: u64,
}

#[derive(Deserialize)]
struct VmwareArea {
    start: u64,
    length: u64,
}

fn bad(reason: impl Into<String>) -> StoreError {
    StoreError::BadChangeList(reason.into())
}

/// A number or an array of numbers (PowerShell unrolls one-element arrays).
fn numbers(v: &Value, field: &str) -> Result<Vec<u64>> {
    let one = |v: &Value| v.as_u64().ok_or_else(|| bad(format!("{field}: {v} is not a byte count")));
    match v {
        Value::Array(items) => items.iter().map(one).collect(),
        other => Ok(vec![one(other)?]),
    }
}

fn range(offset: u64, length: u64) -> Result<Range<u64>> {
    let end = offset.checked_add(length).ok_or_else(|| bad(format!("the range at {offset} (+{length}) overflows")))?;
    Ok(offset..end)
}

impl ChangeList {
    /// A list from byte ranges in any order, overlapping or not.
    pub fn from_ranges(ranges: impl IntoIterator<Item = Range<u64>>) -> ChangeList {
        let mut v: Vec<Range<u64>> = ranges.into_iter().filter(|r| r.end > r.start).collect();
        v.sort_by_key(|r| r.start);
        let mut out: Vec<Range<u64>> = Vec::with_capacity(v.len());
        for r in v {
            match out.last_mut() {
                Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
                _ => out.push(r),
            }
        }
        ChangeList { ranges: out, covered: None }
    }

    /// Parses any of the three shapes in the module documentation, in
    /// UTF-8 or UTF-16 with a byte-order mark.
    pub fn from_json(text: &[u8]) -> Result<ChangeList> {
        let text = crate::json_text(text).map_err(bad)?;
        let v: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let mut covered = None;
        let ranges = match &v {
            Value::Array(_) => {
                let list: Vec<OffsetLength> = serde_json::from_value(v)
                    .map_err(|e| bad(format!("expected [{{\"offset\": N, \"length\": N}}, ...]: {e}")))?;
                list.into_iter().map(|r| range(r.offset, r.length)).collect::<Result<Vec<_>>>()?
            }
            Value::Object(map) if map.contains_key("ChangedByteOffsets") || map.contains_key("ChangedByteLengths") => {
                let get = |k: &str| map.get(k).ok_or_else(|| bad(format!("{k} is missing")));
                let offsets = numbers(get("ChangedByteOffsets")?, "ChangedByteOffsets")?;
                let lengths = numbers(get("ChangedByteLengths")?, "ChangedByteLengths")?;
                if offsets.len() != lengths.len() {
                    return Err(bad(format!("{} offsets but {} lengths", offsets.len(), lengths.len())));
                }
                if map.get("ByteOffset").is_some_and(|o| !o.is_null())
                    && map.get("ProcessedByteLength").is_none_or(|p| p.is_null())
                {
                    return Err(bad("ByteOffset without ProcessedByteLength: how much the answer covers is unknown"));
                }
                if let Some(p) = map.get("ProcessedByteLength").filter(|p| !p.is_null()) {
                    let p = p.as_u64().ok_or_else(|| bad(format!("ProcessedByteLength: {p} is not a byte count")))?;
                    // Relative to the request's ByteOffset, which the
                    // answer does not repeat: a caller that asked from
                    // elsewhere than 0 adds it.
                    let from = match map.get("ByteOffset").filter(|o| !o.is_null()) {
                        Some(o) => o.as_u64().ok_or_else(|| bad(format!("ByteOffset: {o} is not a byte count")))?,
                        None => 0,
                    };
                    covered = Some(range(from, p)?);
                }
                offsets.into_iter().zip(lengths).map(|(o, l)| range(o, l)).collect::<Result<Vec<_>>>()?
            }
            Value::Object(map) if map.contains_key("changedArea") => {
                let areas: Vec<VmwareArea> = serde_json::from_value(map["changedArea"].clone())
                    .map_err(|e| bad(format!("changedArea: expected [{{\"start\": N, \"length\": N}}, ...]: {e}")))?;
                match (map.get("startOffset"), map.get("length")) {
                    (None, None) => {}
                    (Some(start), Some(length)) => {
                        let n =
                            |v: &Value, f: &str| v.as_u64().ok_or_else(|| bad(format!("{f}: {v} is not a byte count")));
                        covered = Some(range(n(start, "startOffset")?, n(length, "length")?)?);
                    }
                    _ => return Err(bad("startOffset and length come together: the area the answer covers")),
                }
                areas.into_iter().map(|a| range(a.start, a.length)).collect::<Result<Vec<_>>>()?
            }
            _ => {
                return Err(bad(
                    "not a range list: expected [{\"offset\",\"length\"}], {\"ChangedByteOffsets\",\"ChangedByteLengths\"} \
                     or {\"changedArea\"}",
                ));
            }
        };
        let mut list = ChangeList::from_ranges(ranges);
        list.covered = covered;
        Ok(list)
    }

    /// The bytes the tracker answered for (`None`: the whole disk).
    pub fn covered(&self) -> Option<Range<u64>> {
        self.covered.clone()
    }

    /// This list with every byte of a `size`-byte disk that the tracker did
    /// not answer for counted as changed, so a backup reads it: for a
    /// caller who would rather read more than ask the tracker again.
    pub fn cover_rest(&self, size: u64) -> ChangeList {
        let Some(c) = &self.covered else { return self.clone() };
        let mut ranges = self.ranges.clone();
        ranges.push(0..c.start.min(size));
        ranges.push(c.end.min(size)..size);
        ChangeList::from_ranges(ranges)
    }

    /// The ranges, sorted and merged.
    pub fn ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }

    /// Bytes the list covers.
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }

    /// Refuses a list that reaches past a disk of `size` bytes, or that
    /// answers for less than all of it.
    pub(crate) fn check_fits(&self, size: u64) -> Result<()> {
        if let Some(c) = &self.covered
            && (c.start > 0 || c.end < size)
        {
            return Err(StoreError::PartialChangeList { covered: c.clone(), size });
        }
        match self.ranges.last() {
            Some(r) if r.end > size => Err(bad(format!(
                "the range {}..{} reaches past the end of the {size}-byte disk: the list belongs to another disk",
                r.start, r.end
            ))),
            _ => Ok(()),
        }
    }

    /// The chunk slots the ranges touch, sorted and merged.
    pub(crate) fn slots(&self, chunk: u64) -> Vec<Range<u64>> {
        let mut out: Vec<Range<u64>> = Vec::with_capacity(self.ranges.len());
        for r in &self.ranges {
            let s = r.start / chunk..r.end.div_ceil(chunk);
            match out.last_mut() {
                Some(last) if last.end >= s.start => last.end = last.end.max(s.end),
                _ => out.push(s),
            }
        }
        out
    }
}

impl From<Vec<Range<u64>>> for ChangeList {
    fn from(v: Vec<Range<u64>>) -> ChangeList {
        ChangeList::from_ranges(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_reads_to_the_same_normalised_list() {
        let ours =
            br#"[{"offset": 4096, "length": 4096}, {"offset": 0, "length": 512}, {"offset": 6000, "length": 10000}]"#;
        let hyperv = br#"{"ChangedByteOffsets": [0, 4096, 6000], "ChangedByteLengths": [512, 4096, 10000]}"#;
        let vmware = br#"{"startOffset": 0, "length": 1048576, "changedArea": [{"start": 6000, "length": 10000},
            {"start": 0, "length": 512}, {"start": 4096, "length": 4096}]}"#;
        let want = [0..512, 4096..16000];
        for text in [&ours[..], &hyperv[..], &vmware[..]] {
            assert_eq!(ChangeList::from_json(text).unwrap().ranges(), &want[..], "{}", String::from_utf8_lossy(text));
        }
        let unrolled = br#"{"ChangedByteOffsets": 1024, "ChangedByteLengths": 10}"#;
        assert_eq!(ChangeList::from_json(unrolled).unwrap().ranges().to_vec(), vec![1024u64..1034]);
    }

    /// The issue's own list: RCT answered for the first 100 MiB of a disk
    /// that changed at 200 MiB. Taken as complete it would read nothing.
    #[test]
    fn a_list_that_covers_part_of_the_disk_is_refused_unless_the_rest_is_read() {
        let mib = 1u64 << 20;
        let rct = br#"{"ChangedByteOffsets":[],"ChangedByteLengths":[],"ProcessedByteLength":104857600}"#;
        let list = ChangeList::from_json(rct).unwrap();
        assert_eq!(list.covered(), Some(0..100 * mib));
        let err = list.check_fits(256 * mib).unwrap_err();
        assert!(
            matches!(&err, StoreError::PartialChangeList { covered, size } if covered.end == 100 * mib && *size == 256 * mib)
        );
        assert_eq!(err.kind(), crate::ErrorKind::InvalidInput);
        let whole = list.cover_rest(256 * mib);
        assert!(whole.check_fits(256 * mib).is_ok());
        assert_eq!(whole.ranges().to_vec(), vec![(100 * mib)..(256 * mib)]);
        // Processed to the end (or past it, as RCT rounds up): complete.
        let done = br#"{"ChangedByteOffsets":[4096],"ChangedByteLengths":[512],"ProcessedByteLength":268435456}"#;
        assert!(ChangeList::from_json(done).unwrap().check_fits(256 * mib).is_ok());
        // CBT: an answer for one area in the middle; the rest is read around it.
        let cbt =
            br#"{"startOffset": 1048576, "length": 2097152, "changedArea": [{"start": 1048576, "length": 4096}]}"#;
        let list = ChangeList::from_json(cbt).unwrap();
        assert!(matches!(list.check_fits(4 * mib), Err(StoreError::PartialChangeList { .. })));
        assert_eq!(list.cover_rest(4 * mib).ranges(), &[0..mib + 4096, 3 * mib..4 * mib]);
        let half = br#"{"startOffset": 0, "changedArea": []}"#;
        assert!(matches!(ChangeList::from_json(half), Err(StoreError::BadChangeList(_))));
        // PowerShell 5.1's default file encoding.
        let mut utf16 = vec![0xFF, 0xFE];
        for u in std::str::from_utf8(rct).unwrap().encode_utf16() {
            utf16.extend_from_slice(&u.to_le_bytes());
        }
        assert_eq!(ChangeList::from_json(&utf16).unwrap(), ChangeList::from_json(rct).unwrap());
    }

    #[test]
    fn bad_lists_are_refused_with_a_reason() {
        for text in [
            &br#"{"ChangedByteOffsets": [1, 2], "ChangedByteLengths": [1]}"#[..],
            br#"[{"offset": 18446744073709551615, "length": 2}]"#,
            br#"[{"offset": -1, "length": 2}]"#,
            br#"{"something": []}"#,
            b"not json",
        ] {
            assert!(matches!(ChangeList::from_json(text), Err(StoreError::BadChangeList(_))));
        }
        let list = ChangeList::from_ranges([0..10, 100..200]);
        assert!(list.check_fits(200).is_ok());
        assert!(list.check_fits(199).is_err());
        assert_eq!(ChangeList::from_ranges([10..20, 1000..1001, 0..1, 2048..4096]).slots(1024), vec![0..1, 2..4]);
    }
}
