//! The VHD block allocation table: one big-endian u32 per block, holding the
//! sector number where the block (its bitmap, then its data) starts, or all
//! ones when the block has never been written.

use binrw::binrw;

use crate::format::{FormatError, Result, Structure};

/// The value of an unallocated entry.
pub const UNALLOCATED: u32 = 0xFFFF_FFFF;

/// One BAT entry as stored.
#[binrw]
#[brw(big)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatEntry(pub u32);

impl Structure for BatEntry {
    const NAME: &'static str = "VHD BAT entry";
    const SIZE: usize = 4;
    const MAGIC: &'static str = "";
}

/// The decoded table.
#[derive(Debug, Clone)]
pub struct Bat {
    entries: Vec<u32>,
}

/// Where one block's bitmap and data lie in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockLocation {
    /// Absolute offset of the block's sector bitmap.
    pub bitmap_offset: u64,
    /// Absolute offset of the block's first data byte.
    pub data_offset: u64,
}

impl Bat {
    /// Decodes `count` entries from `bytes`, the table read from absolute
    /// offset `offset`. The caller has already bounded `count` by the file size.
    pub fn parse(bytes: &[u8], count: u32, offset: u64) -> Result<Bat> {
        let len = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(4))
            .ok_or_else(|| FormatError::unsupported("a VHD BAT larger than the address space"))?;
        let table = crate::format::slice_at(bytes, 0, len, "VHD BAT", offset)?;
        let entries = table.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect();
        Ok(Bat { entries })
    }

    /// An in-memory table, for writers and tests.
    pub fn from_entries(entries: Vec<u32>) -> Bat {
        Bat { entries }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The raw entries.
    pub fn entries(&self) -> &[u32] {
        &self.entries
    }

    /// Number of allocated entries among the first `blocks`.
    pub fn allocated(&self, blocks: u64) -> u64 {
        self.entries.iter().take(usize::try_from(blocks).unwrap_or(usize::MAX)).filter(|&&e| e != UNALLOCATED).count()
            as u64
    }

    /// Where block `index` lives, or `None` if it is unallocated or out of range.
    pub fn locate(&self, index: u64, bitmap_size: u64) -> Option<BlockLocation> {
        let raw = *self.entries.get(usize::try_from(index).ok()?)?;
        if raw == UNALLOCATED {
            return None;
        }
        let bitmap_offset = u64::from(raw) * 512;
        Some(BlockLocation { bitmap_offset, data_offset: bitmap_offset + bitmap_size })
    }

    /// Checks that each of the first `blocks` allocated blocks lies wholly
    /// inside `data_end` (the footer's offset): its bitmap and the
    /// `block_bytes(i)` bytes of data a read of block `i` touches.
    /// `table_offset` locates the BAT for errors.
    pub fn validate(
        &self,
        blocks: u64,
        bitmap_size: u64,
        block_bytes: impl Fn(u64) -> u64,
        data_end: u64,
        table_offset: u64,
    ) -> Result<()> {
        for index in 0..blocks {
            let Some(loc) = self.locate(index, bitmap_size) else {
                continue;
            };
            let end = loc.data_offset + block_bytes(index);
            if end > data_end {
                return Err(FormatError::corrupt(
                    "VHD BAT",
                    table_offset + index * 4,
                    format!(
                        "block {index} at byte {} ends at {end}, past the data area's end at {data_end}",
                        loc.bitmap_offset
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_blocks_after_their_bitmap() {
        let mut bytes = Vec::new();
        for e in [3u32, UNALLOCATED, 4100] {
            bytes.extend_from_slice(&e.to_be_bytes());
        }
        let bat = Bat::parse(&bytes, 3, 1536).unwrap();
        assert_eq!(bat.locate(0, 512), Some(BlockLocation { bitmap_offset: 1536, data_offset: 2048 }));
        assert_eq!(bat.locate(1, 512), None);
        assert_eq!(bat.locate(3, 512), None);
        assert_eq!(bat.allocated(3), 2);
        let two_mib = |_| 2 << 20;
        assert!(bat.validate(3, 512, two_mib, 4100 * 512 + 512 + (2 << 20), 1536).is_ok());
        let err = bat.validate(3, 512, two_mib, 4100 * 512, 1536).unwrap_err();
        assert_eq!(err.offset(), Some(1536 + 8));
    }

    #[test]
    fn a_short_table_is_truncated() {
        assert!(matches!(Bat::parse(&[0; 7], 2, 100), Err(FormatError::Truncated { .. })));
    }
}
