//! One VHDX file: the header section, a replayed log, regions, metadata and
//! the BAT, and the lookup from a virtual offset to where its bytes are.
//!
//! Opening follows [MS-VHDX]'s order: headers, then the log (replayed into
//! an in-memory [`LogOverlay`] when the current header's LogGuid is set), and
//! only then the region table, metadata and BAT, read through the overlay
//! because the log may hold newer copies of them.
//!
//! Read semantics per payload state: FULLY_PRESENT is here; ZERO, UNDEFINED
//! and UNMAPPED read as zeros (with or without a parent: only NOT_PRESENT
//! defers to the parent); PARTIALLY_PRESENT consults the sector bitmap,
//! sector by sector.

use super::error::Result;
use super::image::{Image, Run, RunKind, image_fields};
use super::open::OpenOptions;
use super::source::{Source, scan_bitmap};
use super::spans::{Owner, Span, check_disjoint};
use super::{DiskInfo, HintKind, ImageFormat, LogReplay, ParentHint, ParentLink, Subformat};
use crate::format::vhdx::bat::{Bat, BatLayout, BatSlot, PayloadState};
use crate::format::vhdx::header::{CurrentHeader, HEADER_OFFSETS, HEADER_SIZE, choose_current, parse_header};
use crate::format::vhdx::log::{LogWrite, MAX_LOG_LENGTH, find_active_sequence};
use crate::format::vhdx::metadata::{METADATA_TABLE_SIZE, Metadata, MetadataTable};
use crate::format::vhdx::region::{REGION_TABLE_OFFSETS, REGION_TABLE_SIZE, RegionTable, Regions};
use crate::format::vhdx::{self, FileIdentifier, MIB, SECTOR_BITMAP_BLOCK};
use crate::format::{FormatError, Structure};
use crate::io::{LogOverlay, ReadAt};

/// A metadata item read failed: in the bytes, or in the I/O.
enum ItemError {
    Format(FormatError),
    Disk(super::DiskError),
}

impl From<FormatError> for ItemError {
    fn from(e: FormatError) -> Self {
        ItemError::Format(e)
    }
}

/// An open VHDX file (fixed, dynamic or differencing).
#[derive(Debug)]
pub struct VhdxImage {
    source: Source,
    file_id: FileIdentifier,
    header: CurrentHeader,
    regions: Regions,
    metadata: Metadata,
    bat: Bat,
    info: DiskInfo,
}

impl VhdxImage {
    /// Opens the VHDX in `source`, replaying a dirty log in memory.
    pub(crate) fn open(mut source: Source, _options: &OpenOptions) -> Result<VhdxImage> {
        let file_size = source.size();
        let mut warnings = Vec::new();

        let id_bytes = source.read_structure(0, FileIdentifier::SIZE as u64, "VHDX file identifier")?;
        let file_id = FileIdentifier::decode(&id_bytes, 0).map_err(|e| source.err(e))?;

        let slot = |i: usize| -> Result<std::result::Result<_, FormatError>> {
            let at = HEADER_OFFSETS[i];
            Ok(match source.read_structure(at, HEADER_SIZE as u64, "VHDX header") {
                Ok(bytes) => parse_header(&bytes, at),
                Err(super::DiskError::Format { source, .. }) => Err(source),
                Err(e) => return Err(e),
            })
        };
        let slots = [slot(0)?, slot(1)?];
        let header = choose_current(slots).map_err(|e| source.err(e))?;
        if let Some(e) = &header.other_slot_error {
            warnings.push(format!("the other header is unusable: {e}"));
        }
        let h = &header.header;
        h.validate(HEADER_OFFSETS[header.slot], file_size).map_err(|e| source.err(e))?;

        // The log comes first: it may hold newer BAT and metadata bytes.
        let mut log_replay = None;
        // Bytes the file (or the log's data) actually holds; past them a
        // replayed file is only implicit zeros.
        let mut backed = file_size;
        if !h.log_guid.is_nil() {
            let log_len = u64::from(h.log_length);
            if log_len > MAX_LOG_LENGTH {
                return Err(source.err(FormatError::unsupported(format!(
                    "a {log_len}-byte VHDX log (at most {MAX_LOG_LENGTH} bytes are replayed)"
                ))));
            }
            let log = source.read_structure(h.log_offset, log_len, "VHDX log")?;
            let seq = find_active_sequence(&log, h.log_offset, h.log_guid)
                .map_err(|e| source.err(e))?
                .ok_or_else(|| source.err(FormatError::corrupt("VHDX log", h.log_offset, "no sequence")))?;
            let head = *seq.head();
            if head.flushed_file_offset > file_size {
                return Err(source.err(FormatError::corrupt(
                    "VHDX log entry",
                    h.log_offset + seq.entries[seq.entries.len() - 1].position + 48,
                    format!(
                        "the log was written when the file held {} bytes, but it now holds {file_size}: the file was truncated",
                        head.flushed_file_offset
                    ),
                )));
            }
            let size = seq.replayed_size(file_size);
            backed = seq
                .writes()
                .filter(|w| matches!(w, LogWrite::Data { .. }))
                .map(LogWrite::end)
                .fold(file_size, u64::max);
            let writes = seq.writes().count();
            let entries = seq.entries.len();
            source.replace_reader(|file| {
                let mut overlay = LogOverlay::new(file, size);
                for w in seq.writes() {
                    match w {
                        LogWrite::Data { file_offset, sector } => overlay.write(*file_offset, &sector[..]),
                        LogWrite::Zero { file_offset, length } => overlay.zero(*file_offset, *length),
                    }
                }
                Box::new(overlay) as Box<dyn ReadAt>
            });
            warnings.push(format!(
                "the log was dirty: replayed {entries} entries ({writes} writes) in memory; the file was not modified"
            ));
            log_replay = Some(LogReplay { entries, head_sequence: head.sequence_number, writes });
        }
        let size = source.size();

        // Region tables: the first valid copy.
        let mut region_table_warnings = Vec::new();
        let mut tables = Vec::new();
        for at in REGION_TABLE_OFFSETS {
            let parsed = source
                .read_structure(at, REGION_TABLE_SIZE as u64, "VHDX region table")
                .and_then(|b| RegionTable::parse(&b, at).map_err(|e| source.err(e)));
            tables.push((at, parsed));
        }
        let mut chosen = None;
        let mut first_err = None;
        for (at, parsed) in tables {
            match parsed {
                Ok(t) if chosen.is_none() => chosen = Some((at, t)),
                Ok(t) => {
                    if chosen.as_ref().is_some_and(|(_, c)| c.entries != t.entries) {
                        region_table_warnings
                            .push(format!("the region table copy at byte {at} differs from the first"));
                    }
                }
                Err(e) => {
                    region_table_warnings.push(format!("region table copy at byte {at} is unusable: {e}"));
                    first_err.get_or_insert(e);
                }
            }
        }
        let Some((table_at, table)) = chosen else {
            return Err(first_err.unwrap_or_else(|| source.err(FormatError::corrupt("VHDX region table", 0, "none"))));
        };
        warnings.extend(region_table_warnings.iter().cloned());
        // Regions must lie in bytes something holds: a BAT or metadata region
        // in the zeros a log extension implies is not what a writer wrote.
        let regions = table.regions(table_at, backed).map_err(|e| source.err(e))?;

        // Metadata: the table, then each system item (each at most 1 MiB).
        let md = regions.metadata;
        let table_bytes = source.read_structure(md.file_offset, METADATA_TABLE_SIZE as u64, "VHDX metadata table")?;
        let md_table =
            MetadataTable::parse(&table_bytes, md.file_offset, u64::from(md.length)).map_err(|e| source.err(e))?;
        let metadata = Metadata::parse(&md_table, md.file_offset, |entry| {
            source
                .read_structure(md.file_offset + u64::from(entry.offset), u64::from(entry.length), "VHDX metadata item")
                .map_err(ItemError::Disk)
        })
        .map_err(|e| match e {
            ItemError::Format(f) => source.err(f),
            ItemError::Disk(d) => d,
        })?;

        // The BAT.
        let layout = BatLayout::new(
            metadata.block_size,
            metadata.logical_sector_size,
            metadata.virtual_size,
            metadata.has_parent,
        );
        if layout.table_bytes() > u64::from(regions.bat.length) {
            return Err(source.err(FormatError::corrupt(
                "VHDX BAT",
                regions.bat.file_offset,
                format!(
                    "the region holds {} bytes but the disk needs {} entries ({} bytes)",
                    regions.bat.length,
                    layout.entries,
                    layout.table_bytes()
                ),
            )));
        }
        let bat = read_bat(&source, regions.bat.file_offset, layout)?;
        bat.validate(regions.bat.file_offset, size).map_err(|e| source.err(e))?;
        let spans = file_spans(&header.header, &regions, &bat).map_err(|e| source.err(e))?;
        for span in spans.iter().filter(|s| matches!(s.owner, Owner::Block(_) | Owner::BitmapBlock(_))) {
            if span.end > backed {
                warnings.push(format!(
                    "{} (bytes {}..{}) lies past the end of the file's data: the replayed log extends the file, so it reads as zeros",
                    span.owner, span.start, span.end
                ));
            }
        }
        check_disjoint(spans, "VHDX BAT").map_err(|e| source.err(e))?;

        let subformat = if metadata.has_parent {
            Subformat::Differencing
        } else if metadata.leave_blocks_allocated {
            Subformat::Fixed
        } else {
            Subformat::Dynamic
        };
        let parent = match &metadata.parent_locator {
            Some(loc) => {
                let at = md.file_offset
                    + md_table.system_item(vhdx::metadata::PARENT_LOCATOR).map_or(0, |e| u64::from(e.offset));
                let (expected, alternate) = loc.linkage(at).map_err(|e| source.err(e))?;
                let hints = loc
                    .paths()
                    .into_iter()
                    .map(|(key, path)| ParentHint {
                        kind: match key {
                            "relative_path" => HintKind::Relative,
                            "volume_path" => HintKind::Volume,
                            _ => HintKind::Absolute,
                        },
                        path: path.to_string(),
                    })
                    .collect();
                Some(ParentLink { expected_identity: expected, alternate_identity: alternate, hints, resolved: None })
            }
            None => None,
        };
        let info = DiskInfo {
            format: ImageFormat::Vhdx,
            subformat,
            virtual_size: metadata.virtual_size,
            block_size: Some(metadata.block_size),
            logical_sector_size: metadata.logical_sector_size,
            physical_sector_size: metadata.physical_sector_size,
            disk_id: metadata.disk_id,
            identity: header.header.data_write_guid,
            file_size,
            path: source.path().to_path_buf(),
            creator: file_id.creator(),
            parent,
            log_replay,
            warnings,
        };
        Ok(VhdxImage { source, file_id, header, regions, metadata, bat, info })
    }

    /// What the image says about itself.
    pub fn info(&self) -> &DiskInfo {
        &self.info
    }

    /// The current header and which slot it came from.
    pub fn header(&self) -> &CurrentHeader {
        &self.header
    }

    /// The file type identifier.
    pub fn file_identifier(&self) -> &FileIdentifier {
        &self.file_id
    }

    /// The BAT and metadata regions.
    pub fn regions(&self) -> &Regions {
        &self.regions
    }

    /// The system metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The BAT.
    pub fn bat(&self) -> &Bat {
        &self.bat
    }

    /// What a whole-block state reads as (not PARTIALLY_PRESENT).
    fn kind_of(&self, state: PayloadState, file_offset: u64) -> RunKind {
        let parent = self.bat.layout().has_parent;
        match state {
            PayloadState::FullyPresent => RunKind::Data { file_offset },
            PayloadState::NotPresent if parent => RunKind::Parent,
            PayloadState::NotPresent => RunKind::Unallocated,
            PayloadState::Zero => RunKind::Zero,
            // Zeros either way; in a child they hide the parent's bytes, so
            // they count as this layer's (explicit zeros).
            PayloadState::Undefined | PayloadState::Unmapped if parent => RunKind::Zero,
            PayloadState::Undefined | PayloadState::Unmapped => RunKind::Unallocated,
            PayloadState::PartiallyPresent => RunKind::Parent,
        }
    }
}

/// Reads the BAT in 1 MiB pieces straight into its table, so a 16 MiB BAT
/// (a 64 TiB disk) costs 16 MiB, not twice that. The region was checked to
/// lie inside the file before this is called.
fn read_bat(source: &Source, offset: u64, layout: BatLayout) -> Result<Bat> {
    let total = layout.table_bytes();
    if offset.checked_add(total).is_none_or(|end| end > source.size()) {
        return Err(source.err(FormatError::Truncated {
            structure: "VHDX BAT",
            offset,
            needed: total,
            available: source.size().saturating_sub(offset),
        }));
    }
    let mut entries = Vec::with_capacity(layout.entries as usize);
    let mut piece = vec![0u8; MIB.min(total) as usize];
    let mut done = 0u64;
    while done < total {
        let n = (total - done).min(MIB) as usize;
        source.read_exact(&mut piece[..n], offset + done)?;
        entries.extend(
            piece[..n].chunks_exact(8).map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])),
        );
        done += n as u64;
    }
    Ok(Bat::from_entries(layout, entries))
}

/// Every range of the file something claims: the header section, the log,
/// both regions, and each allocated payload and sector-bitmap block. Fails
/// before building the list when the blocks claim more bytes than the file
/// could hold disjointly, so a hostile BAT cannot make this list huge.
fn file_spans(h: &vhdx::Header, regions: &Regions, bat: &Bat) -> std::result::Result<Vec<Span>, FormatError> {
    let layout = bat.layout();
    // Only allocated entries matter. A first pass counts them without
    // allocating, so a hostile BAT is refused before any list is built.
    let allocated = || {
        bat.nonzero_entries().filter_map(|(slot, _, e)| match slot {
            BatSlot::Payload(b) => PayloadState::from_bits(e.state_bits())
                .filter(|s| s.has_data())
                .map(|_| (Owner::Block(b), e.file_offset(), layout.block_bytes(b))),
            BatSlot::Bitmap(c) => (e.state_bits() == vhdx::bat::SB_BLOCK_PRESENT)
                .then(|| (Owner::BitmapBlock(c), e.file_offset(), SECTOR_BITMAP_BLOCK)),
        })
    };
    let (mut count, mut claimed, mut highest) = (0usize, 0u64, 0u64);
    for (_, start, len) in allocated() {
        count += 1;
        claimed = claimed.saturating_add(len);
        highest = highest.max(start);
    }
    // Disjoint blocks of at most 256 MiB all lie below the highest block
    // offset plus one block.
    let limit = highest.saturating_add(256 * MIB);
    if claimed > limit {
        return Err(FormatError::corrupt(
            "VHDX BAT",
            regions.bat.file_offset,
            format!(
                "{count} allocated blocks claim {claimed} bytes, more than the file's {limit}: blocks must share bytes"
            ),
        ));
    }
    let region = |r: &vhdx::region::RegionEntry, name| Span {
        start: r.file_offset,
        end: r.file_offset + u64::from(r.length),
        owner: Owner::Structure(name),
    };
    let mut spans = Vec::with_capacity(count + 4);
    spans.push(Span { start: 0, end: MIB, owner: Owner::Structure("the header section") });
    if h.log_length > 0 {
        spans.push(Span {
            start: h.log_offset,
            end: h.log_offset.saturating_add(u64::from(h.log_length)),
            owner: Owner::Structure("the log"),
        });
    }
    spans.push(region(&regions.bat, "the BAT region"));
    spans.push(region(&regions.metadata, "the metadata region"));
    spans.extend(allocated().map(|(owner, start, len)| Span { start, end: start + len, owner }));
    Ok(spans)
}

impl Image for VhdxImage {
    image_fields!();

    /// The run starting at `offset` (inside the disk), at most `max` bytes.
    fn run_at(&self, offset: u64, max: u64) -> Result<Run> {
        let layout = self.bat.layout();
        let block = offset / layout.block_size;
        let within = offset % layout.block_size;
        let len = max.min(layout.block_bytes(block) - within);
        let (state, file_offset) = self.bat.payload(block);
        if state == PayloadState::PartiallyPresent {
            let sector = layout.logical_sector_size;
            let chunk = block / layout.chunk_ratio;
            let Some(bitmap) = self.bat.bitmap_block(chunk) else {
                // `Bat::validate` guarantees a bitmap for partial blocks.
                return Ok(Run { len, kind: RunKind::Parent });
            };
            let first_bit = (block % layout.chunk_ratio) * layout.sectors_per_block() + within / sector;
            let sectors = (within + len).div_ceil(sector) - within / sector;
            let (present, run) = scan_bitmap(&self.source, bitmap, vhdx::BITMAP_ORDER, first_bit, sectors)?;
            let len = (run * sector - within % sector).min(len);
            let kind = if present { RunKind::Data { file_offset: file_offset + within } } else { RunKind::Parent };
            return Ok(Run { len, kind });
        }
        let kind = self.kind_of(state, file_offset + within);
        // Extend over following blocks in the same state (and, for data,
        // stored right after this one): one run for a long sparse or
        // contiguous stretch, so maps and large reads cost fewer steps.
        let mut len = len;
        let mut next = block + 1;
        while len < max && next < layout.payload_blocks {
            let (s, off) = self.bat.payload(next);
            let same = match kind {
                RunKind::Data { file_offset: f } => s == PayloadState::FullyPresent && off == f + len,
                _ => {
                    s != PayloadState::PartiallyPresent && s != PayloadState::FullyPresent && self.kind_of(s, 0) == kind
                }
            };
            if !same {
                break;
            }
            len = (len + layout.block_bytes(next)).min(max);
            next += 1;
        }
        Ok(Run { len, kind })
    }

    /// Structural problems that did not prevent opening (for `check`).
    fn check(&self) -> Vec<String> {
        let mut problems = self.info.warnings.clone();
        problems.retain(|w| !w.starts_with("the log was dirty"));
        problems
    }
}
