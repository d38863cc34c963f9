//! The two VHDX headers (64 KiB and 128 KiB into the file) and the rule that
//! picks the current one.

use binrw::binrw;

use super::crc::verify_crc;
use super::{KIB, MIB};
use crate::format::{FormatError, Guid, Result, Structure};

/// Offsets of the two header copies.
pub const HEADER_OFFSETS: [u64; 2] = [64 * KIB, 128 * KIB];
/// Bytes covered by a header (and its checksum).
pub const HEADER_SIZE: usize = 4096;
const CHECKSUM_FIELD: std::ops::Range<usize> = 4..8;

/// A VHDX header as stored.
#[binrw]
#[brw(little, magic = b"head")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// CRC-32C over the 4 KiB header with this field zeroed.
    pub checksum: u32,
    /// The header with the greater sequence number is current.
    pub sequence_number: u64,
    /// Changes whenever the file is opened for writing.
    pub file_write_guid: Guid,
    /// Changes whenever what the disk reads changes; children link to it.
    pub data_write_guid: Guid,
    /// Non-zero when the log holds entries that must be replayed.
    pub log_guid: Guid,
    /// Log format version (0).
    pub log_version: u16,
    /// VHDX version (1).
    pub version: u16,
    /// Bytes of the log region.
    pub log_length: u32,
    /// File offset of the log region.
    pub log_offset: u64,
    /// Reserved, zero.
    pub reserved: [u8; 4016],
}

impl Structure for Header {
    const NAME: &'static str = "VHDX header";
    const SIZE: usize = HEADER_SIZE;
    const MAGIC: &'static str = "head";
}

/// Checks a header's CRC.
pub fn verify_header_checksum(bytes: &[u8], offset: u64) -> Result<()> {
    verify_crc(bytes, CHECKSUM_FIELD, "VHDX header", offset)
}

/// Decodes and checks one header slot: signature and CRC.
pub fn parse_header(bytes: &[u8], offset: u64) -> Result<Header> {
    let header = Header::decode(bytes, offset)?;
    verify_header_checksum(bytes, offset)?;
    Ok(header)
}

/// Which header slot is current, and whether the other one was valid too.
#[derive(Debug, Clone)]
pub struct CurrentHeader {
    /// The header's fields.
    pub header: Header,
    /// 0 for the copy at 64 KiB, 1 for the copy at 128 KiB.
    pub slot: usize,
    /// Problems with the other slot (for `check`), if any.
    pub other_slot_error: Option<FormatError>,
}

/// Picks the current header from the two slots' parse results.
///
/// The current header is the valid one with the greater sequence number.
/// Two valid headers with equal sequence numbers leave no current header by
/// the specification; Disk2vhd writes two identical ones, which are
/// accepted (as qemu does), while two that differ are corruption: picking
/// one could skip a log that must be replayed.
pub fn choose_current(slots: [Result<Header>; 2]) -> Result<CurrentHeader> {
    let [first, second] = slots;
    match (first, second) {
        (Ok(a), Ok(b)) if a.sequence_number == b.sequence_number && a != b => Err(FormatError::corrupt(
            "VHDX header",
            HEADER_OFFSETS[1],
            format!("both headers carry sequence number {} but differ: neither is current", a.sequence_number),
        )),
        (Ok(a), Ok(b)) => {
            let (header, slot) = if b.sequence_number > a.sequence_number { (b, 1) } else { (a, 0) };
            Ok(CurrentHeader { header, slot, other_slot_error: None })
        }
        (Ok(a), Err(e)) => Ok(CurrentHeader { header: a, slot: 0, other_slot_error: Some(e) }),
        (Err(e), Ok(b)) => Ok(CurrentHeader { header: b, slot: 1, other_slot_error: Some(e) }),
        (Err(a), Err(b)) => Err(FormatError::corrupt(
            "VHDX header",
            HEADER_OFFSETS[0],
            format!("neither header is valid: first: {a}; second: {b}"),
        )),
    }
}

impl Header {
    /// Checks the version fields and, when the log is in use, its placement
    /// inside a file of `file_size` bytes. `offset` locates the header.
    pub fn validate(&self, offset: u64, file_size: u64) -> Result<()> {
        if self.version != 1 {
            return Err(FormatError::unsupported(format!(
                "VHDX header version {} (only version 1 is defined)",
                self.version
            )));
        }
        if self.log_guid.is_nil() && self.log_length == 0 {
            return Ok(());
        }
        if !self.log_guid.is_nil() && self.log_version != 0 {
            return Err(FormatError::unsupported(format!(
                "VHDX log version {} (only version 0 is defined)",
                self.log_version
            )));
        }
        let length = u64::from(self.log_length);
        let misplaced = !self.log_offset.is_multiple_of(MIB)
            || self.log_offset < MIB
            || length == 0
            || length % MIB != 0
            || self.log_offset.checked_add(length).is_none_or(|end| end > file_size);
        if misplaced {
            return Err(FormatError::corrupt(
                "VHDX header",
                offset + 68,
                format!(
                    "log at byte {} (+{}) must be 1 MiB-aligned, at least 1 MiB in, and inside the {file_size}-byte file",
                    self.log_offset, self.log_length
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::vhdx::crc::seal_crc;

    pub(crate) fn header(seq: u64) -> Header {
        Header {
            checksum: 0,
            sequence_number: seq,
            file_write_guid: Guid::new_random(),
            data_write_guid: Guid::new_random(),
            log_guid: Guid::NIL,
            log_version: 0,
            version: 1,
            log_length: 1 << 20,
            log_offset: 1 << 20,
            reserved: [0; 4016],
        }
    }

    fn sealed(h: &Header) -> Vec<u8> {
        let mut b = h.encode();
        seal_crc(&mut b, CHECKSUM_FIELD);
        b
    }

    #[test]
    fn the_higher_sequence_wins_and_ties_go_to_the_first() {
        let a = sealed(&header(5));
        let b = sealed(&header(6));
        let pick = |x: &[u8], y: &[u8]| choose_current([parse_header(x, 65536), parse_header(y, 131072)]).unwrap();
        assert_eq!(pick(&a, &b).slot, 1);
        assert_eq!(pick(&b, &a).slot, 0);
        assert_eq!(pick(&a, &a).slot, 0);
        // Equal sequence numbers, different contents: no current header.
        let c = sealed(&header(5));
        assert!(choose_current([parse_header(&a, 65536), parse_header(&c, 131072)]).is_err());
    }

    #[test]
    fn a_damaged_header_loses_even_with_a_higher_sequence() {
        let a = sealed(&header(5));
        let mut b = sealed(&header(9));
        b[200] ^= 1;
        let chosen = choose_current([parse_header(&a, 65536), parse_header(&b, 131072)]).unwrap();
        assert_eq!(chosen.slot, 0);
        assert!(matches!(chosen.other_slot_error, Some(FormatError::BadChecksum { offset: 131072, .. })));
        let mut a2 = a.clone();
        a2[0] = b'x';
        assert!(choose_current([parse_header(&a2, 65536), parse_header(&b, 131072)]).is_err());
    }

    #[test]
    fn validates_log_placement() {
        let mut h = header(1);
        h.log_offset = 12345;
        assert!(h.validate(65536, 4 << 20).is_err());
        h.log_length = 0;
        h.validate(65536, 4 << 20).unwrap();
        h.log_length = 1 << 20;
        h.log_guid = Guid::new_random();
        assert!(h.validate(65536, 4 << 20).is_err());
        h.log_offset = 1 << 20;
        h.validate(65536, 4 << 20).unwrap();
        assert!(h.validate(65536, 1 << 20).is_err());
        h.version = 2;
        assert!(h.validate(65536, 4 << 20).unwrap_err().is_unsupported());
    }
}
