//! VHDX structures ([MS-VHDX]).
//!
//! Everything is little-endian; GUIDs are mixed-endian. A file starts with a
//! 1 MiB header section (file identifier, two headers, two region tables);
//! the regions it names (BAT, metadata), the log, and the payload and
//! sector-bitmap blocks all sit at 1 MiB-aligned offsets after it.
//!
//! May import: `format`'s shared pieces (GUIDs, errors, CRC-32C) and its
//! own files.

pub mod bat;
pub mod crc;
pub mod file_id;
pub mod header;
pub mod log;
pub mod metadata;
pub mod parent_locator;
pub mod region;

pub use bat::{Bat, BatEntry, BatLayout, PayloadState};
pub use file_id::FileIdentifier;
pub use header::{CurrentHeader, HEADER_OFFSETS, Header, choose_current, parse_header};
pub use log::{ActiveSequence, LogWrite, find_active_sequence};
pub use metadata::{Metadata, MetadataTable};
pub use parent_locator::ParentLocator;
pub use region::{REGION_TABLE_OFFSETS, RegionTable, Regions};

use crate::format::bits::BitOrder;

/// 1 KiB.
pub const KIB: u64 = 1024;
/// 1 MiB: the alignment of everything after the header section.
pub const MIB: u64 = 1024 * 1024;
/// VHDX sector bitmaps number bits least significant first.
pub const BITMAP_ORDER: BitOrder = BitOrder::LsbFirst;
/// Every sector-bitmap block is 1 MiB and covers 2^23 logical sectors.
pub const SECTOR_BITMAP_BLOCK: u64 = MIB;
