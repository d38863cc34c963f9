//! VHD (Virtual PC / Virtual Server / Hyper-V generation 1) structures.
//!
//! Everything is big-endian. A fixed disk is its data followed by a 512-byte
//! footer. A dynamic or differencing disk is a footer copy, a dynamic header,
//! a block allocation table, blocks (each a sector bitmap followed by the
//! data) and the footer.
//!
//! May import: `format`'s shared pieces (GUIDs, errors, checksums).

pub mod bat;
pub mod bitmap;
pub mod checksum;
pub mod dynamic_header;
pub mod footer;
pub mod geometry;
pub mod locator;

pub use bat::{Bat, BatEntry, BlockLocation, UNALLOCATED};
pub use dynamic_header::{DYNAMIC_HEADER_SIZE, DynamicHeader, dynamic_header_checksum, verify_dynamic_header_checksum};
pub use footer::{
    DiskType, FOOTER_SIZE, Footer, NO_DATA_OFFSET, SizeRule, footer_checksum, locate_footer, verify_footer_checksum,
};
pub use geometry::Geometry;
pub use locator::{LocatorEntry, Platform, decode_locator_path};

/// VHD sectors are always 512 bytes.
pub const SECTOR_SIZE: u64 = 512;

/// Seconds between the Unix epoch and VHD's (2000-01-01 00:00:00 UTC).
pub const VHD_EPOCH_UNIX: u64 = 946_684_800;
