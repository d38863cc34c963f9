//! VHDX checksums: CRC-32C over a structure with its checksum field taken as
//! zero, stored little-endian.

use std::ops::Range;

use crate::format::{FormatError, Result};

/// CRC-32C of `bytes` with the four bytes at `field` counted as zero.
pub fn crc32c_zeroed(bytes: &[u8], field: Range<usize>) -> u32 {
    let start = field.start.min(bytes.len());
    let end = field.end.min(bytes.len());
    let crc = crc32c::crc32c(&bytes[..start]);
    let crc = crc32c::crc32c_append(crc, &[0u8; 4][..end - start]);
    crc32c::crc32c_append(crc, &bytes[end..])
}

/// Checks the CRC-32C stored at `field` (little-endian) of a structure found
/// at absolute `offset`.
pub fn verify_crc(bytes: &[u8], field: Range<usize>, structure: &'static str, offset: u64) -> Result<()> {
    let stored =
        bytes.get(field.clone()).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(u32::from_le_bytes).ok_or(
            FormatError::Truncated { structure, offset, needed: field.end as u64, available: bytes.len() as u64 },
        )?;
    let computed = crc32c_zeroed(bytes, field);
    if stored == computed { Ok(()) } else { Err(FormatError::BadChecksum { structure, offset, stored, computed }) }
}

/// Writes the CRC-32C of `bytes` into its `field` (for writers and tests).
pub fn seal_crc(bytes: &mut [u8], field: Range<usize>) {
    let crc = crc32c_zeroed(bytes, field.clone());
    bytes[field].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value_and_zeroed_field() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        let mut a = *b"ab\x01\x02\x03\x04cd";
        let b = *b"ab\0\0\0\0cd";
        assert_eq!(crc32c_zeroed(&a, 2..6), crc32c::crc32c(&b));
        seal_crc(&mut a, 2..6);
        verify_crc(&a, 2..6, "test", 0).unwrap();
        a[7] ^= 0x40;
        assert!(verify_crc(&a, 2..6, "test", 0).is_err());
    }
}
