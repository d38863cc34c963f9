//! The dynamic disk header: 1024 big-endian bytes that dynamic and
//! differencing VHDs carry at the footer's `data_offset`.

use binrw::binrw;

use super::checksum::{ones_complement_sum, verify};
use super::locator::LocatorEntry;
use crate::format::{FormatError, Guid, Result, Structure, utf16_until_nul};

/// Size of the dynamic header on disk.
pub const DYNAMIC_HEADER_SIZE: usize = 1024;
/// Byte range of the checksum field within the header.
const CHECKSUM_FIELD: std::ops::Range<usize> = 36..40;
/// Smallest block size accepted: one sector.
pub const MIN_BLOCK_SIZE: u32 = 512;

/// The dynamic disk header exactly as stored.
#[binrw]
#[brw(big, magic = b"cxsparse")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicHeader {
    /// Unused; all ones.
    pub data_offset: u64,
    /// Absolute offset of the block allocation table.
    pub table_offset: u64,
    /// 0x0001_0000.
    pub header_version: u32,
    /// Number of BAT entries; the BAT may be longer than the disk needs.
    pub max_table_entries: u32,
    /// Bytes of disk data per block (a power of two; 2 MiB by default).
    pub block_size: u32,
    /// The structure's checksum, as stored.
    pub checksum: u32,
    /// The parent's footer unique id (differencing disks).
    pub parent_unique_id: Guid,
    /// The parent's modification time, seconds since 2000-01-01 UTC.
    pub parent_timestamp: u32,
    /// Reserved, zero.
    pub reserved1: u32,
    /// The parent's file name in UTF-16 big-endian, NUL-padded.
    pub parent_unicode_name: [u8; 512],
    /// Where a differencing disk's parent may be, by platform.
    pub parent_locators: [LocatorEntry; 8],
    /// Reserved, zero.
    pub reserved2: [u8; 256],
}

impl Structure for DynamicHeader {
    const NAME: &'static str = "VHD dynamic header";
    const SIZE: usize = DYNAMIC_HEADER_SIZE;
    const MAGIC: &'static str = "cxsparse";
}

impl DynamicHeader {
    /// Checks the fields a reader depends on. `offset` is the header's
    /// absolute position, for error messages.
    pub fn validate(&self, offset: u64) -> Result<()> {
        let bs = self.block_size;
        if bs < MIN_BLOCK_SIZE || !bs.is_power_of_two() {
            return Err(FormatError::corrupt(
                "VHD dynamic header",
                offset + 32,
                format!("block size {bs} is not a power of two of at least 512 bytes"),
            ));
        }
        if !self.table_offset.is_multiple_of(512) {
            return Err(FormatError::corrupt(
                "VHD dynamic header",
                offset + 16,
                format!("BAT offset {} is not sector-aligned", self.table_offset),
            ));
        }
        Ok(())
    }

    /// The parent's name from the header (differencing disks), if any.
    pub fn parent_name(&self) -> Option<String> {
        let name = utf16_until_nul(&self.parent_unicode_name, true);
        (!name.is_empty()).then_some(name)
    }

    /// Bytes of sector bitmap in front of each block's data: one bit per
    /// 512-byte sector, padded to a whole sector.
    pub fn bitmap_size(&self) -> u64 {
        super::bitmap::bitmap_size(self.block_size)
    }
}

/// The dynamic header checksum of `bytes` (a whole header).
pub fn dynamic_header_checksum(bytes: &[u8]) -> u32 {
    ones_complement_sum(bytes, CHECKSUM_FIELD)
}

/// Checks a dynamic header's stored checksum against its bytes.
pub fn verify_dynamic_header_checksum(bytes: &[u8], offset: u64) -> Result<()> {
    verify(bytes, CHECKSUM_FIELD, "VHD dynamic header", offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_node_vhd_fragment_layout() {
        let mut h = DynamicHeader {
            data_offset: u64::MAX,
            table_offset: 1536,
            header_version: 0x0001_0000,
            max_table_entries: 256,
            block_size: 2 << 20,
            checksum: 0,
            parent_unique_id: Guid::NIL,
            parent_timestamp: 0,
            reserved1: 0,
            parent_unicode_name: [0; 512],
            parent_locators: Default::default(),
            reserved2: [0; 256],
        };
        h.checksum = dynamic_header_checksum(&h.encode());
        let bytes = h.encode();
        assert_eq!(bytes.len(), 1024);
        assert_eq!(u64::from_be_bytes(bytes[16..24].try_into().unwrap()), 1536);
        verify_dynamic_header_checksum(&bytes, 512).unwrap();
        assert_eq!(DynamicHeader::decode(&bytes, 512).unwrap(), h);
        assert_eq!(h.bitmap_size(), 512);
        h.validate(512).unwrap();
        h.block_size = 3 << 20;
        assert!(h.validate(512).is_err());
    }
}
