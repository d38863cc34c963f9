//! Planning reads of many chunks: records lying next to each other in a
//! pack become one ranged read. Pure: no I/O, so its rules are tested on
//! their own.
//!
//! A request to object storage costs tens of milliseconds whatever its
//! size, so reading 512 KiB per request wastes most of a connection's
//! time. Chunks a backup writes in order land next to each other in the
//! packs its workers fill, so a window of wanted chunks usually becomes a
//! few reads of several MiB each.

use crate::store::format::index_file::Location;
use crate::store::model::id::{ChunkId, PackId};

/// One chunk to read, at the copy chosen for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Want {
    pub id: ChunkId,
    pub loc: Location,
}

/// One ranged read of a pack and the chunks it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fetch {
    pub pack: PackId,
    /// First byte read.
    pub start: u64,
    /// The byte after the last one read.
    pub end: u64,
    /// The chunks inside, by offset.
    pub members: Vec<Want>,
}

impl Fetch {
    /// Bytes the read transfers.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
}

/// Groups `wants` into ranged reads: per pack, by offset, a record joins
/// the read before it when it starts at most `max_gap` bytes after that
/// read's end and the read stays within `max_request` bytes (a record
/// larger than that is read alone). A chunk wanted twice is read once;
/// every chunk wanted is in exactly one read.
/// The reads come out in the order their first chunk was wanted, so the
/// one a reader waits for goes first.
pub(crate) fn coalesce(wants: &[Want], max_gap: u64, max_request: u64) -> Vec<Fetch> {
    // Each distinct chunk with the position it was first wanted at, by
    // place in its pack. (Distinct by id, not by place: every chunk asked
    // for must come out, even where a damaged index puts two at one place.)
    let mut seen = std::collections::HashSet::new();
    let mut order: Vec<(usize, Want)> = wants.iter().copied().enumerate().filter(|(_, w)| seen.insert(w.id)).collect();
    order.sort_by_key(|(i, w)| (w.loc.pack, w.loc.offset, *i));
    let mut fetches: Vec<(usize, Fetch)> = Vec::new();
    for (first, w) in order {
        // A damaged index may claim an offset near the end of the range:
        // such a record is read alone, fails, and is read from its copies.
        let end = w.loc.offset.saturating_add(u64::from(w.loc.length));
        if let Some((at, f)) = fetches.last_mut()
            && f.pack == w.loc.pack
            && w.loc.offset >= f.end
            && w.loc.offset - f.end <= max_gap
            && end - f.start <= max_request
        {
            f.end = end;
            f.members.push(w);
            *at = (*at).min(first);
            continue;
        }
        fetches.push((first, Fetch { pack: w.loc.pack, start: w.loc.offset, end, members: vec![w] }));
    }
    fetches.sort_by_key(|(first, _)| *first);
    fetches.into_iter().map(|(_, f)| f).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(n: u8, pack: u8, offset: u64, length: u32) -> Want {
        Want {
            id: ChunkId([n; 32]),
            loc: Location { pack: PackId([pack; 16]), offset, length, plain_len: length * 2 },
        }
    }

    #[test]
    fn neighbours_in_a_pack_are_one_read() {
        let w = [want(1, 1, 24, 100), want(2, 1, 124, 100), want(3, 1, 224, 50)];
        let f = coalesce(&w, 0, 1 << 20);
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].start, f[0].end, f[0].members.len()), (24, 274, 3));
    }

    #[test]
    fn gaps_sizes_and_packs_split_reads() {
        // A gap of 11 bytes against a limit of 10; then the size limit.
        let w = [want(1, 1, 0, 100), want(2, 1, 111, 100), want(3, 1, 211, 100), want(4, 2, 311, 10)];
        let f = coalesce(&w, 10, 199);
        let spans: Vec<_> = f.iter().map(|f| (f.pack, f.start, f.end)).collect();
        let p1 = PackId([1; 16]);
        let p2 = PackId([2; 16]);
        assert_eq!(spans, vec![(p1, 0, 100), (p1, 111, 211), (p1, 211, 311), (p2, 311, 321)]);
        // A gap within the limit is read through.
        let f = coalesce(&w[..2], 11, 1 << 20);
        assert_eq!((f.len(), f[0].len()), (1, 211));
    }

    #[test]
    fn a_record_larger_than_the_limit_is_read_alone() {
        let f = coalesce(&[want(1, 1, 0, 500), want(2, 1, 500, 10)], 0, 100);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].len(), 500);
    }

    #[test]
    fn the_first_wanted_goes_first_and_repeats_are_read_once() {
        // Wanted: pack 2's chunk, then pack 1's, then pack 2's again.
        let w = [want(9, 2, 0, 10), want(1, 1, 0, 10), want(9, 2, 0, 10), want(8, 2, 10, 10)];
        let f = coalesce(&w, 0, 1 << 20);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].pack, PackId([2; 16]));
        assert_eq!(f[0].members.len(), 2);
        assert_eq!(f[1].pack, PackId([1; 16]));
    }

    #[test]
    fn two_chunks_claimed_at_one_place_are_both_read() {
        let f = coalesce(&[want(1, 1, 0, 100), want(2, 1, 0, 100)], 0, 1 << 20);
        let ids: Vec<_> = f.iter().flat_map(|f| f.members.iter().map(|m| m.id)).collect();
        assert_eq!(ids, vec![ChunkId([1; 32]), ChunkId([2; 32])]);
    }

    #[test]
    fn an_offset_at_the_end_of_the_range_does_not_overflow() {
        let f = coalesce(&[want(1, 1, 0, 10), want(2, 1, u64::MAX - 5, 100)], 1 << 20, 8 << 20);
        assert_eq!(f.len(), 2);
        assert!(f.iter().all(|f| f.len() <= 100), "{f:?}");
    }

    #[test]
    fn overlapping_records_never_merge_backwards() {
        // A damaged index could claim overlapping records: each is still
        // read whole, never with a negative gap.
        let f = coalesce(&[want(1, 1, 0, 100), want(2, 1, 50, 100)], 1 << 20, 1 << 20);
        assert_eq!(f.len(), 2);
        assert!(f.iter().all(|f| f.members.iter().all(|m| m.loc.offset >= f.start
            && m.loc.offset + u64::from(m.loc.length) <= f.end)));
    }
}
