//! The VHDX log: a ring of entries that a writer fills before it updates the
//! BAT, metadata or data in place. A file whose current header has a non-zero
//! LogGuid was not closed cleanly, and the log may hold newer bytes than the
//! file itself; a reader must replay the active sequence before reading
//! anything but the headers.
//!
//! This module finds the active sequence and turns it into a list of writes.
//! It never writes: `disk` applies the writes to an in-memory overlay, so a
//! backup tool leaves its source image untouched.
//!
//! Finding the active sequence follows [MS-VHDX] §2.3.3 rather than qemu:
//! candidates are chains of valid entries with consecutive sequence numbers
//! whose newest entry's Tail points at one of the chain's entries; the chain
//! with the highest head sequence number wins, and replay starts at the entry
//! the head's Tail names.
//!
//! May import: `format::vhdx` and `format`'s shared pieces.

mod entry;

pub use entry::{
    DataDescriptor, DataSector, LogEntry, LogEntryHeader, LogWrite, MAX_ENTRY_PADDING, MAX_FILE_OFFSET, ZeroDescriptor,
    build_entry,
};

use entry::{Ring, parse_entry};

use crate::format::{FormatError, Guid, Result};

/// Log sectors (and entry alignment) are 4 KiB.
pub const LOG_SECTOR: u64 = 4096;
/// The largest log this reader holds in memory. Hyper-V and qemu write 1 MiB
/// logs; anything above this is refused as unsupported rather than allocated.
pub const MAX_LOG_LENGTH: u64 = 64 << 20;

/// The sequence to replay, oldest entry first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveSequence {
    /// The entries to replay, oldest first.
    pub entries: Vec<LogEntry>,
}

impl ActiveSequence {
    /// The newest entry's header.
    pub fn head(&self) -> &LogEntryHeader {
        // Never empty: `find_active_sequence` only builds non-empty sequences.
        &self.entries[self.entries.len() - 1].header
    }

    /// Every write in replay order.
    pub fn writes(&self) -> impl Iterator<Item = &LogWrite> {
        self.entries.iter().flat_map(|e| e.writes.iter())
    }

    /// The file's logical size after replay: at least the head's
    /// LastFileOffset and the end of every write.
    pub fn replayed_size(&self, file_size: u64) -> u64 {
        self.writes().map(LogWrite::end).fold(file_size.max(self.head().last_file_offset), u64::max)
    }
}

/// What the scan remembers about a valid entry.
#[derive(Debug, Clone, Copy)]
struct Summary {
    sequence_number: u64,
    length: u64,
    tail: u64,
}

/// Finds the sequence to replay in the log region `log` (read from absolute
/// `log_offset`) for a file whose current header carries `log_guid`.
///
/// Returns `Ok(None)` when `log_guid` is nil (a clean file: stale entries are
/// never replayed). A non-nil GUID with no valid sequence is corruption.
pub fn find_active_sequence(log: &[u8], log_offset: u64, log_guid: Guid) -> Result<Option<ActiveSequence>> {
    if log_guid.is_nil() {
        return Ok(None);
    }
    let ring = Ring { bytes: log, offset: log_offset };
    let n = ring.len();
    if n == 0 || !n.is_multiple_of(LOG_SECTOR) {
        return Err(FormatError::corrupt(
            "VHDX log",
            log_offset,
            format!("log length {n} is not a positive multiple of 4 KiB"),
        ));
    }
    if n > MAX_LOG_LENGTH {
        return Err(FormatError::unsupported(format!(
            "a {n}-byte VHDX log (at most {MAX_LOG_LENGTH} bytes are replayed)"
        )));
    }
    let slots = (n / LOG_SECTOR) as usize;
    // Each position is parsed at most once, and checksums are charged to a
    // budget of a few passes over the log: the scan is linear in the log.
    let mut cache: Vec<Option<Option<Summary>>> = vec![None; slots];
    let mut budget = 8 * n;
    let mut exhausted = None;
    let mut summary_at = |pos: u64| -> Option<Summary> {
        let slot = (pos / LOG_SECTOR) as usize;
        *cache[slot].get_or_insert_with(|| {
            let parsed = parse_entry(&ring, pos, log_guid, &mut budget);
            if let Err(e @ FormatError::Corrupt { structure: "VHDX log", .. }) = &parsed {
                exhausted.get_or_insert(e.clone());
            }
            parsed.ok().map(|e| Summary {
                sequence_number: e.header.sequence_number,
                length: u64::from(e.header.entry_length),
                tail: u64::from(e.header.tail),
            })
        })
    };

    // (head sequence number, position of the tail entry, positions in order)
    let mut best: Option<(u64, Vec<u64>)> = None;
    let mut cur_tail = 0u64;
    let mut old_tail = 0u64;
    loop {
        let mut chain: Vec<(u64, Summary)> = Vec::new();
        let mut pos = cur_tail;
        let mut covered = 0u64;
        while covered < n {
            let Some(s) = summary_at(pos) else { break };
            if let Some((_, last)) = chain.last()
                && s.sequence_number != last.sequence_number.wrapping_add(1)
            {
                break;
            }
            chain.push((pos, s));
            covered += s.length;
            pos = (pos + s.length) % n;
        }
        let valid_from = chain.last().and_then(|(_, head)| chain.iter().position(|(p, _)| *p == head.tail));
        match valid_from {
            Some(from) => {
                let head_seq = chain[chain.len() - 1].1.sequence_number;
                if best.as_ref().is_none_or(|(s, _)| head_seq > *s) {
                    best = Some((head_seq, chain[from..].iter().map(|(p, _)| *p).collect()));
                }
                cur_tail = pos;
            }
            None => cur_tail = (cur_tail + LOG_SECTOR) % n,
        }
        if cur_tail <= old_tail {
            break;
        }
        old_tail = cur_tail;
    }

    if let Some(e) = exhausted {
        return Err(e);
    }
    let Some((_, positions)) = best else {
        return Err(FormatError::corrupt(
            "VHDX log",
            log_offset,
            format!("the header's log GUID {log_guid} is set but the log holds no valid sequence"),
        ));
    };
    let mut budget = u64::MAX;
    let entries =
        positions.into_iter().map(|p| parse_entry(&ring, p, log_guid, &mut budget)).collect::<Result<Vec<_>>>()?;
    Ok(Some(ActiveSequence { entries }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: usize = 1 << 20;

    fn sector(fill: u8) -> Box<[u8; 4096]> {
        let mut s = Box::new([fill; 4096]);
        s[0] = 0xAB;
        s[4095] = 0xCD;
        s
    }

    fn place(log: &mut [u8], pos: usize, entry: &[u8]) {
        for (i, b) in entry.iter().enumerate() {
            log[(pos + i) % log.len()] = *b;
        }
    }

    #[test]
    fn a_clean_log_is_never_replayed() {
        let log = vec![0u8; LOG];
        assert_eq!(find_active_sequence(&log, 1 << 20, Guid::NIL).unwrap(), None);
    }

    #[test]
    fn replays_one_entry_with_data_and_zero_writes() {
        let g = Guid::new_random();
        let writes = vec![
            LogWrite::Data { file_offset: 8 << 20, sector: sector(0x5A) },
            LogWrite::Zero { file_offset: 12 << 20, length: 1 << 20 },
        ];
        let e = build_entry(7, 0, g, 16 << 20, 20 << 20, &writes);
        let mut log = vec![0u8; LOG];
        place(&mut log, 0, &e);
        let seq = find_active_sequence(&log, 1 << 20, g).unwrap().unwrap();
        assert_eq!(seq.entries.len(), 1);
        assert_eq!(seq.writes().cloned().collect::<Vec<_>>(), writes);
        assert_eq!(seq.head().sequence_number, 7);
        assert_eq!(seq.replayed_size(16 << 20), 20 << 20);
    }

    /// Review finding: a zero write near 2^64 made the replayed file's size
    /// saturate at 2^64, so every later bounds check against it passed.
    #[test]
    fn a_write_past_any_vhdx_file_is_refused() {
        let g = Guid::new_random();
        for writes in [
            vec![LogWrite::Zero { file_offset: u64::MAX - 4095, length: 1 << 20 }],
            vec![LogWrite::Zero { file_offset: MAX_FILE_OFFSET, length: 4096 }],
            vec![LogWrite::Data { file_offset: MAX_FILE_OFFSET, sector: sector(1) }],
        ] {
            let e = build_entry(7, 0, g, 1 << 20, 1 << 20, &writes);
            let mut log = vec![0u8; LOG];
            place(&mut log, 0, &e);
            assert!(find_active_sequence(&log, 1 << 20, g).is_err(), "{writes:?} accepted");
        }
        // The largest write that fits is accepted.
        let fits = vec![LogWrite::Zero { file_offset: MAX_FILE_OFFSET - 4096, length: 4096 }];
        let e = build_entry(7, 0, g, 1 << 20, 1 << 20, &fits);
        let mut log = vec![0u8; LOG];
        place(&mut log, 0, &e);
        assert!(find_active_sequence(&log, 1 << 20, g).unwrap().is_some());
    }

    #[test]
    fn the_newest_chain_wins_and_replay_starts_at_the_tail() {
        let g = Guid::new_random();
        let w = |b| vec![LogWrite::Data { file_offset: 4 << 20, sector: sector(b) }];
        let mut log = vec![0u8; LOG];
        // An old chain (seq 1..2) and a newer one (seq 10..12) whose head's
        // tail names its second entry: entry 10 is already flushed.
        let e1 = build_entry(1, 0, g, 1 << 20, 1 << 20, &w(1));
        let e2 = build_entry(2, 0, g, 1 << 20, 1 << 20, &w(2));
        place(&mut log, 0, &e1);
        place(&mut log, e1.len(), &e2);
        let base = 64 * 1024;
        let e10 = build_entry(10, base as u32, g, 1 << 20, 1 << 20, &w(10));
        let p11 = base + e10.len();
        let e11 = build_entry(11, base as u32, g, 1 << 20, 1 << 20, &w(11));
        let p12 = p11 + e11.len();
        let e12 = build_entry(12, p11 as u32, g, 1 << 20, 1 << 20, &w(12));
        place(&mut log, base, &e10);
        place(&mut log, p11, &e11);
        place(&mut log, p12, &e12);
        let seq = find_active_sequence(&log, 1 << 20, g).unwrap().unwrap();
        let seqs: Vec<u64> = seq.entries.iter().map(|e| e.header.sequence_number).collect();
        assert_eq!(seqs, vec![11, 12]);
    }

    #[test]
    fn finds_a_sequence_that_wraps_around_the_ring() {
        let g = Guid::new_random();
        let w = vec![LogWrite::Data { file_offset: 4 << 20, sector: sector(3) }];
        let mut log = vec![0u8; LOG];
        let e5 = build_entry(5, (LOG - 8192) as u32, g, 1 << 20, 1 << 20, &w);
        assert_eq!(e5.len(), 8192);
        let start = LOG - 4096; // e5 wraps: one sector at the end, one at the start
        let e5 = build_entry(5, start as u32, g, 1 << 20, 1 << 20, &w);
        place(&mut log, start, &e5);
        let e6 = build_entry(6, start as u32, g, 1 << 20, 1 << 20, &w);
        place(&mut log, 4096, &e6);
        let seq = find_active_sequence(&log, 1 << 20, g).unwrap().unwrap();
        let seqs: Vec<u64> = seq.entries.iter().map(|e| e.header.sequence_number).collect();
        assert_eq!(seqs, vec![5, 6]);
    }

    #[test]
    fn entries_of_another_guid_or_with_a_bad_crc_are_ignored() {
        let g = Guid::new_random();
        let w = vec![LogWrite::Zero { file_offset: 4 << 20, length: 4096 }];
        let mut log = vec![0u8; LOG];
        place(&mut log, 0, &build_entry(3, 0, Guid::new_random(), 1 << 20, 1 << 20, &w));
        assert!(find_active_sequence(&log, 1 << 20, g).is_err());
        let mut e = build_entry(3, 0, g, 1 << 20, 1 << 20, &w);
        e[100] ^= 1;
        place(&mut log, 0, &e);
        assert!(find_active_sequence(&log, 1 << 20, g).is_err());
        e[100] ^= 1;
        place(&mut log, 0, &e);
        assert!(find_active_sequence(&log, 1 << 20, g).unwrap().is_some());
    }

    #[test]
    fn a_data_sector_with_the_wrong_sequence_spoils_its_entry() {
        let g = Guid::new_random();
        let w = vec![LogWrite::Data { file_offset: 4 << 20, sector: sector(3) }];
        let mut e = build_entry(9, 0, g, 1 << 20, 1 << 20, &w);
        e[4096 + 4] ^= 1; // sequence_high of the data sector
        super::super::crc::seal_crc(&mut e, 4..8);
        let mut log = vec![0u8; LOG];
        place(&mut log, 0, &e);
        assert!(find_active_sequence(&log, 1 << 20, g).is_err());
    }
}
