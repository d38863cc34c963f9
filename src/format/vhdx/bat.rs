//! The VHDX block allocation table.
//!
//! One little-endian u64 per entry: state in bits 0-2, the block's file
//! offset in MiB in bits 20-63. Payload entries and sector-bitmap entries are
//! interleaved: after every `chunk_ratio` payload entries comes the entry of
//! the sector-bitmap block that covers them.

use binrw::binrw;

use super::MIB;
use crate::format::{FormatError, Result, Structure};

/// One BAT entry as stored.
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatEntry(pub u64);

impl Structure for BatEntry {
    const NAME: &'static str = "VHDX BAT entry";
    const SIZE: usize = 8;
    const MAGIC: &'static str = "";
}

impl BatEntry {
    /// The state bits.
    pub fn state_bits(self) -> u8 {
        (self.0 & 7) as u8
    }

    /// The block's absolute file offset (FileOffsetMB × 1 MiB).
    pub fn file_offset(self) -> u64 {
        self.0 & !(MIB - 1)
    }

    /// An entry for `state` at `file_offset` (a multiple of 1 MiB).
    pub fn new(state: u8, file_offset: u64) -> BatEntry {
        BatEntry((file_offset & !(MIB - 1)) | u64::from(state & 7))
    }
}

/// What a payload block entry says about its block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadState {
    /// 0: never written. Zeros, or the parent's data in a differencing disk.
    NotPresent,
    /// 1: contents undefined; read as zeros.
    Undefined,
    /// 2: reads as zeros, in every disk type.
    Zero,
    /// 3 (5 in the 0.95 draft): unmapped by the guest; read as zeros.
    Unmapped,
    /// 6: all of the block is in this file.
    FullyPresent,
    /// 7: differencing only; the sector bitmap says which sectors are here.
    PartiallyPresent,
}

impl PayloadState {
    /// Decodes state bits; 4 is reserved and never valid.
    pub fn from_bits(bits: u8) -> Option<PayloadState> {
        Some(match bits {
            0 => PayloadState::NotPresent,
            1 => PayloadState::Undefined,
            2 => PayloadState::Zero,
            3 | 5 => PayloadState::Unmapped,
            6 => PayloadState::FullyPresent,
            7 => PayloadState::PartiallyPresent,
            _ => return None,
        })
    }

    /// The on-disk value (UNMAPPED as 3).
    pub fn bits(self) -> u8 {
        match self {
            PayloadState::NotPresent => 0,
            PayloadState::Undefined => 1,
            PayloadState::Zero => 2,
            PayloadState::Unmapped => 3,
            PayloadState::FullyPresent => 6,
            PayloadState::PartiallyPresent => 7,
        }
    }

    /// Whether the block's data lives in this file.
    pub fn has_data(self) -> bool {
        matches!(self, PayloadState::FullyPresent | PayloadState::PartiallyPresent)
    }
}

/// Sector-bitmap entry state: present.
pub const SB_BLOCK_PRESENT: u8 = 6;
/// Sector-bitmap entry state: not present.
pub const SB_BLOCK_NOT_PRESENT: u8 = 0;

/// The arithmetic of a BAT: how many entries and which index holds what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatLayout {
    /// Bytes per payload block.
    pub block_size: u64,
    /// Logical sector size in bytes.
    pub logical_sector_size: u64,
    /// Bytes of the virtual disk.
    pub virtual_size: u64,
    /// Whether the image is a differencing disk.
    pub has_parent: bool,
    /// Payload blocks per sector-bitmap block.
    pub chunk_ratio: u64,
    /// Payload blocks covering the virtual size.
    pub payload_blocks: u64,
    /// Sector-bitmap blocks covering the payload blocks.
    pub bitmap_blocks: u64,
    /// Entries the table holds.
    pub entries: u64,
}

impl BatLayout {
    /// Computes the layout from already validated metadata values
    /// (block size a power of two in 1..=256 MiB, sector size 512 or 4096).
    pub fn new(block_size: u32, logical_sector_size: u32, virtual_size: u64, has_parent: bool) -> BatLayout {
        let block_size = u64::from(block_size);
        let logical_sector_size = u64::from(logical_sector_size);
        let chunk_ratio = ((1u64 << 23) * logical_sector_size / block_size).max(1);
        let payload_blocks = virtual_size.div_ceil(block_size);
        let bitmap_blocks = payload_blocks.div_ceil(chunk_ratio);
        let entries = if has_parent {
            bitmap_blocks * (chunk_ratio + 1)
        } else if payload_blocks == 0 {
            0
        } else {
            payload_blocks + (payload_blocks - 1) / chunk_ratio
        };
        BatLayout {
            block_size,
            logical_sector_size,
            virtual_size,
            has_parent,
            chunk_ratio,
            payload_blocks,
            bitmap_blocks,
            entries,
        }
    }

    /// The entry index of payload block `block`.
    pub fn payload_index(&self, block: u64) -> u64 {
        block + block / self.chunk_ratio
    }

    /// The entry index of the sector-bitmap block for `chunk`.
    pub fn bitmap_index(&self, chunk: u64) -> u64 {
        chunk * (self.chunk_ratio + 1) + self.chunk_ratio
    }

    /// Bytes of the table.
    pub fn table_bytes(&self) -> u64 {
        self.entries * 8
    }

    /// Virtual bytes block `block` covers (the last block may be short).
    pub fn block_bytes(&self, block: u64) -> u64 {
        let start = block * self.block_size;
        self.virtual_size.saturating_sub(start).min(self.block_size)
    }

    /// Sectors per block.
    pub fn sectors_per_block(&self) -> u64 {
        self.block_size / self.logical_sector_size
    }
}

/// A decoded, bounds-checked BAT.
#[derive(Debug, Clone)]
pub struct Bat {
    layout: BatLayout,
    entries: Vec<u64>,
}

impl Bat {
    /// Decodes the table from `bytes` (at least `layout.table_bytes()` long),
    /// read from absolute `offset`.
    pub fn parse(bytes: &[u8], layout: BatLayout, offset: u64) -> Result<Bat> {
        let len = usize::try_from(layout.table_bytes())
            .map_err(|_| FormatError::unsupported("a BAT larger than the address space"))?;
        let table = crate::format::slice_at(bytes, 0, len, "VHDX BAT", offset)?;
        let entries = table
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        Ok(Bat { layout, entries })
    }

    /// A table built in memory (writers and tests).
    pub fn from_entries(layout: BatLayout, entries: Vec<u64>) -> Bat {
        Bat { layout, entries }
    }

    /// The table's layout.
    pub fn layout(&self) -> &BatLayout {
        &self.layout
    }

    /// The raw entries.
    pub fn entries(&self) -> &[u64] {
        &self.entries
    }

    fn entry(&self, index: u64) -> BatEntry {
        usize::try_from(index).ok().and_then(|i| self.entries.get(i)).map_or(BatEntry(0), |&e| BatEntry(e))
    }

    /// The state and file offset of payload block `block`. Validated at
    /// construction by [`Bat::validate`], so this cannot fail for blocks
    /// inside the disk.
    pub fn payload(&self, block: u64) -> (PayloadState, u64) {
        let e = self.entry(self.layout.payload_index(block));
        let state = PayloadState::from_bits(e.state_bits()).unwrap_or(PayloadState::Zero);
        (state, e.file_offset())
    }

    /// The file offset of the sector-bitmap block for `chunk`, if present.
    pub fn bitmap_block(&self, chunk: u64) -> Option<u64> {
        let e = self.entry(self.layout.bitmap_index(chunk));
        (e.state_bits() == SB_BLOCK_PRESENT).then(|| e.file_offset())
    }

    /// Every entry that is not all zero, as (payload block or sector-bitmap
    /// chunk, entry index, entry). All-zero entries (NOT_PRESENT with no
    /// offset: nearly every entry of a sparse disk) are skipped at the cost
    /// of one comparison each.
    pub fn nonzero_entries(&self) -> impl Iterator<Item = (BatSlot, u64, BatEntry)> + '_ {
        let l = self.layout;
        let stride = l.chunk_ratio + 1;
        self.entries.iter().enumerate().filter(|(_, e)| **e != 0).filter_map(move |(i, &e)| {
            let i = i as u64;
            let slot = if (i + 1).is_multiple_of(stride) {
                let chunk = i / stride;
                (chunk < l.bitmap_blocks && l.has_parent).then_some(BatSlot::Bitmap(chunk))?
            } else {
                let block = i - i / stride;
                (block < l.payload_blocks).then_some(BatSlot::Payload(block))?
            };
            Some((slot, i, BatEntry(e)))
        })
    }

    /// Checks every entry against the format's rules and a file of
    /// `file_size` bytes: valid states, PARTIALLY_PRESENT only with a parent
    /// and a present bitmap, data blocks 1 MiB-aligned past the header
    /// section and inside the file. `offset` locates the table for errors.
    pub fn validate(&self, offset: u64, file_size: u64) -> Result<()> {
        let l = &self.layout;
        let at = |index: u64| offset + index * 8;
        for (slot, index, e) in self.nonzero_entries() {
            match slot {
                BatSlot::Payload(block) => {
                    let Some(state) = PayloadState::from_bits(e.state_bits()) else {
                        return Err(FormatError::corrupt(
                            "VHDX BAT",
                            at(index),
                            format!("block {block} has reserved state {}", e.state_bits()),
                        ));
                    };
                    if state == PayloadState::PartiallyPresent {
                        if !l.has_parent {
                            return Err(FormatError::corrupt(
                                "VHDX BAT",
                                at(index),
                                format!("block {block} is partially present in a disk without a parent"),
                            ));
                        }
                        if self.bitmap_block(block / l.chunk_ratio).is_none() {
                            return Err(FormatError::corrupt(
                                "VHDX BAT",
                                at(l.bitmap_index(block / l.chunk_ratio)),
                                format!("block {block} is partially present but its sector bitmap is not"),
                            ));
                        }
                    }
                    if state.has_data() {
                        check_place(e.file_offset(), l.block_bytes(block), file_size, at(index), "block", block)?;
                    }
                }
                BatSlot::Bitmap(chunk) => match e.state_bits() {
                    SB_BLOCK_NOT_PRESENT => {}
                    SB_BLOCK_PRESENT => {
                        check_place(e.file_offset(), MIB, file_size, at(index), "sector bitmap", chunk)?
                    }
                    other => {
                        return Err(FormatError::corrupt(
                            "VHDX BAT",
                            at(index),
                            format!("sector bitmap {chunk} has reserved state {other}"),
                        ));
                    }
                },
            }
        }
        Ok(())
    }
}

/// What a BAT entry describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatSlot {
    /// Payload block `n`.
    Payload(u64),
    /// The sector-bitmap block of chunk `n`.
    Bitmap(u64),
}

fn check_place(file_offset: u64, len: u64, file_size: u64, at: u64, what: &str, index: u64) -> Result<()> {
    if file_offset < MIB || file_offset.checked_add(len).is_none_or(|end| end > file_size) {
        return Err(FormatError::corrupt(
            "VHDX BAT",
            at,
            format!("{what} {index} at byte {file_offset} (+{len}) lies outside the {file_size}-byte file's data area"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_spec_formulas() {
        // 10 GiB, 1 MiB blocks, 512-byte sectors: chunk ratio 4096, 10240 blocks.
        let l = BatLayout::new(1 << 20, 512, 10 << 30, false);
        assert_eq!(l.chunk_ratio, 4096);
        assert_eq!(l.payload_blocks, 10240);
        assert_eq!(l.entries, 10240 + 2);
        assert_eq!(l.payload_index(4095), 4095);
        assert_eq!(l.payload_index(4096), 4097);
        assert_eq!(l.bitmap_index(0), 4096);
        let d = BatLayout::new(1 << 20, 512, 10 << 30, true);
        assert_eq!(d.entries, 3 * 4097);
        // 4 KiB sectors, 32 MiB blocks: chunk ratio 1024.
        assert_eq!(BatLayout::new(32 << 20, 4096, 1 << 30, false).chunk_ratio, 1024);
        // A short last block.
        let odd = BatLayout::new(1 << 20, 512, (3 << 20) + 512, false);
        assert_eq!(odd.payload_blocks, 4);
        assert_eq!(odd.block_bytes(3), 512);
    }

    #[test]
    fn validation_rejects_bad_states_and_places() {
        let l = BatLayout::new(1 << 20, 512, 4 << 20, false);
        let ok = |e: Vec<u64>| Bat::from_entries(l, e).validate(3 << 20, 8 << 20);
        ok(vec![BatEntry::new(6, 4 << 20).0, 0, 2, 3]).unwrap();
        assert!(ok(vec![4, 0, 0, 0]).is_err());
        assert!(ok(vec![BatEntry::new(7, 4 << 20).0, 0, 0, 0]).is_err());
        assert!(ok(vec![BatEntry::new(6, 8 << 20).0, 0, 0, 0]).is_err());
        assert!(ok(vec![BatEntry::new(6, 0).0, 0, 0, 0]).is_err());
        // The 0.95 draft's UNMAPPED (5) is accepted and reads as zeros.
        ok(vec![5, 0, 0, 0]).unwrap();
        assert_eq!(Bat::from_entries(l, vec![5, 0, 0, 0]).payload(0).0, PayloadState::Unmapped);
    }
}
