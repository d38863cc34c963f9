//! One log entry: its header, descriptors and data sectors, decoding a
//! whole entry from the log ring (every check before the CRC), and building
//! one (for writers and tests).

use binrw::binrw;

use super::LOG_SECTOR;
use crate::format::{FormatError, Guid, Result, Structure};

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

/// The log region's bytes and where they lie, for reading entries circularly.
pub(super) struct Ring<'a> {
    pub(super) bytes: &'a [u8],
    /// Absolute file offset of the log, for error messages.
    pub(super) offset: u64,
}

impl Ring<'_> {
    pub(super) fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// The 4 KiB sector at ring position `pos` (a multiple of 4 KiB),
    /// wrapping: sectors never straddle the ring's end.
    pub(super) fn sector(&self, pos: u64) -> &[u8] {
        let at = (pos % self.len()) as usize;
        &self.bytes[at..at + LOG_SECTOR as usize]
    }

    pub(super) fn abs(&self, pos: u64) -> u64 {
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
pub(super) fn parse_entry(ring: &Ring<'_>, pos: u64, log_guid: Guid, budget: &mut u64) -> Result<LogEntry> {
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
        if value % crate::format::vhdx::MIB != 0 {
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
    crate::format::vhdx::crc::seal_crc(&mut out, 4..8);
    out
}
