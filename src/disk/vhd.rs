//! One VHD file: footer, dynamic header, BAT, and the lookup from a virtual
//! offset to where its bytes are.
//!
//! Read semantics, where readers disagree:
//! * Dynamic disks: an allocated block's bytes are its data, whatever its
//!   sector bitmap says. The specification requires unwritten sectors of an
//!   allocated block to be zero on disk, so honouring the bitmap changes
//!   nothing for conforming images, and qemu (our oracle) ignores it.
//! * Differencing disks: a set bit means the sector is in this file, a clear
//!   bit or an unallocated block means "read the parent".
//! * The footer at the end of the file is authoritative; when it is missing
//!   or its checksum fails, the copy at offset 0 (dynamic and differencing
//!   disks) is used instead, with a warning.

use super::error::Result;
use super::image::{Image, Run, RunKind, image_fields};
use super::open::{ChecksumPolicy, OpenOptions};
use super::source::{Source, scan_bitmap};
use super::spans::{Owner, Span, check_disjoint};
use super::{DiskInfo, HintKind, ImageFormat, ParentHint, ParentLink, Subformat};
use crate::format::vhd::{
    self, Bat, DYNAMIC_HEADER_SIZE, DiskType, DynamicHeader, FOOTER_SIZE, Footer, Platform, SECTOR_SIZE,
};
use crate::format::{FormatError, Structure};

/// A VHD's dynamic part: header and BAT.
#[derive(Debug)]
struct Dynamic {
    header: DynamicHeader,
    header_offset: u64,
    bat: Bat,
    block_size: u64,
    bitmap_size: u64,
}

/// An open VHD file (fixed, dynamic or differencing).
#[derive(Debug)]
pub struct VhdImage {
    source: Source,
    footer: Footer,
    footer_offset: u64,
    disk_type: DiskType,
    dynamic: Option<Dynamic>,
    info: DiskInfo,
}

impl VhdImage {
    /// Opens the VHD in `source`, reading only its metadata.
    pub(crate) fn open(source: Source, options: &OpenOptions) -> Result<VhdImage> {
        let file_size = source.size();
        let mut warnings = Vec::new();
        let (footer, footer_offset) = read_footer(&source, options.checksums, &mut warnings)?;
        let disk_type = footer.disk_type(footer_offset).map_err(|e| source.err(e))?;
        let virtual_size = footer.virtual_size();
        // Data ends where the footer begins (or at the end of the file when
        // the trailing footer was unusable and the head copy stood in).
        let data_end = footer_offset.min(file_size);

        let dynamic = match disk_type {
            DiskType::Fixed => {
                if virtual_size > data_end {
                    return Err(source.err(FormatError::Truncated {
                        structure: "VHD fixed data",
                        offset: 0,
                        needed: virtual_size,
                        available: data_end,
                    }));
                }
                None
            }
            DiskType::Dynamic | DiskType::Differencing => {
                Some(read_dynamic(&source, &footer, virtual_size, data_end, options.checksums, &mut warnings)?)
            }
        };

        let subformat = match disk_type {
            DiskType::Fixed => Subformat::Fixed,
            DiskType::Dynamic => Subformat::Dynamic,
            DiskType::Differencing => Subformat::Differencing,
        };
        let parent = match (&dynamic, disk_type) {
            (Some(d), DiskType::Differencing) => Some(parent_link(&source, d, &mut warnings)),
            _ => None,
        };
        let info = DiskInfo {
            format: ImageFormat::Vhd,
            subformat,
            virtual_size,
            block_size: dynamic.as_ref().map(|d| d.header.block_size),
            logical_sector_size: SECTOR_SIZE as u32,
            physical_sector_size: SECTOR_SIZE as u32,
            disk_id: footer.unique_id,
            identity: footer.unique_id,
            file_size,
            path: source.path().to_path_buf(),
            creator: footer.creator(),
            parent,
            log_replay: None,
            warnings,
        };
        Ok(VhdImage { source, footer, footer_offset, disk_type, dynamic, info })
    }

    /// The footer in use.
    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// Where the footer in use lies.
    pub fn footer_offset(&self) -> u64 {
        self.footer_offset
    }

    /// The dynamic header, for dynamic and differencing disks.
    pub fn dynamic_header(&self) -> Option<&DynamicHeader> {
        self.dynamic.as_ref().map(|d| &d.header)
    }

    /// The BAT, for dynamic and differencing disks.
    pub fn bat(&self) -> Option<&Bat> {
        self.dynamic.as_ref().map(|d| &d.bat)
    }

    /// What the image says about itself.
    pub fn info(&self) -> &DiskInfo {
        &self.info
    }
}

/// Finds and checks the footer, falling back to the head copy.
fn read_footer(source: &Source, policy: ChecksumPolicy, warnings: &mut Vec<String>) -> Result<(Footer, u64)> {
    let file_size = source.size();
    let tail_len = file_size.min(FOOTER_SIZE as u64);
    let tail = source.read_structure(file_size - tail_len, tail_len, "VHD footer")?;
    let tail_footer = vhd::locate_footer(&tail, file_size).and_then(|(bytes, at)| {
        let footer = Footer::decode(&bytes, at)?;
        Ok((footer, at, vhd::verify_footer_checksum(&bytes, at)))
    });
    // The copy at offset 0, when the file has room for one and it has the cookie.
    let head_copy = || -> Option<(Footer, Result<(), FormatError>)> {
        if file_size < 2 * FOOTER_SIZE as u64 {
            return None;
        }
        let bytes = source.read_structure(0, FOOTER_SIZE as u64, "VHD footer copy").ok()?;
        let footer = Footer::decode(&bytes, 0).ok()?;
        // A real copy leads to a dynamic header; guest data that merely
        // looks like a footer (a fixed disk holding an image) does not.
        let cookie = source.read_structure(footer.data_offset, 8, "VHD dynamic header").ok()?;
        if cookie != b"cxsparse" {
            return None;
        }
        Some((footer, vhd::verify_footer_checksum(&bytes, 0)))
    };
    match tail_footer {
        Ok((footer, at, Ok(()))) => {
            if footer.disk_type != 2 {
                match head_copy() {
                    Some((copy, Ok(()))) if copy == footer => {}
                    Some((_, Ok(()))) => {
                        warnings.push("the footer copy at byte 0 differs from the footer at the end".to_string())
                    }
                    Some((_, Err(e))) => warnings.push(format!("the footer copy is damaged: {e}")),
                    None => warnings.push("the footer copy at byte 0 is missing or unreadable".to_string()),
                }
            }
            Ok((footer, at))
        }
        Ok((footer, at, Err(bad_sum))) => {
            if let Some((copy, Ok(()))) = head_copy()
                && copy.disk_type != 2
            {
                warnings.push(format!("{bad_sum}; using the valid footer copy at byte 0"));
                return Ok((copy, at));
            }
            match policy {
                ChecksumPolicy::Strict => Err(source.err(bad_sum)),
                ChecksumPolicy::Lenient => {
                    warnings.push(format!("{bad_sum} (accepted: lenient checksums)"));
                    Ok((footer, at))
                }
            }
        }
        Err(no_footer) => match head_copy() {
            Some((copy, sum)) if copy.disk_type != 2 => {
                match (sum, policy) {
                    (Ok(()), _) => {}
                    (Err(e), ChecksumPolicy::Lenient) => warnings.push(format!("{e} (accepted: lenient checksums)")),
                    (Err(e), ChecksumPolicy::Strict) => return Err(source.err(e)),
                }
                warnings.push(format!("{no_footer}; using the footer copy at byte 0"));
                Ok((copy, file_size))
            }
            _ => Err(source.err(no_footer)),
        },
    }
}

/// Reads the dynamic header and the BAT, and checks every allocated block
/// lies inside the data area.
fn read_dynamic(
    source: &Source,
    footer: &Footer,
    virtual_size: u64,
    data_end: u64,
    policy: ChecksumPolicy,
    warnings: &mut Vec<String>,
) -> Result<Dynamic> {
    let header_offset = footer.data_offset;
    let bytes = source.read_structure(header_offset, DYNAMIC_HEADER_SIZE as u64, "VHD dynamic header")?;
    let header = DynamicHeader::decode(&bytes, header_offset).map_err(|e| source.err(e))?;
    if let Err(e) = vhd::verify_dynamic_header_checksum(&bytes, header_offset) {
        match policy {
            ChecksumPolicy::Strict => return Err(source.err(e)),
            ChecksumPolicy::Lenient => warnings.push(format!("{e} (accepted: lenient checksums)")),
        }
    }
    header.validate(header_offset).map_err(|e| source.err(e))?;
    let block_size = u64::from(header.block_size);
    let blocks = virtual_size.div_ceil(block_size);
    if blocks > u64::from(header.max_table_entries) {
        return Err(source.err(FormatError::corrupt(
            "VHD dynamic header",
            header_offset + 28,
            format!(
                "BAT has {} entries but the {virtual_size}-byte disk needs {blocks} blocks of {block_size} bytes",
                header.max_table_entries
            ),
        )));
    }
    // Only the entries the disk uses are read; the table's bounds are
    // checked against the file before anything is allocated.
    let table = source.read_structure(header.table_offset, blocks * 4, "VHD BAT")?;
    let bat = Bat::parse(&table, blocks as u32, header.table_offset).map_err(|e| source.err(e))?;
    let bitmap_size = header.bitmap_size();
    let block_bytes = |b: u64| virtual_size.saturating_sub(b * block_size).min(block_size);
    bat.validate(blocks, bitmap_size, block_bytes, data_end, header.table_offset).map_err(|e| source.err(e))?;
    // Disjoint blocks cannot claim more bytes than the data area holds:
    // checked before building one span per block.
    let claimed = (0..blocks)
        .filter(|&b| bat.locate(b, bitmap_size).is_some())
        .fold(0u64, |acc, b| acc.saturating_add(bitmap_size + block_bytes(b)));
    if claimed > data_end {
        return Err(source.err(FormatError::corrupt(
            "VHD BAT",
            header.table_offset,
            format!(
                "the allocated blocks claim {claimed} bytes of a {data_end}-byte data area: blocks must share bytes"
            ),
        )));
    }
    let mut spans = vec![
        Span { start: 0, end: FOOTER_SIZE as u64, owner: Owner::Structure("footer copy") },
        Span {
            start: header_offset,
            end: header_offset + DYNAMIC_HEADER_SIZE as u64,
            owner: Owner::Structure("dynamic header"),
        },
        Span { start: header.table_offset, end: header.table_offset + blocks * 4, owner: Owner::Structure("BAT") },
    ];
    spans.extend((0..blocks).filter_map(|b| {
        let loc = bat.locate(b, bitmap_size)?;
        Some(Span { start: loc.bitmap_offset, end: loc.data_offset + block_bytes(b), owner: Owner::Block(b) })
    }));
    check_disjoint(spans, "VHD BAT").map_err(|e| source.err(e))?;
    Ok(Dynamic { header, header_offset, bat, block_size, bitmap_size })
}

/// The parent link of a differencing disk: its unique id and the locators,
/// decoded in the order they should be tried. Damaged locators are skipped
/// with a warning: they are hints, and the identity check guards the result.
fn parent_link(source: &Source, d: &Dynamic, warnings: &mut Vec<String>) -> ParentLink {
    let mut relative = Vec::new();
    let mut absolute = Vec::new();
    for (i, entry) in d.header.parent_locators.iter().enumerate() {
        if entry.is_empty() {
            continue;
        }
        let entry_offset = d.header_offset + 576 + i as u64 * 24;
        let Some(platform) = entry.platform() else {
            warnings.push(format!(
                "VHD parent locator {i} at byte {entry_offset}: unknown platform code {:?}",
                String::from_utf8_lossy(&entry.platform_code)
            ));
            continue;
        };
        if let Err(e) = entry.validate(entry_offset, source.size()) {
            warnings.push(e.to_string());
            continue;
        }
        let data = match source.read_structure(entry.data_offset, u64::from(entry.data_length), "VHD parent locator") {
            Ok(data) => data,
            Err(e) => {
                warnings.push(e.to_string());
                continue;
            }
        };
        let Some(path) = vhd::decode_locator_path(platform, &data) else {
            continue;
        };
        match platform {
            Platform::WindowsRelative | Platform::LegacyRelative => relative.push(path),
            _ => absolute.push(path),
        }
    }
    let mut hints: Vec<ParentHint> =
        relative.into_iter().map(|path| ParentHint { kind: HintKind::Relative, path }).collect();
    hints.extend(absolute.into_iter().map(|path| ParentHint { kind: HintKind::Absolute, path }));
    if let Some(name) = d.header.parent_name() {
        hints.push(ParentHint { kind: HintKind::Name, path: name });
    }
    ParentLink { expected_identity: d.header.parent_unique_id, alternate_identity: None, hints, resolved: None }
}

impl Image for VhdImage {
    image_fields!();

    /// The run starting at `offset` (inside the disk), at most `max` bytes.
    fn run_at(&self, offset: u64, max: u64) -> Result<Run> {
        let size = self.info.virtual_size;
        let max = max.min(size - offset);
        let Some(d) = &self.dynamic else {
            return Ok(Run { len: max, kind: RunKind::Data { file_offset: offset } });
        };
        let block = offset / d.block_size;
        let within = offset % d.block_size;
        let len = max.min(d.block_size - within);
        let differencing = self.disk_type == DiskType::Differencing;
        let Some(loc) = d.bat.locate(block, d.bitmap_size) else {
            let kind = if differencing { RunKind::Parent } else { RunKind::Unallocated };
            // One run across consecutive unallocated blocks.
            let mut len = len;
            let mut next = block + 1;
            while len < max && d.bat.locate(next, d.bitmap_size).is_none() && next * d.block_size < size {
                len = (len + d.block_size).min(max);
                next += 1;
            }
            return Ok(Run { len, kind });
        };
        let data = RunKind::Data { file_offset: loc.data_offset + within };
        if !differencing {
            return Ok(Run { len: len.min(max), kind: data });
        }
        // Sector-exact: the bitmap decides between this file and the parent.
        let first = within / SECTOR_SIZE;
        let sectors = (within + len).div_ceil(SECTOR_SIZE) - first;
        let (present, run) = scan_bitmap(&self.source, loc.bitmap_offset, vhd::bitmap::ORDER, first, sectors)?;
        let len = (run * SECTOR_SIZE - within % SECTOR_SIZE).min(len);
        let kind = if present { data } else { RunKind::Parent };
        Ok(Run { len, kind })
    }
}
