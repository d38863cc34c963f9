//! The VHD hard disk footer: 512 big-endian bytes at the end of every VHD
//! (and, for dynamic and differencing disks, copied at offset 0).

use binrw::binrw;

use super::checksum::{ones_complement_sum, verify};
use super::geometry::Geometry;
use crate::format::{FormatError, Guid, Result, Structure};

/// Size of a footer on disk.
pub const FOOTER_SIZE: usize = 512;
/// Images made before Virtual PC 2004 may end in a footer one byte short.
pub const LEGACY_FOOTER_SIZE: usize = 511;
/// Byte range of the checksum field within the footer.
const CHECKSUM_FIELD: std::ops::Range<usize> = 64..68;
/// `data_offset` of a fixed disk: no dynamic header.
pub const NO_DATA_OFFSET: u64 = u64::MAX;

/// The hard disk footer exactly as stored.
#[binrw]
#[brw(big, magic = b"conectix")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    /// Feature flags; bit 1 ("reserved") is always set by conforming writers.
    pub features: u32,
    /// 0x0001_0000 for every VHD ever written.
    pub format_version: u32,
    /// Absolute offset of the dynamic header, or all ones for fixed disks.
    pub data_offset: u64,
    /// Seconds since 2000-01-01 00:00:00 UTC.
    pub timestamp: u32,
    /// Four-character creator application ("win ", "vpc ", "qemu", "d2v\0"...).
    pub creator_app: [u8; 4],
    /// Version of the program that made the image.
    pub creator_version: u32,
    /// "Wi2k" or "Mac " in practice; some tools leave it zero.
    pub creator_host_os: [u8; 4],
    /// The size in bytes when the image was created.
    pub original_size: u64,
    /// The disk's size in bytes as the creator meant it.
    pub current_size: u64,
    /// Cylinders, heads and sectors per track.
    pub geometry: Geometry,
    /// 2 fixed, 3 dynamic, 4 differencing.
    pub disk_type: u32,
    /// The structure's checksum, as stored.
    pub checksum: u32,
    /// The image's unique id (what a child links to).
    pub unique_id: Guid,
    /// 1 if the image is in a saved state.
    pub saved_state: u8,
    /// Reserved, zero.
    pub reserved: [u8; 427],
}

impl Structure for Footer {
    const NAME: &'static str = "VHD footer";
    const SIZE: usize = FOOTER_SIZE;
    const MAGIC: &'static str = "conectix";
}

/// The kind of VHD, from the footer's disk type field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskType {
    /// Data stored flat, followed by the footer.
    Fixed,
    /// Blocks allocated on first write through a block allocation table.
    Dynamic,
    /// A dynamic disk whose unwritten sectors come from a parent image.
    Differencing,
}

impl DiskType {
    /// The on-disk value.
    pub fn code(self) -> u32 {
        match self {
            DiskType::Fixed => 2,
            DiskType::Dynamic => 3,
            DiskType::Differencing => 4,
        }
    }
}

impl Footer {
    /// The disk type, or an error for the reserved and "none" values.
    /// `offset` is where the footer lies, for the error message.
    pub fn disk_type(&self, offset: u64) -> Result<DiskType> {
        match self.disk_type {
            2 => Ok(DiskType::Fixed),
            3 => Ok(DiskType::Dynamic),
            4 => Ok(DiskType::Differencing),
            other => Err(FormatError::corrupt(
                "VHD footer",
                offset + 60,
                format!("disk type {other} is not fixed (2), dynamic (3) or differencing (4)"),
            )),
        }
    }

    /// The creator application as text, with NULs and padding trimmed.
    pub fn creator(&self) -> String {
        String::from_utf8_lossy(&self.creator_app).trim_end_matches(['\0', ' ']).to_string()
    }

    /// Which size the image's creator meant.
    ///
    /// * Virtual PC (`"vpc "`), Virtual Server (`"vs  "`) and qemu without
    ///   `force_size` (`"qemu"`) address only the sectors of the CHS geometry,
    ///   so their size is the geometry's, unless the geometry is the maximum
    ///   65535/16/255, which means "too large to describe";
    /// * everyone else (Hyper-V and Windows `"win "`, Disk2vhd, qemu with
    ///   `force_size` `"qem2"`, Xen, vhd-tool, Azure) means `current_size`,
    ///   the specification's answer.
    ///
    /// This is qemu 10's rule too, except that qemu does not know Virtual
    /// Server's `"vs  "` and so uses `current_size` for it.
    pub fn size_rule(&self) -> SizeRule {
        let chs_creator = matches!(&self.creator_app, b"vpc " | b"vs  " | b"qemu");
        if chs_creator && !self.geometry.is_max() { SizeRule::Geometry } else { SizeRule::CurrentSize }
    }

    /// The virtual size in bytes under [`Footer::size_rule`].
    pub fn virtual_size(&self) -> u64 {
        match self.size_rule() {
            SizeRule::Geometry => self.geometry.size_bytes(),
            SizeRule::CurrentSize => self.current_size,
        }
    }
}

/// Where a VHD's virtual size comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SizeRule {
    /// The footer's current size field.
    CurrentSize,
    /// Cylinders × heads × sectors × 512.
    Geometry,
}

/// The footer checksum of `bytes` (a whole footer): the one's complement of
/// the byte sum with the checksum field taken as zero.
pub fn footer_checksum(bytes: &[u8]) -> u32 {
    ones_complement_sum(bytes, CHECKSUM_FIELD)
}

/// Checks a footer's stored checksum against its bytes.
pub fn verify_footer_checksum(bytes: &[u8], offset: u64) -> Result<()> {
    verify(bytes, CHECKSUM_FIELD, "VHD footer", offset)
}

/// Finds the footer in the last bytes of a file.
///
/// `tail` is the file's last up to 512 bytes and `file_size` the file's size.
/// Returns the footer's bytes (always 512, a legacy 511-byte footer padded
/// with one zero byte, which is what its checksum assumes) and its absolute
/// offset.
pub fn locate_footer(tail: &[u8], file_size: u64) -> Result<([u8; FOOTER_SIZE], u64)> {
    let mut out = [0u8; FOOTER_SIZE];
    if tail.len() >= FOOTER_SIZE {
        let start = tail.len() - FOOTER_SIZE;
        if tail[start..].starts_with(b"conectix") {
            out.copy_from_slice(&tail[start..]);
            return Ok((out, file_size - FOOTER_SIZE as u64));
        }
    }
    if tail.len() >= LEGACY_FOOTER_SIZE {
        let start = tail.len() - LEGACY_FOOTER_SIZE;
        if tail[start..].starts_with(b"conectix") {
            out[..LEGACY_FOOTER_SIZE].copy_from_slice(&tail[start..]);
            return Ok((out, file_size - LEGACY_FOOTER_SIZE as u64));
        }
    }
    if tail.len() < LEGACY_FOOTER_SIZE {
        return Err(FormatError::Truncated {
            structure: "VHD footer",
            offset: 0,
            needed: FOOTER_SIZE as u64,
            available: tail.len() as u64,
        });
    }
    Err(FormatError::BadSignature {
        structure: "VHD footer",
        offset: file_size.saturating_sub(FOOTER_SIZE as u64),
        expected: "conectix",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Footer {
        Footer {
            features: 2,
            format_version: 0x0001_0000,
            data_offset: 512,
            timestamp: 0x1234_5678,
            creator_app: *b"win ",
            creator_version: 0x000a_0000,
            creator_host_os: *b"Wi2k",
            original_size: 10 << 20,
            current_size: 10 << 20,
            geometry: Geometry { cylinders: 301, heads: 4, sectors_per_track: 17 },
            disk_type: 3,
            checksum: 0,
            unique_id: Guid::from_canonical([7; 16]),
            saved_state: 0,
            reserved: [0; 427],
        }
    }

    #[test]
    fn encodes_to_512_bytes_with_the_cookie_first() {
        let bytes = sample().encode();
        assert_eq!(bytes.len(), 512);
        assert_eq!(&bytes[..8], b"conectix");
        assert_eq!(&bytes[28..32], b"win ");
        assert_eq!(u32::from_be_bytes(bytes[60..64].try_into().unwrap()), 3);
    }

    #[test]
    fn checksum_round_trips_and_detects_a_flip() {
        let mut f = sample();
        f.checksum = footer_checksum(&f.encode());
        let mut bytes = f.encode();
        verify_footer_checksum(&bytes, 0).unwrap();
        bytes[100] ^= 1;
        assert!(matches!(verify_footer_checksum(&bytes, 4096), Err(FormatError::BadChecksum { offset: 4096, .. })));
    }

    #[test]
    fn size_rule_follows_the_creator() {
        let mut f = sample();
        assert_eq!(f.virtual_size(), 10 << 20);
        f.creator_app = *b"vpc ";
        assert_eq!(f.virtual_size(), 301 * 4 * 17 * 512);
        f.geometry = Geometry { cylinders: 65535, heads: 16, sectors_per_track: 255 };
        assert_eq!(f.virtual_size(), 10 << 20);
    }

    #[test]
    fn finds_a_legacy_511_byte_footer() {
        let bytes = sample().encode();
        let mut file = vec![0xEEu8; 1000];
        file.extend_from_slice(&bytes[..511]);
        let (found, at) = locate_footer(&file[file.len() - 512..], file.len() as u64).unwrap();
        assert_eq!(at, 1000);
        assert_eq!(&found[..511], &bytes[..511]);
        assert_eq!(found[511], 0);
    }

    #[test]
    fn a_missing_cookie_is_a_bad_signature_at_the_footer() {
        let file = vec![0u8; 4096];
        let err = locate_footer(&file[file.len() - 512..], 4096).unwrap_err();
        assert_eq!(err, FormatError::BadSignature { structure: "VHD footer", offset: 3584, expected: "conectix" });
    }
}
