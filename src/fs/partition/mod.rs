//! Partitions: an MBR (with its chain of logical partitions), a GPT (the
//! primary copy, or the backup one when the primary is damaged, each
//! CRC-checked), or a disk that is one bare file system. Sector numbers
//! are in the disk's own logical sectors (512 or 4096 bytes).
//!
//! Written by hand, not with the `gpt` or `mbrman` crates: both want to own
//! a `Read + Seek` device and parse eagerly, and neither falls back from a
//! damaged primary GPT to its backup while telling the caller which it
//! used. The parsers here are pure (`mbr`, `gpt`), fuzzed, and bounded:
//! at most 4 MiB of GPT entries and 128 logical partitions.
//!
//! May import: `super` (the layer's error, kinds and probe), `disk` (the
//! [`VirtualDisk`] trait) and `format` (GUIDs).

mod gpt;
mod mbr;

use std::collections::HashSet;

use serde::Serialize;

use super::FsKind;
use super::error::{FsError, Result};
use super::probe::{PROBE_BYTES, probe};
use crate::disk::VirtualDisk;
use crate::format::Guid;

/// The most logical partitions followed in an MBR's extended partition.
const MAX_LOGICAL: usize = 128;

/// How the disk is divided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// A master boot record (with logical partitions, if any).
    Mbr,
    /// A GUID partition table.
    Gpt,
    /// No table: the disk is one file system, or holds nothing known.
    None,
}

/// One partition, or the whole disk when it holds a bare file system.
#[derive(Debug, Clone, Serialize)]
pub struct Partition {
    /// 1-based: GPT slot, MBR slot (1-4) or logical partition (5 on, in
    /// chain order, as Linux numbers them); 0 for a bare whole disk.
    pub number: u32,
    /// Byte offset on the disk.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// The type: `0x07` for an MBR, the type GUID for a GPT.
    pub type_id: String,
    /// The type's well-known name, where it has one.
    pub type_name: Option<&'static str>,
    /// The GPT partition name.
    pub name: Option<String>,
    /// The GPT unique partition GUID.
    pub guid: Option<Guid>,
    /// The MBR boot flag.
    pub bootable: bool,
    /// A logical partition inside an MBR extended partition.
    pub logical: bool,
    /// The file system its first bytes show, if any.
    pub filesystem: Option<FsKind>,
}

impl Partition {
    /// The whole of a disk (or any byte range handed over as one) `length`
    /// bytes long, holding `filesystem`: partition 0, as [`partitions`]
    /// reports a bare file system.
    pub fn whole(length: u64, filesystem: Option<FsKind>) -> Partition {
        Partition {
            number: 0,
            offset: 0,
            length,
            type_id: String::new(),
            type_name: Some("whole disk"),
            name: None,
            guid: None,
            bootable: false,
            logical: false,
            filesystem,
        }
    }
}

/// A disk's partitions and how they were found.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionTable {
    /// The table's kind.
    pub scheme: Scheme,
    /// The logical sector size its sector numbers count in.
    pub sector_size: u32,
    /// The GPT disk GUID.
    pub disk_guid: Option<Guid>,
    /// Partitions in number order (extended containers left out).
    pub partitions: Vec<Partition>,
    /// What was damaged but worked around (a primary GPT replaced by its
    /// backup, a partition past the disk's end, a broken logical chain).
    pub warnings: Vec<String>,
}

/// Finds the partitions of `disk` (reads a few sectors).
pub fn partitions(disk: &dyn VirtualDisk) -> Result<PartitionTable> {
    let size = disk.size();
    let ss = match disk.info().logical_sector_size {
        s @ (512 | 4096) => s,
        _ => 512,
    };
    let mut table = PartitionTable {
        scheme: Scheme::None,
        sector_size: ss,
        disk_guid: None,
        partitions: Vec::new(),
        warnings: Vec::new(),
    };
    let head = read(disk, 0, PROBE_BYTES.min(size as usize))?;
    if let Some(kind) = probe(&head) {
        table.partitions.push(Partition::whole(size, Some(kind)));
        return Ok(table);
    }
    let Ok(slots) = mbr::parse_table(&head) else {
        return Ok(table);
    };
    if slots.iter().flatten().any(|s| s.is_protective()) {
        read_gpt(disk, &mut table)?;
    } else {
        read_mbr(disk, &slots, &mut table)?;
    }
    for p in &mut table.partitions {
        let fits = p.offset.checked_add(p.length).is_some_and(|end| end <= size);
        if !fits {
            table.warnings.push(format!("partition {} ends past the disk's {size} bytes", p.number));
            continue;
        }
        let head = read(disk, p.offset, PROBE_BYTES.min(p.length as usize))?;
        p.filesystem = probe(&head);
    }
    Ok(table)
}

fn read(disk: &dyn VirtualDisk, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    disk.read_at(&mut buf, offset)?;
    Ok(buf)
}

fn read_mbr(disk: &dyn VirtualDisk, slots: &[Option<mbr::MbrSlot>; 4], table: &mut PartitionTable) -> Result<()> {
    table.scheme = Scheme::Mbr;
    let ss = u64::from(table.sector_size);
    let part = |number, slot: &mbr::MbrSlot, base: u64, logical| Partition {
        number,
        offset: (base + u64::from(slot.first)) * ss,
        length: u64::from(slot.count) * ss,
        type_id: format!("{:#04x}", slot.ty),
        type_name: mbr_type_name(slot.ty),
        name: None,
        guid: None,
        bootable: slot.bootable,
        logical,
        filesystem: None,
    };
    let mut logical = Vec::new();
    for (i, slot) in slots.iter().enumerate() {
        let Some(slot) = slot else { continue };
        if slot.is_extended() {
            logical = logical_chain(disk, u64::from(slot.first), table)?;
        } else {
            table.partitions.push(part(i as u32 + 1, slot, 0, false));
        }
    }
    for (i, (ebr, slot)) in logical.iter().enumerate() {
        table.partitions.push(part(5 + i as u32, slot, *ebr, true));
    }
    Ok(())
}

/// The logical partitions of the extended partition at sector `ext`: each
/// with the sector of the EBR its start is relative to.
fn logical_chain(disk: &dyn VirtualDisk, ext: u64, table: &mut PartitionTable) -> Result<Vec<(u64, mbr::MbrSlot)>> {
    let ss = u64::from(table.sector_size);
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut ebr = ext;
    loop {
        if !seen.insert(ebr) {
            table.warnings.push(format!("the logical partition chain loops back to sector {ebr}"));
            break;
        }
        if out.len() >= MAX_LOGICAL {
            table.warnings.push(format!("more than {MAX_LOGICAL} logical partitions; the rest are left out"));
            break;
        }
        let at = ebr.checked_mul(ss).filter(|&at| at.saturating_add(512) <= disk.size());
        let Some(at) = at else {
            table.warnings.push(format!("an extended boot record at sector {ebr} lies past the disk's end"));
            break;
        };
        let sector = read(disk, at, 512)?;
        let slots = match mbr::parse_table(&sector) {
            Ok(s) => s,
            Err(reason) => {
                table.warnings.push(format!("extended boot record at byte {at}: {reason}"));
                break;
            }
        };
        if let Some(slot) = slots[0].filter(|s| !s.is_extended()) {
            out.push((ebr, slot));
        }
        match slots[1].filter(|s| s.is_extended()) {
            Some(next) => ebr = ext + u64::from(next.first),
            None => break,
        }
    }
    Ok(out)
}

fn read_gpt(disk: &dyn VirtualDisk, table: &mut PartitionTable) -> Result<()> {
    table.scheme = Scheme::Gpt;
    let ss = u64::from(table.sector_size);
    let last = (disk.size() / ss).saturating_sub(1);
    let mut failures = Vec::new();
    for (which, lba) in [("primary", 1), ("backup", last)] {
        match gpt_copy(disk, lba, ss) {
            Ok((header, entries)) => {
                for f in &failures {
                    table.warnings.push(format!("{f}; the {which} GPT at sector {lba} was used"));
                }
                table.disk_guid = Some(header.disk_guid);
                for e in entries {
                    let length = (e.last_lba - e.first_lba).checked_add(1).and_then(|n| n.checked_mul(ss));
                    let Some((offset, length)) = e.first_lba.checked_mul(ss).zip(length) else {
                        table.warnings.push(format!(
                            "partition {}: sectors {}..={} overflow",
                            e.index + 1,
                            e.first_lba,
                            e.last_lba
                        ));
                        continue;
                    };
                    table.partitions.push(Partition {
                        number: e.index + 1,
                        offset,
                        length,
                        type_id: e.type_guid.to_string(),
                        type_name: gpt::type_name(&e.type_guid),
                        name: Some(e.name),
                        guid: Some(e.unique_guid),
                        bootable: e.attributes & 0x4 != 0,
                        logical: false,
                        filesystem: None,
                    });
                }
                return Ok(());
            }
            Err(reason) => failures.push(format!("the {which} GPT at sector {lba} is damaged ({reason})")),
        }
    }
    Err(FsError::PartitionTable { what: "GPT", offset: ss, reason: failures.join("; ") })
}

/// The header at `lba` and the entries it points to, both checked.
fn gpt_copy(disk: &dyn VirtualDisk, lba: u64, ss: u64) -> Result<(gpt::GptHeader, Vec<gpt::GptEntry>), String> {
    let at = lba.checked_mul(ss).filter(|&a| a + ss <= disk.size()).ok_or("past the disk's end")?;
    let sector = read(disk, at, ss as usize).map_err(|e| e.to_string())?;
    let header = gpt::parse_header(&sector)?;
    if header.my_lba != lba {
        return Err(format!("it says it lies at sector {}", header.my_lba));
    }
    let start = header.entries_lba.checked_mul(ss).filter(|&s| s.saturating_add(header.entry_bytes()) <= disk.size());
    let start = start.ok_or_else(|| format!("entries at sector {} lie past the disk's end", header.entries_lba))?;
    let bytes = read(disk, start, header.entry_bytes() as usize).map_err(|e| e.to_string())?;
    let entries = gpt::parse_entries(&header, &bytes)?;
    Ok((header, entries))
}

fn mbr_type_name(ty: u8) -> Option<&'static str> {
    Some(match ty {
        0x01 => "FAT12",
        0x04 | 0x06 | 0x0E => "FAT16",
        0x0B | 0x0C => "FAT32",
        0x07 => "NTFS/exFAT",
        0x27 => "Windows recovery",
        0x42 => "Windows dynamic disk",
        0x82 => "Linux swap",
        0x83 => "Linux",
        0x8E => "Linux LVM",
        0xEF => "EFI system",
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
