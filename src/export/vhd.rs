//! VHD output: fixed (data then footer) and dynamic or differencing (footer
//! copy, dynamic header, BAT, locators, blocks, footer).
//!
//! Blocks are written as the source is scanned, in order; the BAT (4 bytes
//! per block) is the only thing held in memory. Blocks that would hold only
//! zeros (or, for a child, only what the parent already holds) are not
//! allocated. The creator is "vkit" with the exact size in `current_size`
//! and the specification's CHS geometry, which every reader that follows
//! the specification (and qemu 10) sizes by `current_size`.

use std::time::Instant;

use super::output::Dest;
use super::parent::ParentRef;
use super::scan::Scanner;
use super::{ExportError, ExportOptions, ExportReport};
use crate::disk::{ImageFormat, VirtualDisk};
use crate::format::bits::{self, BitOrder};
use crate::format::vhd::{
    self, DYNAMIC_HEADER_SIZE, DynamicHeader, FOOTER_SIZE, Footer, Geometry, LocatorEntry, NO_DATA_OFFSET,
    VHD_EPOCH_UNIX,
};
use crate::format::{Guid, Structure};

/// The largest disk VHD tools accept (2040 GiB).
pub const MAX_VHD_SIZE: u64 = 2040 << 30;
/// Default block size for dynamic VHDs, as Hyper-V and qemu write.
pub const DEFAULT_VHD_BLOCK: u32 = 2 << 20;
const BAT_OFFSET: u64 = 1536;

fn vhd_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs().saturating_sub(VHD_EPOCH_UNIX) as u32)
        .unwrap_or(0)
}

fn footer(size: u64, disk_type: vhd::DiskType, data_offset: u64, id: Guid) -> [u8; FOOTER_SIZE] {
    let mut f = Footer {
        features: 2,
        format_version: 0x0001_0000,
        data_offset,
        timestamp: vhd_now(),
        creator_app: *b"vkit",
        creator_version: 0x0000_0001,
        creator_host_os: *b"Wi2k",
        original_size: size,
        current_size: size,
        geometry: Geometry::for_sectors(size / 512),
        disk_type: disk_type.code(),
        checksum: 0,
        unique_id: id,
        saved_state: 0,
        reserved: [0; 427],
    };
    f.checksum = vhd::footer_checksum(&f.encode());
    let mut out = [0u8; FOOTER_SIZE];
    out.copy_from_slice(&f.encode());
    out
}

fn check_size(size: u64) -> Result<(), ExportError> {
    if size == 0 || !size.is_multiple_of(512) {
        return Err(ExportError::Invalid(format!("a VHD holds whole 512-byte sectors; the disk has {size} bytes")));
    }
    if size > MAX_VHD_SIZE {
        return Err(ExportError::Invalid(format!("{size} bytes exceeds the VHD limit of 2040 GiB; use VHDX")));
    }
    Ok(())
}

/// Writes a fixed VHD: the disk's bytes (zeros left as holes), then the footer.
pub(crate) fn write_fixed(
    disk: &dyn VirtualDisk,
    dest: Dest<'_>,
    options: &ExportOptions,
) -> crate::Result<ExportReport> {
    let start = Instant::now();
    let size = disk.size();
    check_size(size)?;
    let pending = dest.create()?;
    let mut report = ExportReport { virtual_size: size, ..Default::default() };
    super::raw::write_flat(disk, &pending, &mut report, options)?;
    let id = options.disk_id.unwrap_or_else(Guid::new_random);
    pending.write_at(&footer(size, vhd::DiskType::Fixed, NO_DATA_OFFSET, id), size)?;
    report.file_size = size + FOOTER_SIZE as u64;
    pending.set_len(report.file_size)?;
    pending.commit(options.sync, options.replace)?;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Writes a dynamic VHD, or a differencing child of `options.parent`.
pub(crate) fn write_dynamic(
    disk: &dyn VirtualDisk,
    dest: Dest<'_>,
    options: &ExportOptions,
) -> crate::Result<ExportReport> {
    let start = Instant::now();
    let size = disk.size();
    check_size(size)?;
    let block = u64::from(options.block_size.unwrap_or(DEFAULT_VHD_BLOCK));
    if !block.is_power_of_two() || !(512..=(1 << 31)).contains(&block) {
        return Err(ExportError::Invalid(format!("VHD block size {block} is not a power of two from 512 bytes")).into());
    }
    let parent = match &options.parent {
        Some(p) => Some(ParentRef::open(p, dest.path(), ImageFormat::Vhd, disk, &options.open)?),
        None => None,
    };
    let blocks = size.div_ceil(block);
    let entries = u32::try_from(blocks).map_err(|_| ExportError::Invalid("too many blocks".into()))?;
    let bitmap_size = vhd::bitmap::bitmap_size(block as u32);
    let pending = dest.create()?;

    // Locator blobs sit after the BAT.
    let mut next = BAT_OFFSET + (blocks * 4).div_ceil(512) * 512;
    let mut locators = [LocatorEntry::default(); 8];
    let mut header = DynamicHeader {
        data_offset: u64::MAX,
        table_offset: BAT_OFFSET,
        header_version: 0x0001_0000,
        max_table_entries: entries,
        block_size: block as u32,
        checksum: 0,
        parent_unique_id: Guid::NIL,
        parent_timestamp: 0,
        reserved1: 0,
        parent_unicode_name: [0; 512],
        parent_locators: locators,
        reserved2: [0; 256],
    };
    if let Some(p) = &parent {
        header.parent_unique_id = p.identity;
        header.parent_timestamp = p.vhd_timestamp;
        for (slot, unit) in header.parent_unicode_name.chunks_exact_mut(2).zip(p.name.encode_utf16().take(255)) {
            slot.copy_from_slice(&unit.to_be_bytes());
        }
        for (i, (code, path)) in [(*b"W2ru", &p.relative), (*b"W2ku", &p.absolute)].into_iter().enumerate() {
            let data: Vec<u8> = path.encode_utf16().flat_map(u16::to_le_bytes).collect();
            let space = (data.len() as u64).div_ceil(512).max(1) * 512;
            pending.write_at(&data, next)?;
            // Windows records the space in bytes; readers use the length.
            locators[i] = LocatorEntry {
                platform_code: code,
                data_space: space as u32,
                data_length: data.len() as u32,
                reserved: 0,
                data_offset: next,
            };
            next += space;
        }
        header.parent_locators = locators;
    }

    let mut bat = vec![vhd::UNALLOCATED; blocks as usize];
    let mut report = ExportReport { virtual_size: size, ..Default::default() };
    let base = parent.as_ref().map(|p| &p.disk as &dyn VirtualDisk);
    Scanner::run(disk, base, 512, block, options, |scanner| {
        let mut bitmap = vec![0u8; bitmap_size as usize];
        for b in 0..blocks {
            let block_start = b * block;
            let len = (size - block_start).min(block);
            let mut place: Option<u64> = None;
            let mut written = 0u64;
            let plan = scanner.block(block_start, len, |within, bytes| {
                // Data 4 KiB-aligned, bitmap just in front of it.
                let data_at = *place.get_or_insert_with(|| {
                    let data = (next + bitmap_size).div_ceil(4096) * 4096;
                    next = data + block;
                    data
                });
                written += bytes.len() as u64;
                pending.write_at(bytes, data_at + within).map_err(Into::into)
            })?;
            if !plan.stores() {
                continue;
            }
            let data_at = *place.get_or_insert_with(|| {
                let data = (next + bitmap_size).div_ceil(4096) * 4096;
                next = data + block;
                data
            });
            bitmap.fill(0);
            let sectors = block / 512;
            let ranges: Vec<_> =
                if parent.is_some() { plan.present.clone() } else { std::iter::once(0..sectors).collect() };
            for r in ranges {
                for s in r {
                    bits::set(&mut bitmap, BitOrder::MsbFirst, s, true);
                }
            }
            let bitmap_at = data_at - bitmap_size;
            pending.write_at(&bitmap, bitmap_at)?;
            bat[b as usize] = u32::try_from(bitmap_at / 512)
                .map_err(|_| ExportError::Invalid("the VHD grew past the 2 TiB its BAT can address".into()))?;
            report.bytes_written += written;
        }
        report.bytes_read = scanner.bytes_read;
        Ok(())
    })?;

    let disk_type = if parent.is_some() { vhd::DiskType::Differencing } else { vhd::DiskType::Dynamic };
    let id = options.disk_id.unwrap_or_else(Guid::new_random);
    let f = footer(size, disk_type, 512, id);
    header.checksum = vhd::dynamic_header_checksum(&header.encode());
    let bat_bytes: Vec<u8> = bat.iter().flat_map(|e| e.to_be_bytes()).collect();
    let mut padded = bat_bytes;
    padded.resize(((blocks * 4).div_ceil(512) * 512) as usize, 0xFF);
    pending.write_at(&padded, BAT_OFFSET)?;
    pending.write_at(&header.encode(), FOOTER_SIZE as u64)?;
    debug_assert_eq!(DYNAMIC_HEADER_SIZE as u64 + FOOTER_SIZE as u64, BAT_OFFSET);
    pending.write_at(&f, 0)?;
    pending.write_at(&f, next)?;
    report.file_size = next + FOOTER_SIZE as u64;
    pending.set_len(report.file_size)?;
    pending.commit(options.sync, options.replace)?;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}
