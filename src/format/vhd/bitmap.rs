//! VHD sector bitmaps: one bit per 512-byte sector of a block, most
//! significant bit first (bit 7 of byte 0 is the block's first sector), stored
//! in front of the block's data and padded to a whole sector.

use crate::format::bits::BitOrder;

/// VHD's bit order.
pub const ORDER: BitOrder = BitOrder::MsbFirst;

/// Bytes of bitmap (padded to 512) in front of a block of `block_size` bytes.
pub fn bitmap_size(block_size: u32) -> u64 {
    let sectors = u64::from(block_size) / 512;
    sectors.div_ceil(8).div_ceil(512) * 512
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_pad_to_a_sector() {
        assert_eq!(bitmap_size(2 << 20), 512);
        assert_eq!(bitmap_size(512), 512);
        assert_eq!(bitmap_size(1 << 25), 8192);
    }
}
