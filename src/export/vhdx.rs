//! VHDX output: fixed, dynamic, or a differencing child of a parent.
//!
//! Layout: the 1 MiB header section (file identifier, two headers with fresh
//! GUIDs, two region tables), an empty 1 MiB log, a 1 MiB metadata region,
//! the BAT, then payload blocks (and, for children, sector-bitmap blocks)
//! appended 1 MiB-aligned in the order the source is scanned. Memory: the BAT
//! (8 bytes per block) and, for children, one 1 MiB sector bitmap.

use std::time::Instant;

use super::output::{Dest, Output};
use super::parent::ParentRef;
use super::scan::Scanner;
use super::{ExportError, ExportOptions, ExportReport};
use crate::disk::{ImageFormat, VirtualDisk};
use crate::format::bits;
use crate::format::vhdx::bat::{BatEntry, BatLayout, PayloadState, SB_BLOCK_PRESENT};
use crate::format::vhdx::crc::seal_crc;
use crate::format::vhdx::metadata::{
    self, FILE_PARAMETERS, LOGICAL_SECTOR_SIZE, MAX_VIRTUAL_SIZE, MetadataEntry, MetadataTableHeader, PARENT_LOCATOR,
    PHYSICAL_SECTOR_SIZE, VIRTUAL_DISK_ID, VIRTUAL_DISK_SIZE,
};
use crate::format::vhdx::region::{BAT_REGION, METADATA_REGION, REGION_TABLE_OFFSETS, RegionEntry, RegionTableHeader};
use crate::format::vhdx::{self, BITMAP_ORDER, FileIdentifier, HEADER_OFFSETS, Header, MIB, ParentLocator};
use crate::format::{Guid, Structure};

/// Default block size, as Hyper-V writes.
pub const DEFAULT_VHDX_BLOCK: u32 = 32 << 20;
const LOG_OFFSET: u64 = MIB;
const LOG_LENGTH: u64 = MIB;
const METADATA_OFFSET: u64 = 2 * MIB;
const METADATA_LENGTH: u64 = MIB;
const BAT_OFFSET: u64 = 3 * MIB;

/// Writes `disk` as a VHDX (fixed when `fixed`, else dynamic, or a child of
/// `options.parent`).
pub(crate) fn write(
    disk: &dyn VirtualDisk,
    dest: Dest<'_>,
    fixed: bool,
    options: &ExportOptions,
) -> crate::Result<ExportReport> {
    let start = Instant::now();
    let info = disk.info();
    let size = info.virtual_size;
    let block = options.block_size.unwrap_or(DEFAULT_VHDX_BLOCK);
    if !block.is_power_of_two() || !(MIB as u32..=256 * MIB as u32).contains(&block) {
        return Err(ExportError::Invalid(format!(
            "VHDX block size {block} is not a power of two from 1 MiB to 256 MiB"
        ))
        .into());
    }
    let logical = info.logical_sector_size;
    let physical = if matches!(info.physical_sector_size, 512 | 4096) { info.physical_sector_size } else { 4096 };
    if !matches!(logical, 512 | 4096) {
        return Err(ExportError::Invalid(format!("VHDX sectors are 512 or 4096 bytes, not {logical}")).into());
    }
    if size == 0 || size > MAX_VIRTUAL_SIZE || !size.is_multiple_of(u64::from(logical)) {
        return Err(ExportError::Invalid(format!(
            "a VHDX holds up to 64 TiB in whole {logical}-byte sectors; the disk has {size} bytes"
        ))
        .into());
    }
    if fixed && options.parent.is_some() {
        return Err(ExportError::Invalid("a differencing child cannot be fixed".into()).into());
    }
    let parent = match &options.parent {
        Some(p) => Some(ParentRef::open(p, dest.path(), ImageFormat::Vhdx, disk, &options.open)?),
        None => None,
    };
    let layout = BatLayout::new(block, logical, size, parent.is_some());
    let bat_length = layout.table_bytes().div_ceil(MIB).max(1) * MIB;
    let data_start = BAT_OFFSET + bat_length;
    let pending = dest.create()?;
    let mut report = ExportReport { virtual_size: size, ..Default::default() };
    let mut bat = vec![0u64; layout.entries as usize];
    let block = u64::from(block);

    let base = parent.as_ref().map(|p| &p.disk as &dyn VirtualDisk);
    let mut next = data_start;
    if fixed {
        next = data_start + layout.payload_blocks * block;
    }
    // The sector bitmap of the chunk being written (children only).
    let mut chunk_bitmap = vec![0u8; if parent.is_some() { MIB as usize } else { 0 }];
    let mut chunk_dirty = false;
    let spb = layout.sectors_per_block();
    Scanner::run(disk, base, u64::from(logical), block, options, |scanner| {
        for b in 0..layout.payload_blocks {
            let block_start = b * block;
            let len = layout.block_bytes(b);
            let mut place: Option<u64> = fixed.then_some(data_start + b * block);
            let mut written = 0u64;
            let plan = scanner.block(block_start, len, |within, bytes| {
                let at = *place.get_or_insert_with(|| {
                    let at = next;
                    next += block;
                    at
                });
                written += bytes.len() as u64;
                pending.write_at(bytes, at + within).map_err(Into::into)
            })?;
            report.bytes_written += written;
            let index = layout.payload_index(b) as usize;
            bat[index] = if fixed {
                BatEntry::new(PayloadState::FullyPresent.bits(), data_start + b * block).0
            } else if !plan.stores() {
                0 // NOT_PRESENT: zeros, or the parent's bytes.
            } else if parent.is_some() && plan.source_zero {
                BatEntry::new(PayloadState::Zero.bits(), 0).0
            } else {
                let at = *place.get_or_insert_with(|| {
                    let at = next;
                    next += block;
                    at
                });
                let whole = len.div_ceil(u64::from(logical));
                if parent.is_none() || plan.present_sectors() >= whole {
                    BatEntry::new(PayloadState::FullyPresent.bits(), at).0
                } else {
                    let first_bit = (b % layout.chunk_ratio) * spb;
                    for r in &plan.present {
                        for s in r.clone() {
                            bits::set(&mut chunk_bitmap, BITMAP_ORDER, first_bit + s, true);
                        }
                    }
                    chunk_dirty = true;
                    BatEntry::new(PayloadState::PartiallyPresent.bits(), at).0
                }
            };
            // The chunk's last block (or the disk's): write its sector bitmap.
            let chunk_ends = (b + 1) % layout.chunk_ratio == 0 || b + 1 == layout.payload_blocks;
            if parent.is_some() && chunk_ends && chunk_dirty {
                let at = next;
                next += MIB;
                pending.write_at(&chunk_bitmap, at)?;
                let chunk = b / layout.chunk_ratio;
                bat[layout.bitmap_index(chunk) as usize] = BatEntry::new(SB_BLOCK_PRESENT, at).0;
                chunk_bitmap.fill(0);
                chunk_dirty = false;
            }
        }
        report.bytes_read = scanner.bytes_read;
        Ok(())
    })?;

    // Metadata, BAT, region tables, headers, file identifier.
    let disk_id = options.disk_id.unwrap_or_else(Guid::new_random);
    write_metadata(&pending, &layout, fixed, disk_id, logical, physical, parent.as_ref())?;
    let bat_bytes: Vec<u8> = bat.iter().flat_map(|e| e.to_le_bytes()).collect();
    pending.write_at(&bat_bytes, BAT_OFFSET)?;
    write_regions(&pending, bat_length)?;
    let file_write = Guid::new_random();
    let data_write = Guid::new_random();
    for (i, at) in HEADER_OFFSETS.iter().enumerate() {
        let h = Header {
            checksum: 0,
            sequence_number: i as u64 + 1,
            file_write_guid: file_write,
            data_write_guid: data_write,
            log_guid: Guid::NIL,
            log_version: 0,
            version: 1,
            log_length: LOG_LENGTH as u32,
            log_offset: LOG_OFFSET,
            reserved: [0; 4016],
        };
        let mut bytes = h.encode();
        seal_crc(&mut bytes, 4..8);
        pending.write_at(&bytes, *at)?;
    }
    let creator = format!("vhdkit {}", env!("CARGO_PKG_VERSION"));
    pending.write_at(&FileIdentifier::new(&creator).encode(), 0)?;
    let file_size = next.max(data_start);
    pending.set_len(file_size)?;
    report.file_size = file_size;
    pending.commit(options.sync, options.replace)?;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

fn write_regions(pending: &Output<'_>, bat_length: u64) -> crate::Result<()> {
    let mut table = vec![0u8; vhdx::region::REGION_TABLE_SIZE];
    let header = RegionTableHeader { checksum: 0, entry_count: 2, reserved: 0 };
    table[..16].copy_from_slice(&header.encode());
    let entries = [
        RegionEntry { guid: BAT_REGION, file_offset: BAT_OFFSET, length: bat_length as u32, flags: 1 },
        RegionEntry { guid: METADATA_REGION, file_offset: METADATA_OFFSET, length: METADATA_LENGTH as u32, flags: 1 },
    ];
    for (i, e) in entries.iter().enumerate() {
        table[16 + 32 * i..48 + 32 * i].copy_from_slice(&e.encode());
    }
    seal_crc(&mut table, 4..8);
    for at in REGION_TABLE_OFFSETS {
        pending.write_at(&table, at)?;
    }
    Ok(())
}

fn write_metadata(
    pending: &Output<'_>,
    layout: &BatLayout,
    fixed: bool,
    disk_id: Guid,
    logical: u32,
    physical: u32,
    parent: Option<&ParentRef>,
) -> crate::Result<()> {
    let flags = u32::from(fixed) | if parent.is_some() { 2 } else { 0 };
    let params = metadata::FileParameters { block_size: layout.block_size as u32, flags };
    // (id, bytes, flags): IsRequired = 4, IsVirtualDisk = 2.
    let mut items: Vec<(Guid, Vec<u8>, u32)> = vec![
        (FILE_PARAMETERS, params.encode(), 4),
        (VIRTUAL_DISK_SIZE, layout.virtual_size.to_le_bytes().to_vec(), 6),
        (VIRTUAL_DISK_ID, disk_id.to_mixed_endian().to_vec(), 6),
        (LOGICAL_SECTOR_SIZE, logical.to_le_bytes().to_vec(), 6),
        (PHYSICAL_SECTOR_SIZE, physical.to_le_bytes().to_vec(), 6),
    ];
    if let Some(p) = parent {
        let absolute = if p.absolute.as_bytes().get(1) == Some(&b':') {
            format!("\\\\?\\{}", p.absolute)
        } else {
            p.absolute.clone()
        };
        let locator = ParentLocator {
            entries: vec![
                ("parent_linkage".into(), format!("{{{}}}", p.identity)),
                ("relative_path".into(), p.relative.clone()),
                ("absolute_win32_path".into(), absolute),
            ],
        };
        items.push((PARENT_LOCATOR, locator.encode(), 4));
    }
    let mut region = vec![0u8; METADATA_LENGTH as usize];
    let header = MetadataTableHeader { reserved: 0, entry_count: items.len() as u16, reserved2: [0; 20] };
    region[..32].copy_from_slice(&header.encode());
    let mut at = 64 * 1024usize;
    for (i, (id, bytes, flags)) in items.iter().enumerate() {
        let entry =
            MetadataEntry { item_id: *id, offset: at as u32, length: bytes.len() as u32, flags: *flags, reserved: 0 };
        region[32 + 32 * i..64 + 32 * i].copy_from_slice(&entry.encode());
        region[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len().div_ceil(8) * 8;
    }
    pending.write_at(&region, METADATA_OFFSET)?;
    Ok(())
}
