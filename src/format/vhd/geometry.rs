//! Cylinder/head/sector geometry, which VHD still records and some creators
//! (Virtual PC) use as the disk's true size.

use binrw::binrw;

/// The largest geometry the footer can express; creators write it for disks
/// too large to describe, and then the geometry says nothing about the size.
pub const MAX_GEOMETRY: Geometry = Geometry { cylinders: 65535, heads: 16, sectors_per_track: 255 };

/// The footer's disk geometry field (4 bytes, big-endian).
#[binrw]
#[brw(big)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Geometry {
    /// Cylinders.
    pub cylinders: u16,
    /// Heads per cylinder.
    pub heads: u8,
    /// Sectors per track.
    pub sectors_per_track: u8,
}

impl Geometry {
    /// Total sectors the geometry addresses.
    pub fn sectors(&self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors_per_track)
    }

    /// Bytes the geometry addresses (512-byte sectors).
    pub fn size_bytes(&self) -> u64 {
        self.sectors() * 512
    }

    /// Whether this is the "too large to describe" maximum.
    pub fn is_max(&self) -> bool {
        self.sectors() == MAX_GEOMETRY.sectors()
    }

    /// The geometry the VHD specification's appendix assigns to a disk of
    /// `total_sectors` 512-byte sectors (capped at the maximum geometry).
    /// Its size is at most the disk's: the algorithm rounds down.
    pub fn for_sectors(total_sectors: u64) -> Geometry {
        let total = total_sectors.min(65535 * 16 * 255);
        let (sectors_per_track, heads, cylinder_times_heads);
        if total >= 65535 * 16 * 63 {
            sectors_per_track = 255u64;
            heads = 16u64;
            cylinder_times_heads = total / sectors_per_track;
        } else {
            let mut spt = 17u64;
            let mut cth = total / spt;
            let mut h = cth.div_ceil(1024).max(4);
            if cth >= h * 1024 || h > 16 {
                spt = 31;
                h = 16;
                cth = total / spt;
            }
            if cth >= h * 1024 {
                spt = 63;
                h = 16;
                cth = total / spt;
            }
            sectors_per_track = spt;
            heads = h;
            cylinder_times_heads = cth;
        }
        let cylinders = cylinder_times_heads / heads;
        Geometry {
            cylinders: u16::try_from(cylinders).unwrap_or(u16::MAX),
            heads: heads as u8,
            sectors_per_track: sectors_per_track as u8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_algorithm_matches_geometries_windows_wrote() {
        // Geometries recorded in the corpus's Windows-made footers.
        let g = Geometry::for_sectors(10 * 1024 * 1024 / 512);
        assert_eq!((g.cylinders, g.heads, g.sectors_per_track), (301, 4, 17));
        let g = Geometry::for_sectors(512 * 1024 * 1024 / 512);
        assert_eq!((g.cylinders, g.heads, g.sectors_per_track), (1040, 16, 63));
        let g = Geometry::for_sectors(4 * 1024 * 1024 / 512);
        assert_eq!((g.cylinders, g.heads, g.sectors_per_track), (120, 4, 17));
        let g = Geometry::for_sectors(136_365_211_648 / 512);
        assert_eq!((g.cylinders, g.heads, g.sectors_per_track), (65278, 16, 255));
    }
}
