//! The region table (two 64 KiB copies at 192 KiB and 256 KiB): where the BAT
//! and the metadata live.

use binrw::binrw;

use super::crc::verify_crc;
use super::{KIB, MIB};
use crate::format::{FormatError, Guid, Result, Structure};

/// Offsets of the two region table copies.
pub const REGION_TABLE_OFFSETS: [u64; 2] = [192 * KIB, 256 * KIB];
/// Bytes covered by a region table and its checksum.
pub const REGION_TABLE_SIZE: usize = 64 * 1024;
/// The most entries a 64 KiB table can hold.
pub const MAX_REGION_ENTRIES: u32 = 2047;
const CHECKSUM_FIELD: std::ops::Range<usize> = 4..8;

/// The BAT region: 2DC27766-F623-4200-9D64-115E9BFD4A08.
pub const BAT_REGION: Guid = Guid::from_canonical([
    0x2D, 0xC2, 0x77, 0x66, 0xF6, 0x23, 0x42, 0x00, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08,
]);
/// The metadata region: 8B7CA206-4790-4B9A-B8FE-575F050F886E.
pub const METADATA_REGION: Guid = Guid::from_canonical([
    0x8B, 0x7C, 0xA2, 0x06, 0x47, 0x90, 0x4B, 0x9A, 0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E,
]);

/// The table's 16-byte header.
#[binrw]
#[brw(little, magic = b"regi")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionTableHeader {
    /// The structure's checksum, as stored.
    pub checksum: u32,
    /// Entries in the table.
    pub entry_count: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

impl Structure for RegionTableHeader {
    const NAME: &'static str = "VHDX region table";
    const SIZE: usize = 16;
    const MAGIC: &'static str = "regi";
}

/// One 32-byte region entry.
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionEntry {
    /// Which region.
    pub guid: Guid,
    /// Where in the file the write lands.
    pub file_offset: u64,
    /// Bytes of the item.
    pub length: u32,
    /// Bit 0: the region is required to read the file.
    pub flags: u32,
}

impl Structure for RegionEntry {
    const NAME: &'static str = "VHDX region table entry";
    const SIZE: usize = 32;
    const MAGIC: &'static str = "";
}

impl RegionEntry {
    /// Whether a reader that does not know this region must refuse the file.
    pub fn required(&self) -> bool {
        self.flags & 1 != 0
    }

    /// The byte range the region occupies.
    pub fn range(&self) -> std::ops::Range<u64> {
        self.file_offset..self.file_offset.saturating_add(u64::from(self.length))
    }
}

/// A decoded, checksum-verified region table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionTable {
    /// The table header.
    pub header: RegionTableHeader,
    /// The table's entries.
    pub entries: Vec<RegionEntry>,
}

/// The two regions every VHDX has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Regions {
    /// The BAT region.
    pub bat: RegionEntry,
    /// The metadata region.
    pub metadata: RegionEntry,
}

impl RegionTable {
    /// Decodes a 64 KiB table found at `offset`, checking its CRC.
    pub fn parse(bytes: &[u8], offset: u64) -> Result<RegionTable> {
        let table = crate::format::slice_at(bytes, 0, REGION_TABLE_SIZE, "VHDX region table", offset)?;
        let header = RegionTableHeader::decode(table, offset)?;
        verify_crc(table, CHECKSUM_FIELD, "VHDX region table", offset)?;
        if header.entry_count > MAX_REGION_ENTRIES {
            return Err(FormatError::corrupt(
                "VHDX region table",
                offset + 8,
                format!("{} entries (at most {MAX_REGION_ENTRIES})", header.entry_count),
            ));
        }
        let entries = (0..header.entry_count as usize)
            .map(|i| {
                let at = 16 + i * 32;
                RegionEntry::decode(&table[at..], offset + at as u64)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RegionTable { header, entries })
    }

    /// Finds the BAT and metadata regions and checks every entry: known or
    /// optional, 1 MiB-aligned, inside a file of `file_size` bytes, and not
    /// overlapping each other or the header section.
    pub fn regions(&self, offset: u64, file_size: u64) -> Result<Regions> {
        let mut bat = None;
        let mut metadata = None;
        for (i, e) in self.entries.iter().enumerate() {
            let at = offset + 16 + i as u64 * 32;
            let slot = if e.guid == BAT_REGION {
                &mut bat
            } else if e.guid == METADATA_REGION {
                &mut metadata
            } else if e.required() {
                return Err(FormatError::unsupported(format!("required VHDX region {} (entry at byte {at})", e.guid)));
            } else {
                continue;
            };
            if slot.is_some() {
                return Err(FormatError::corrupt(
                    "VHDX region table",
                    at,
                    format!("region {} is listed twice", e.guid),
                ));
            }
            let bad_place = e.file_offset < MIB
                || e.file_offset % MIB != 0
                || e.length == 0
                || u64::from(e.length) % MIB != 0
                || e.file_offset.checked_add(u64::from(e.length)).is_none_or(|end| end > file_size);
            if bad_place {
                return Err(FormatError::corrupt(
                    "VHDX region table",
                    at + 16,
                    format!(
                        "region {} at byte {} (+{}) must be 1 MiB-aligned, past the first MiB and inside the {file_size}-byte file",
                        e.guid, e.file_offset, e.length
                    ),
                ));
            }
            *slot = Some(*e);
        }
        let missing = |name| FormatError::corrupt("VHDX region table", offset, format!("no {name} region"));
        let bat = bat.ok_or_else(|| missing("BAT"))?;
        let metadata = metadata.ok_or_else(|| missing("metadata"))?;
        let (a, b) = (bat.range(), metadata.range());
        if a.start < b.end && b.start < a.end {
            return Err(FormatError::corrupt(
                "VHDX region table",
                offset,
                format!("the BAT ({a:?}) and metadata ({b:?}) regions overlap"),
            ));
        }
        Ok(Regions { bat, metadata })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::format::vhdx::crc::seal_crc;

    pub(crate) fn table(entries: &[RegionEntry]) -> Vec<u8> {
        let mut bytes = vec![0u8; REGION_TABLE_SIZE];
        let header = RegionTableHeader { checksum: 0, entry_count: entries.len() as u32, reserved: 0 };
        bytes[..16].copy_from_slice(&header.encode());
        for (i, e) in entries.iter().enumerate() {
            bytes[16 + i * 32..48 + i * 32].copy_from_slice(&e.encode());
        }
        seal_crc(&mut bytes, CHECKSUM_FIELD);
        bytes
    }

    fn entry(guid: Guid, at_mib: u64, flags: u32) -> RegionEntry {
        RegionEntry { guid, file_offset: at_mib * MIB, length: MIB as u32, flags }
    }

    #[test]
    fn finds_both_regions_in_either_order() {
        let t = table(&[entry(METADATA_REGION, 2, 1), entry(BAT_REGION, 3, 1)]);
        let parsed = RegionTable::parse(&t, 196608).unwrap();
        let r = parsed.regions(196608, 8 * MIB).unwrap();
        assert_eq!(r.bat.file_offset, 3 * MIB);
        assert_eq!(r.metadata.file_offset, 2 * MIB);
    }

    #[test]
    fn refuses_unknown_required_regions_and_ignores_optional_ones() {
        let odd = Guid::from_canonical([9; 16]);
        let t = table(&[entry(BAT_REGION, 3, 1), entry(METADATA_REGION, 2, 1), entry(odd, 4, 0)]);
        RegionTable::parse(&t, 0).unwrap().regions(0, 8 * MIB).unwrap();
        let t = table(&[entry(BAT_REGION, 3, 1), entry(METADATA_REGION, 2, 1), entry(odd, 4, 1)]);
        let err = RegionTable::parse(&t, 0).unwrap().regions(0, 8 * MIB).unwrap_err();
        assert!(err.is_unsupported());
    }

    #[test]
    fn rejects_overlaps_duplicates_and_regions_past_the_end() {
        let t = table(&[entry(BAT_REGION, 2, 1), entry(METADATA_REGION, 2, 1)]);
        assert!(RegionTable::parse(&t, 0).unwrap().regions(0, 8 * MIB).is_err());
        let t = table(&[entry(BAT_REGION, 2, 1), entry(BAT_REGION, 3, 1)]);
        assert!(RegionTable::parse(&t, 0).unwrap().regions(0, 8 * MIB).is_err());
        let t = table(&[entry(BAT_REGION, 3, 1), entry(METADATA_REGION, 2, 1)]);
        assert!(RegionTable::parse(&t, 0).unwrap().regions(0, 3 * MIB).is_err());
    }

    #[test]
    fn a_flipped_byte_fails_the_crc() {
        let mut t = table(&[entry(BAT_REGION, 3, 1), entry(METADATA_REGION, 2, 1)]);
        t[40000] ^= 1;
        assert!(matches!(RegionTable::parse(&t, 196608), Err(FormatError::BadChecksum { offset: 196608, .. })));
    }
}
