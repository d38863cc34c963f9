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

use binrw::binrw;

use crate::format::{FormatError, Guid, Result, Structure};

/// Log sectors (and entry alignment) are 4 KiB.
pub const LOG_SECTOR: u64 = 4096;
/// The largest log this reader holds in memory. Hyper-V and qemu write 1 MiB
/// logs; anything above this is refused as unsupported rather than allocated.
pub const MAX_LOG_LENGTH: u64 = 64 << 20;

/// The 64-byte header at the start of every log entry.
#[binrw]
#[brw(little, magic = b"loge")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogEntryHeader {
    /// CRC-32C over the whole entry with this field zeroed.
    pub checksum: u32,
    /// Bytes in the entry, a multiple of 4 KiB.
    pub entry_length: u32,
    /// Log offset of the oldest entry of the sequence this entry ends.
    pub tail: u32,
    /// The sequence number: entries of one log run count up.
    pub sequence_number: u64,
    /// Descriptors in the entry.
    pub descriptor_count: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// The log GUID the entry belongs to (the header's LogGuid).
    pub log_guid: Guid,
    /// The file size that was stable when the entry was written.
    pub flushed_file_offset: u64,
    /// A file size every structure fits in after replay.
    pub last_file_offset: u64,
}

impl Structure for LogEntryHeader {
    const NAME: &'static str = "VHDX log entry";
    const SIZE: usize = 64;
    const MAGIC: &'static str = "loge";
}

/// A descriptor that zeroes a range of the file.
#[binrw]
#[brw(little, magic = b"zero")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZeroDescriptor {
    /// Reserved, zero.
    pub reserved: u32,
    /// Bytes to zero.
    pub zero_length: u64,
    /// Where in the file the write lands.
    pub file_offset: u64,
    /// The sequence number: entries of one log run count up.
    pub sequence_number: u64,
}

impl Structure for ZeroDescriptor {
    const NAME: &'static str = "VHDX log zero descriptor";
    const SIZE: usize = 32;
    const MAGIC: &'static str = "zero";
}

/// A descriptor that writes one 4 KiB sector, whose first 8 and last 4 bytes
/// it carries itself (the data sector's signature and sequence fields
/// displace them).
#[binrw]
#[brw(little, magic = b"desc")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataDescriptor {
    /// The last 4 bytes of the sector (the data sector keeps 4084 in the middle).
    pub trailing_bytes: [u8; 4],
    /// The first 8 bytes of the sector.
    pub leading_bytes: [u8; 8],
    /// Where in the file the write lands.
    pub file_offset: u64,
    /// The sequence number: entries of one log run count up.
    pub sequence_number: u64,
}

impl Structure for DataDescriptor {
    const NAME: &'static str = "VHDX log data descriptor";
    const SIZE: usize = 32;
    const MAGIC: &'static str = "desc";
}

/// A 4 KiB data sector: 4084 bytes of payload between sequence halves.
#[binrw]
#[brw(little, magic = b"data")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSector {
    /// High half of the entry's sequence number.
    pub sequence_high: u32,
    /// The sector's bytes 8..4092.
    pub data: [u8; 4084],
    /// Low half of the entry's sequence number.
    pub sequence_low: u32,
}

impl Structure for DataSector {
    const NAME: &'static str = "VHDX log data sector";
    const SIZE: usize = 4096;
    const MAGIC: &'static str = "data";
}

/// One write the log asks for, in file coordinates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogWrite {
    /// Write this 4 KiB sector at `file_offset`.
    Data {
        /// Where the sector lands in the file.
        file_offset: u64,
        /// The sector's bytes.
        sector: Box<[u8; 4096]>,
    },
    /// Write `length` zero bytes at `file_offset`.
    Zero {
        /// Where the zeros start in the file.
        file_offset: u64,
        /// How many bytes.
        length: u64,
    },
}

impl LogWrite {
    /// The first byte past the write.
    pub fn end(&self) -> u64 {
        match self {
            LogWrite::Data { file_offset, .. } => file_offset.saturating_add(LOG_SECTOR),
            LogWrite::Zero { file_offset, length } => file_offset.saturating_add(*length),
        }
    }
}

/// A fully validated log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Offset of the entry from the start of the log.
    pub position: u64,
    /// The entry header.
    pub header: LogEntryHeader,
    /// The entry's writes in descriptor order.
    pub writes: Vec<LogWrite>,
}

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

/// The log region's bytes and where they lie, for reading entries circularly.
struct Ring<'a> {
    bytes: &'a [u8],
    /// Absolute file offset of the log, for error messages.
    offset: u64,
}

impl Ring<'_> {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// The 4 KiB sector at ring position `pos` (a multiple of 4 KiB),
    /// wrapping: sectors never straddle the ring's end.
    fn sector(&self, pos: u64) -> &[u8] {
        let at = (pos % self.len()) as usize;
        &self.bytes[at..at + LOG_SECTOR as usize]
    }

    fn abs(&self, pos: u64) -> u64 {
        self.offset.saturating_add(pos % self.len())
    }
}

/// Padding an entry may carry past its descriptor and data sectors
/// ([MS-VHDX] allows alignment larger than 4 KiB). Bounding it bounds the
/// bytes a hostile log can make the scan checksum.
pub const MAX_ENTRY_PADDING: u64 = 64 * 1024;

/// No log write may end past this file offset: 4 PiB, far beyond the
/// largest VHDX (64 TiB of payload plus its BAT and metadata).
pub const MAX_FILE_OFFSET: u64 = 1 << 52;

/// Decodes and validates the entry at ring position `pos` (a multiple of
/// 4 KiB). The cheap checks come first (header fields, every descriptor,
/// every data sector's signature and sequence) and the CRC last, charged to
/// `budget`; a torn or stale entry is rejected as a whole.
fn parse_entry(ring: &Ring<'_>, pos: u64, log_guid: Guid, budget: &mut u64) -> Result<LogEntry> {
    let corrupt = |at: u64, reason: String| FormatError::corrupt("VHDX log entry", ring.abs(at), reason);
    let first = ring.sector(pos);
    let header = LogEntryHeader::decode(first, ring.abs(pos))?;
    let length = u64::from(header.entry_length);
    if length == 0 || length % LOG_SECTOR != 0 || length > ring.len() {
        return Err(corrupt(pos + 8, format!("entry length {length} is not a multiple of 4 KiB within the log")));
    }
    if header.sequence_number == 0 {
        return Err(corrupt(pos + 16, "sequence number 0".into()));
    }
    if header.log_guid != log_guid {
        return Err(corrupt(pos + 32, format!("log GUID {} is not the header's {log_guid}", header.log_guid)));
    }
    let tail = u64::from(header.tail);
    if tail % LOG_SECTOR != 0 || tail >= ring.len() {
        return Err(corrupt(pos + 12, format!("tail {tail} is not a 4 KiB position in the log")));
    }
    for (value, at, name) in [(header.flushed_file_offset, 48, "flushed"), (header.last_file_offset, 56, "last")] {
        if value % super::MIB != 0 {
            return Err(corrupt(pos + at, format!("{name} file offset {value} is not a multiple of 1 MiB")));
        }
    }
    let count = u64::from(header.descriptor_count);
    let descriptor_bytes = 64 + 32 * count;
    if descriptor_bytes > length {
        return Err(corrupt(pos + 24, format!("{count} descriptors do not fit a {length}-byte entry")));
    }
    let descriptor_sectors = descriptor_bytes.div_ceil(LOG_SECTOR);

    // Descriptors (they never straddle a sector: 126 in the first, 128 after).
    let mut descriptors = Vec::with_capacity(count as usize);
    for i in 0..count {
        let at = 64 + 32 * i;
        let raw = &ring.sector(pos + at / LOG_SECTOR * LOG_SECTOR)[(at % LOG_SECTOR) as usize..][..32];
        let desc_pos = pos + at;
        let d = match &raw[..4] {
            b"zero" => {
                let z = ZeroDescriptor::decode(raw, ring.abs(desc_pos))?;
                if z.zero_length % LOG_SECTOR != 0 {
                    return Err(corrupt(
                        desc_pos + 8,
                        format!("zero length {} is not a multiple of 4 KiB", z.zero_length),
                    ));
                }
                (z.file_offset, z.sequence_number, Err(z.zero_length))
            }
            b"desc" => {
                let d = DataDescriptor::decode(raw, ring.abs(desc_pos))?;
                (d.file_offset, d.sequence_number, Ok(d))
            }
            _ => {
                return Err(FormatError::BadSignature {
                    structure: "VHDX log descriptor",
                    offset: ring.abs(desc_pos),
                    expected: "zero or desc",
                });
            }
        };
        if d.1 != header.sequence_number {
            return Err(corrupt(desc_pos + 24, format!("descriptor sequence {} is not the entry's", d.1)));
        }
        if d.0 % LOG_SECTOR != 0 {
            return Err(corrupt(desc_pos + 16, format!("file offset {} is not 4 KiB-aligned", d.0)));
        }
        // A write must land inside a file a VHDX can be: otherwise the
        // replayed file's size would reach 2^64 and every later bounds check
        // against it would pass.
        let len = match &d.2 {
            Ok(_) => LOG_SECTOR,
            Err(zero_length) => *zero_length,
        };
        if d.0.checked_add(len).is_none_or(|end| end > MAX_FILE_OFFSET) {
            return Err(corrupt(
                desc_pos + 16,
                format!("a write of {len} bytes at file offset {} lies past any VHDX file's end", d.0),
            ));
        }
        descriptors.push(d);
    }
    let data_sectors = descriptors.iter().filter(|d| d.2.is_ok()).count() as u64;
    let needed = (descriptor_sectors + data_sectors) * LOG_SECTOR;
    if needed > length || length > needed + MAX_ENTRY_PADDING {
        return Err(corrupt(
            pos + 8,
            format!(
                "entry length {length} does not fit its {descriptor_sectors} descriptor and {data_sectors} data sectors"
            ),
        ));
    }
    // Data sectors: signature and sequence, still before any checksum.
    for j in 0..data_sectors {
        let sector_pos = pos + (descriptor_sectors + j) * LOG_SECTOR;
        let sector = ring.sector(sector_pos);
        if &sector[..4] != b"data" {
            return Err(FormatError::BadSignature {
                structure: "VHDX log data sector",
                offset: ring.abs(sector_pos),
                expected: "data",
            });
        }
        let high = u32::from_le_bytes([sector[4], sector[5], sector[6], sector[7]]);
        let low = u32::from_le_bytes([sector[4092], sector[4093], sector[4094], sector[4095]]);
        let seq = (u64::from(high) << 32) | u64::from(low);
        if seq != header.sequence_number {
            return Err(corrupt(sector_pos + 4, format!("data sector sequence {seq} is not the entry's")));
        }
    }
    // The checksum, sector by sector (no copy of entries that wrap).
    if *budget < length {
        return Err(FormatError::corrupt(
            "VHDX log",
            ring.offset,
            "the log holds far more entry-shaped data than entries: giving up on it",
        ));
    }
    *budget -= length;
    let mut crc = crc32c::crc32c(&first[..4]);
    crc = crc32c::crc32c_append(crc, &[0; 4]);
    crc = crc32c::crc32c_append(crc, &first[8..]);
    for k in 1..length / LOG_SECTOR {
        crc = crc32c::crc32c_append(crc, ring.sector(pos + k * LOG_SECTOR));
    }
    if crc != header.checksum {
        return Err(FormatError::BadChecksum {
            structure: "VHDX log entry",
            offset: ring.abs(pos),
            stored: header.checksum,
            computed: crc,
        });
    }

    let mut writes = Vec::with_capacity(descriptors.len());
    let mut data_index = 0u64;
    for (file_offset, _, kind) in descriptors {
        writes.push(match kind {
            Err(length) => LogWrite::Zero { file_offset, length },
            Ok(d) => {
                let sector = ring.sector(pos + (descriptor_sectors + data_index) * LOG_SECTOR);
                data_index += 1;
                let mut out = Box::new([0u8; 4096]);
                out[..8].copy_from_slice(&d.leading_bytes);
                out[8..4092].copy_from_slice(&sector[8..4092]);
                out[4092..].copy_from_slice(&d.trailing_bytes);
                LogWrite::Data { file_offset, sector: out }
            }
        });
    }
    Ok(LogEntry { position: pos, header, writes })
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

/// Builds a log entry's bytes (for writers and tests): header, descriptors,
/// data sectors, with the CRC sealed. `writes` holds data sectors and zero
/// ranges in descriptor order.
pub fn build_entry(
    sequence_number: u64,
    tail: u32,
    log_guid: Guid,
    flushed_file_offset: u64,
    last_file_offset: u64,
    writes: &[LogWrite],
) -> Vec<u8> {
    let count = writes.len() as u64;
    let descriptor_sectors = (64 + 32 * count).div_ceil(LOG_SECTOR);
    let data_sectors = writes.iter().filter(|w| matches!(w, LogWrite::Data { .. })).count() as u64;
    let length = (descriptor_sectors + data_sectors) * LOG_SECTOR;
    let mut out = vec![0u8; length as usize];
    let header = LogEntryHeader {
        checksum: 0,
        entry_length: length as u32,
        tail,
        sequence_number,
        descriptor_count: count as u32,
        reserved: 0,
        log_guid,
        flushed_file_offset,
        last_file_offset,
    };
    out[..64].copy_from_slice(&header.encode());
    let mut data_at = (descriptor_sectors * LOG_SECTOR) as usize;
    for (i, w) in writes.iter().enumerate() {
        let at = 64 + 32 * i;
        let desc = match w {
            LogWrite::Zero { file_offset, length } => {
                ZeroDescriptor { reserved: 0, zero_length: *length, file_offset: *file_offset, sequence_number }
                    .encode()
            }
            LogWrite::Data { file_offset, sector } => {
                let mut data = [0u8; 4084];
                data.copy_from_slice(&sector[8..4092]);
                let ds = DataSector {
                    sequence_high: (sequence_number >> 32) as u32,
                    data,
                    sequence_low: sequence_number as u32,
                };
                out[data_at..data_at + 4096].copy_from_slice(&ds.encode());
                data_at += 4096;
                let mut leading = [0u8; 8];
                leading.copy_from_slice(&sector[..8]);
                let mut trailing = [0u8; 4];
                trailing.copy_from_slice(&sector[4092..]);
                DataDescriptor {
                    trailing_bytes: trailing,
                    leading_bytes: leading,
                    file_offset: *file_offset,
                    sequence_number,
                }
                .encode()
            }
        };
        out[at..at + 32].copy_from_slice(&desc);
    }
    super::crc::seal_crc(&mut out, 4..8);
    out
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
