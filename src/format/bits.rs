//! Sector bitmaps, in either bit order.
//!
//! VHD numbers bits most significant first (bit 7 of byte 0 is sector 0);
//! VHDX least significant first (bit 0 of byte 0 is sector 0). Mixing them up
//! reads the right sectors from the wrong image, so the order is a type.

/// How sectors map to bits within a byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitOrder {
    /// VHD: bit 7 of byte 0 is the first sector.
    MsbFirst,
    /// VHDX: bit 0 of byte 0 is the first sector.
    LsbFirst,
}

impl BitOrder {
    fn mask(self, index: u64) -> u8 {
        match self {
            BitOrder::MsbFirst => 0x80 >> (index % 8),
            BitOrder::LsbFirst => 1 << (index % 8),
        }
    }
}

/// Whether bit `index` is set. Bits past the end of `bitmap` read as clear.
pub fn is_set(bitmap: &[u8], order: BitOrder, index: u64) -> bool {
    let Ok(byte) = usize::try_from(index / 8) else {
        return false;
    };
    bitmap.get(byte).is_some_and(|b| b & order.mask(index) != 0)
}

/// Sets or clears bit `index`; does nothing past the end of `bitmap`.
pub fn set(bitmap: &mut [u8], order: BitOrder, index: u64, value: bool) {
    let Ok(byte) = usize::try_from(index / 8) else {
        return;
    };
    if let Some(b) = bitmap.get_mut(byte) {
        if value {
            *b |= order.mask(index);
        } else {
            *b &= !order.mask(index);
        }
    }
}

/// The run of equal bits starting at `start`, at most `max` long: its value
/// and its length (at least 1 when `max > 0`). Bits past the end read as clear.
pub fn run_at(bitmap: &[u8], order: BitOrder, start: u64, max: u64) -> (bool, u64) {
    let value = is_set(bitmap, order, start);
    let uniform = if value { 0xFF } else { 0x00 };
    let mut len = 0u64;
    while len < max {
        let i = start + len;
        // Whole bytes of the run's value go eight bits at a time.
        if i.is_multiple_of(8) && max - len >= 8 {
            let b = usize::try_from(i / 8).ok().and_then(|byte| bitmap.get(byte).copied()).unwrap_or(0);
            if b == uniform {
                len += 8;
                continue;
            }
        }
        if is_set(bitmap, order, i) != value {
            break;
        }
        len += 1;
    }
    (value, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_orders_read_the_same_byte_differently() {
        let bm = [0b0000_0001u8];
        assert!(is_set(&bm, BitOrder::LsbFirst, 0));
        assert!(!is_set(&bm, BitOrder::MsbFirst, 0));
        assert!(is_set(&bm, BitOrder::MsbFirst, 7));
    }

    #[test]
    fn runs_cross_bytes_and_stop_at_max() {
        let bm = [0b1000_0001u8, 0xFF, 0x00];
        assert_eq!(run_at(&bm, BitOrder::MsbFirst, 7, 100), (true, 9));
        assert_eq!(run_at(&bm, BitOrder::MsbFirst, 16, 100), (false, 100));
        assert_eq!(run_at(&bm, BitOrder::MsbFirst, 1, 3), (false, 3));
        assert_eq!(run_at(&bm, BitOrder::LsbFirst, 0, 100), (true, 1));
        assert_eq!(run_at(&bm, BitOrder::LsbFirst, 7, 100), (true, 9));
    }

    #[test]
    fn set_then_read_back() {
        let mut bm = [0u8; 2];
        set(&mut bm, BitOrder::LsbFirst, 9, true);
        assert_eq!(bm, [0, 2]);
        set(&mut bm, BitOrder::MsbFirst, 0, true);
        assert_eq!(bm, [0x80, 2]);
        set(&mut bm, BitOrder::LsbFirst, 9, false);
        assert_eq!(bm, [0x80, 0]);
        set(&mut bm, BitOrder::LsbFirst, 99, true);
    }
}
