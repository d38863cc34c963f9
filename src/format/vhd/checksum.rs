//! VHD's checksum: the one's complement of the sum of every byte of the
//! structure, with the checksum field itself taken as zero. The footer and
//! the dynamic header use the same rule.

use std::ops::Range;

use crate::format::{FormatError, Result};

/// The checksum of `bytes` with the bytes in `field` counted as zero.
pub fn ones_complement_sum(bytes: &[u8], field: Range<usize>) -> u32 {
    let sum = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !field.contains(i))
        .fold(0u32, |acc, (_, &b)| acc.wrapping_add(u32::from(b)));
    !sum
}

/// The checksum stored in `field` (big-endian), or `None` if `bytes` is too short.
pub fn stored(bytes: &[u8], field: Range<usize>) -> Option<u32> {
    let raw: [u8; 4] = bytes.get(field)?.try_into().ok()?;
    Some(u32::from_be_bytes(raw))
}

/// Compares the stored and computed checksums of a structure at `offset`.
pub fn verify(bytes: &[u8], field: Range<usize>, structure: &'static str, offset: u64) -> Result<()> {
    let Some(stored) = stored(bytes, field.clone()) else {
        return Err(FormatError::Truncated {
            structure,
            offset,
            needed: field.end as u64,
            available: bytes.len() as u64,
        });
    };
    let computed = ones_complement_sum(bytes, field.clone());
    if stored == computed { Ok(()) } else { Err(FormatError::BadChecksum { structure, offset, stored, computed }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_hand_computed_sum() {
        // 1 + 2 + 3 = 6 (the field bytes 0xFF are skipped); !6 = 0xFFFF_FFF9.
        let bytes = [1u8, 0xFF, 0xFF, 0xFF, 0xFF, 2, 3];
        assert_eq!(ones_complement_sum(&bytes, 1..5), 0xFFFF_FFF9);
    }
}
