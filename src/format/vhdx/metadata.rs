//! The metadata region: a 64 KiB table of items, and the system items every
//! VHDX must carry (block size, disk size, sector sizes, disk id, and for
//! differencing disks the parent locator).

use binrw::binrw;

use super::parent_locator::ParentLocator;
use super::{KIB, MIB};
use crate::format::{FormatError, Guid, Result, Structure};

/// Bytes of the metadata table at the start of the region.
pub const METADATA_TABLE_SIZE: usize = 64 * 1024;
/// Most entries a table may hold.
pub const MAX_METADATA_ENTRIES: u16 = 2047;
/// Largest metadata item the specification allows.
pub const MAX_ITEM_LENGTH: u32 = MIB as u32;
/// Largest virtual disk the specification allows.
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;

/// File parameters: CAA16737-FA36-4D43-B3B6-33F0AA44E76B.
pub const FILE_PARAMETERS: Guid = Guid::from_canonical([
    0xCA, 0xA1, 0x67, 0x37, 0xFA, 0x36, 0x4D, 0x43, 0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B,
]);
/// Virtual disk size: 2FA54224-CD1B-4876-B211-5DBED83BF4B8.
pub const VIRTUAL_DISK_SIZE: Guid = Guid::from_canonical([
    0x2F, 0xA5, 0x42, 0x24, 0xCD, 0x1B, 0x48, 0x76, 0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8,
]);
/// Virtual disk id (SCSI page 83): BECA12AB-B2E6-4523-93EF-C309E000C746.
pub const VIRTUAL_DISK_ID: Guid = Guid::from_canonical([
    0xBE, 0xCA, 0x12, 0xAB, 0xB2, 0xE6, 0x45, 0x23, 0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46,
]);
/// Logical sector size: 8141BF1D-A96F-4709-BA47-F233A8FAAB5F.
pub const LOGICAL_SECTOR_SIZE: Guid = Guid::from_canonical([
    0x81, 0x41, 0xBF, 0x1D, 0xA9, 0x6F, 0x47, 0x09, 0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F,
]);
/// Physical sector size: CDA348C7-445D-4471-9CC9-E9885251C556.
pub const PHYSICAL_SECTOR_SIZE: Guid = Guid::from_canonical([
    0xCD, 0xA3, 0x48, 0xC7, 0x44, 0x5D, 0x44, 0x71, 0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56,
]);
/// Parent locator: A8D35F2D-B30B-454D-ABF7-D3D84834AB0C.
pub const PARENT_LOCATOR: Guid = Guid::from_canonical([
    0xA8, 0xD3, 0x5F, 0x2D, 0xB3, 0x0B, 0x45, 0x4D, 0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C,
]);

/// The table's 32-byte header.
#[binrw]
#[brw(little, magic = b"metadata")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataTableHeader {
    /// Reserved, zero.
    pub reserved: u16,
    /// Entries in the table.
    pub entry_count: u16,
    /// Reserved, zero.
    pub reserved2: [u8; 20],
}

impl Structure for MetadataTableHeader {
    const NAME: &'static str = "VHDX metadata table";
    const SIZE: usize = 32;
    const MAGIC: &'static str = "metadata";
}

/// One 32-byte metadata table entry.
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataEntry {
    /// Which metadata item.
    pub item_id: Guid,
    /// Offset of the item from the start of the metadata region.
    pub offset: u32,
    /// Bytes of the item.
    pub length: u32,
    /// Bit 0 IsUser, bit 1 IsVirtualDisk, bit 2 IsRequired.
    pub flags: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

impl Structure for MetadataEntry {
    const NAME: &'static str = "VHDX metadata table entry";
    const SIZE: usize = 32;
    const MAGIC: &'static str = "";
}

impl MetadataEntry {
    /// A user (rather than system) item.
    pub fn is_user(&self) -> bool {
        self.flags & 1 != 0
    }

    /// A reader that does not know this item must refuse the file.
    pub fn is_required(&self) -> bool {
        self.flags & 4 != 0
    }
}

/// The file parameters item's 8 bytes.
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileParameters {
    /// Bytes per payload block.
    pub block_size: u32,
    /// Bit 0 LeaveBlocksAllocated (fixed), bit 1 HasParent (differencing).
    pub flags: u32,
}

impl Structure for FileParameters {
    const NAME: &'static str = "VHDX file parameters";
    const SIZE: usize = 8;
    const MAGIC: &'static str = "";
}

/// A decoded metadata table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataTable {
    /// The table header.
    pub header: MetadataTableHeader,
    /// The table's entries.
    pub entries: Vec<MetadataEntry>,
}

impl MetadataTable {
    /// Decodes the table at the start of a metadata region of
    /// `region_length` bytes found at absolute `region_offset`, and checks
    /// that every item lies inside the region and that no unknown item is
    /// marked required.
    pub fn parse(bytes: &[u8], region_offset: u64, region_length: u64) -> Result<MetadataTable> {
        let table = crate::format::slice_at(bytes, 0, METADATA_TABLE_SIZE, "VHDX metadata table", region_offset)?;
        let header = MetadataTableHeader::decode(table, region_offset)?;
        if header.entry_count > MAX_METADATA_ENTRIES {
            return Err(FormatError::corrupt(
                "VHDX metadata table",
                region_offset + 10,
                format!("{} entries (at most {MAX_METADATA_ENTRIES})", header.entry_count),
            ));
        }
        let mut entries: Vec<MetadataEntry> = Vec::with_capacity(usize::from(header.entry_count));
        for i in 0..usize::from(header.entry_count) {
            let at = 32 + i * 32;
            let abs = region_offset + at as u64;
            let e = MetadataEntry::decode(&table[at..], abs)?;
            let known = [
                FILE_PARAMETERS,
                VIRTUAL_DISK_SIZE,
                VIRTUAL_DISK_ID,
                LOGICAL_SECTOR_SIZE,
                PHYSICAL_SECTOR_SIZE,
                PARENT_LOCATOR,
            ]
            .contains(&e.item_id)
                && !e.is_user();
            if !known && e.is_required() {
                return Err(FormatError::unsupported(format!(
                    "required VHDX metadata item {} (entry at byte {abs})",
                    e.item_id
                )));
            }
            if e.length > MAX_ITEM_LENGTH {
                return Err(FormatError::corrupt(
                    "VHDX metadata table",
                    abs + 20,
                    format!("item {} is {} bytes (at most 1 MiB)", e.item_id, e.length),
                ));
            }
            let empty = e.length == 0 && e.offset == 0;
            let inside = u64::from(e.offset) >= 64 * KIB && u64::from(e.offset) + u64::from(e.length) <= region_length;
            if !empty && !inside {
                return Err(FormatError::corrupt(
                    "VHDX metadata table",
                    abs + 16,
                    format!(
                        "item {} at region offset {} (+{}) is not inside the {region_length}-byte region past its table",
                        e.item_id, e.offset, e.length
                    ),
                ));
            }
            if entries.iter().any(|o| o.item_id == e.item_id && o.is_user() == e.is_user()) {
                return Err(FormatError::corrupt(
                    "VHDX metadata table",
                    abs,
                    format!("item {} is listed twice", e.item_id),
                ));
            }
            entries.push(e);
        }
        Ok(MetadataTable { header, entries })
    }

    /// The system item with `id`, if present.
    pub fn system_item(&self, id: Guid) -> Option<&MetadataEntry> {
        self.entries.iter().find(|e| e.item_id == id && !e.is_user())
    }
}

/// The values of the system metadata items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// Bytes per payload block.
    pub block_size: u32,
    /// A fixed disk: blocks stay allocated.
    pub leave_blocks_allocated: bool,
    /// A differencing disk.
    pub has_parent: bool,
    /// Bytes of the virtual disk.
    pub virtual_size: u64,
    /// The virtual disk id (SCSI page 83).
    pub disk_id: Guid,
    /// Logical sector size in bytes (512 or 4096).
    pub logical_sector_size: u32,
    /// Physical sector size in bytes (512 or 4096).
    pub physical_sector_size: u32,
    /// For a differencing disk: where its parent is.
    pub parent_locator: Option<ParentLocator>,
}

impl Metadata {
    /// Reads and checks the system items of `table`. `read_item` returns an
    /// item's bytes (its length is bounded by the table check to 1 MiB);
    /// `region_offset` turns item offsets into absolute ones for errors.
    pub fn parse<E: From<FormatError>>(
        table: &MetadataTable,
        region_offset: u64,
        mut read_item: impl FnMut(&MetadataEntry) -> std::result::Result<Vec<u8>, E>,
    ) -> std::result::Result<Metadata, E> {
        let mut item = |id: Guid, name: &'static str, min_len: u32| -> std::result::Result<Option<(Vec<u8>, u64)>, E> {
            let Some(entry) = table.system_item(id) else {
                return Ok(None);
            };
            let at = region_offset + u64::from(entry.offset);
            if entry.length < min_len {
                return Err(FormatError::corrupt(name, at, format!("{} bytes, needs {min_len}", entry.length)).into());
            }
            let bytes = read_item(entry)?;
            if bytes.len() < min_len as usize {
                return Err(FormatError::Truncated {
                    structure: name,
                    offset: at,
                    needed: u64::from(min_len),
                    available: bytes.len() as u64,
                }
                .into());
            }
            Ok(Some((bytes, at)))
        };
        let need = |v: Option<(Vec<u8>, u64)>, name: &'static str| {
            v.ok_or_else(|| FormatError::corrupt("VHDX metadata table", region_offset, format!("no {name} item")))
        };
        let u32_at = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);

        let (fp, fp_at) = need(item(FILE_PARAMETERS, "VHDX file parameters", 8)?, "file parameters")?;
        let params = FileParameters::decode(&fp, fp_at)?;
        let (vs, vs_at) = need(item(VIRTUAL_DISK_SIZE, "VHDX virtual disk size", 8)?, "virtual disk size")?;
        let virtual_size = u64::from_le_bytes([vs[0], vs[1], vs[2], vs[3], vs[4], vs[5], vs[6], vs[7]]);
        let (id, _) = need(item(VIRTUAL_DISK_ID, "VHDX virtual disk id", 16)?, "virtual disk id")?;
        let mut raw_id = [0u8; 16];
        raw_id.copy_from_slice(&id[..16]);
        let (ls, ls_at) = need(item(LOGICAL_SECTOR_SIZE, "VHDX logical sector size", 4)?, "logical sector size")?;
        let logical_sector_size = u32_at(&ls);
        let (ps, ps_at) = need(item(PHYSICAL_SECTOR_SIZE, "VHDX physical sector size", 4)?, "physical sector size")?;
        let physical_sector_size = u32_at(&ps);

        let bs = params.block_size;
        if !bs.is_power_of_two() || !(MIB as u32..=256 * MIB as u32).contains(&bs) {
            return Err(FormatError::corrupt(
                "VHDX file parameters",
                fp_at,
                format!("block size {bs} is not a power of two from 1 MiB to 256 MiB"),
            )
            .into());
        }
        for (value, at, name) in [
            (logical_sector_size, ls_at, "VHDX logical sector size"),
            (physical_sector_size, ps_at, "VHDX physical sector size"),
        ] {
            if value != 512 && value != 4096 {
                return Err(FormatError::corrupt(name, at, format!("{value} is neither 512 nor 4096")).into());
            }
        }
        if virtual_size == 0 || virtual_size > MAX_VIRTUAL_SIZE || virtual_size % u64::from(logical_sector_size) != 0 {
            return Err(FormatError::corrupt(
                "VHDX virtual disk size",
                vs_at,
                format!(
                    "{virtual_size} bytes is not a non-zero multiple of the {logical_sector_size}-byte sector up to 64 TiB"
                ),
            )
            .into());
        }
        let has_parent = params.flags & 2 != 0;
        let parent_locator = if has_parent {
            let (pl, pl_at) = need(item(PARENT_LOCATOR, "VHDX parent locator", 20)?, "parent locator")?;
            Some(ParentLocator::parse(&pl, pl_at)?)
        } else {
            None
        };
        Ok(Metadata {
            block_size: bs,
            leave_blocks_allocated: params.flags & 1 != 0,
            has_parent,
            virtual_size,
            disk_id: Guid::from_mixed_endian(raw_id),
            logical_sector_size,
            physical_sector_size,
            parent_locator,
        })
    }
}
