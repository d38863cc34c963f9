//! One view of any image or differencing chain.
//!
//! [`open`] sniffs a file's format, opens it read-only, follows its parents
//! (checking each one's identity) and returns a [`Disk`]: its [`DiskInfo`], an
//! allocation map ([`Disk::extents`]) and positional reads
//! ([`Disk::read_at`]). A dirty VHDX log is replayed in memory first; the
//! image files are never written.
//!
//! Cost: opening reads only metadata (headers, the BAT, locators; a dirty
//! log). The BAT is held in memory (8 bytes per VHDX block, 4 per VHD block).
//! Reads are positional, allocate nothing, and read a sector bitmap (at most
//! 512 bytes at a time, on the stack) only for partially present blocks.
//!
//! May import: `format` (the parsers), `io` (positional reads) and the
//! crate's error; never `export`, `store` or `nbd`.

mod chain;
mod error;
mod image;
mod layer;
mod open;
mod raw;
mod source;
mod spans;
mod vhd;
mod vhdx;

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use chain::Disk;
pub use error::{DiskError, Result};
pub use open::{ChecksumPolicy, DefaultResolver, OpenOptions, ParentResolver, open};
pub use vhd::VhdImage;
pub use vhdx::VhdxImage;

use crate::format::Guid;

/// A virtual disk: anything that can say what it is, which ranges hold data,
/// and read bytes at any offset. Images and chains ([`Disk`]) implement it,
/// and so does a backup in the store, which makes a backup mountable and
/// lets every writer and the store take any of them.
pub trait VirtualDisk: Send + Sync {
    /// What the disk is: size, sector sizes, identity.
    fn info(&self) -> &DiskInfo;

    /// The allocation map of `range` (clamped to the disk), as adjacent,
    /// coalesced extents in address order. Cost: metadata only, proportional
    /// to the number of blocks in the range.
    fn extents(&self, range: Range<u64>) -> Result<Vec<Extent>>;

    /// Fills `buf` with the disk's bytes at `offset`. The whole range must lie
    /// inside the disk.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// The `len` bytes at `offset` borrowed instead of copied, where the disk
    /// holds them contiguously in memory (an image opened with
    /// [`OpenOptions::mmap`], or from a byte slice); `Ok(None)` means: use
    /// [`VirtualDisk::read_at`]. A backup hashes borrowed chunks in place.
    fn borrow_at(&self, offset: u64, len: usize) -> Result<Option<&[u8]>> {
        let _ = (offset, len);
        Ok(None)
    }

    /// The top image's own allocation of `range`: what it holds itself, with
    /// what its parent supplies as `Parent` at depth 1. For a disk without
    /// parents this is [`VirtualDisk::extents`]. For a differencing child it
    /// is exactly what changed since the parent; reading inside its data
    /// and zero extents never touches the parent.
    fn own_extents(&self, range: Range<u64>) -> Result<Vec<Extent>> {
        self.extents(range)
    }

    /// The virtual size in bytes.
    fn size(&self) -> u64 {
        self.info().virtual_size
    }

    /// What each image of the chain is, top first (the default: the top
    /// image only). A backup reads it to match the image a previous job
    /// captured by identity, and to tell whether the files changed while
    /// they were read.
    fn chain_info(&self) -> Vec<&DiskInfo> {
        vec![self.info()]
    }

    /// The identities (VHDX DataWriteGuid, VHD unique id) of every image
    /// in the chain, top first, with the identity each child expects of its
    /// parent: what a backup matches against the image a previous job
    /// captured.
    fn chain_identities(&self) -> Vec<Guid> {
        let mut ids = Vec::new();
        for info in self.chain_info() {
            ids.push(info.identity);
            if let Some(p) = &info.parent {
                ids.push(p.expected_identity);
                ids.extend(p.alternate_identity);
            }
        }
        ids
    }
}

/// Container format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageFormat {
    /// A Virtual Hard Disk (VHD) image.
    Vhd,
    /// A VHDX image.
    Vhdx,
    /// A raw disk image: the bytes as the guest sees them.
    Raw,
    /// A backup in a vhdkit store.
    Backup,
}

/// How the format lays out data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Subformat {
    /// Every byte has its place in the file.
    Fixed,
    /// Blocks are allocated when written.
    Dynamic,
    /// A dynamic disk whose unwritten sectors come from a parent.
    Differencing,
}

/// What a differencing disk says about its parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParentLink {
    /// The identity the parent must have: VHDX `parent_linkage` (the parent's
    /// DataWriteGuid), VHD parent unique id.
    pub expected_identity: Guid,
    /// VHDX `parent_linkage2`, also accepted.
    pub alternate_identity: Option<Guid>,
    /// Where the parent may be, in the order to try: (kind, path as stored).
    pub hints: Vec<ParentHint>,
    /// The file that was opened as the parent, if any.
    pub resolved: Option<PathBuf>,
}

/// One stored hint for finding a parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParentHint {
    /// `relative`, `volume`, `absolute` or `name`.
    pub kind: HintKind,
    /// The path exactly as the image stores it (Windows separators and all).
    pub path: String,
}

/// The kind of a parent hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HintKind {
    /// Relative to the child's folder.
    Relative,
    /// A Windows volume GUID path.
    Volume,
    /// An absolute path.
    Absolute,
    /// A bare name or path from the VHD header's parent name field.
    Name,
}

/// A VHDX log replayed at open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogReplay {
    /// Log entries replayed.
    pub entries: usize,
    /// Sequence number of the newest entry.
    pub head_sequence: u64,
    /// Writes applied (data sectors and zero ranges).
    pub writes: usize,
}

/// Everything a caller may want to know about one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskInfo {
    /// Container format.
    pub format: ImageFormat,
    /// Fixed, dynamic or differencing.
    pub subformat: Subformat,
    /// Bytes the guest sees.
    pub virtual_size: u64,
    /// Allocation unit; `None` for fixed VHD and raw.
    pub block_size: Option<u32>,
    /// Logical sector size in bytes (512 or 4096).
    pub logical_sector_size: u32,
    /// Physical sector size in bytes (512 or 4096).
    pub physical_sector_size: u32,
    /// The disk's own id: VHDX virtual disk id (SCSI page 83), VHD unique id.
    pub disk_id: Guid,
    /// What children link to: VHDX DataWriteGuid, VHD unique id. Changes
    /// (for VHDX) whenever the disk's contents change.
    pub identity: Guid,
    /// The image file's size in bytes.
    pub file_size: u64,
    /// The image file.
    pub path: PathBuf,
    /// Which program made the image.
    pub creator: String,
    /// For differencing disks: who the parent is.
    pub parent: Option<ParentLink>,
    /// A dirty VHDX log replayed in memory.
    pub log_replay: Option<LogReplay>,
    /// Oddities that did not stop the open (a damaged backup copy of a
    /// header, a checksum accepted under [`ChecksumPolicy::Lenient`]...).
    pub warnings: Vec<String>,
}

/// What a range of the disk holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtentState {
    /// Bytes stored in the image at `depth`.
    Data,
    /// The image at `depth` says these bytes are zero.
    Zero,
    /// No image in the chain holds these bytes; they read as zero.
    Unallocated,
    /// They come from a parent that was not opened (a shallow view).
    Parent,
}

/// A run of the disk in one state, supplied by one layer of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Extent {
    /// First byte, in virtual disk offsets.
    pub offset: u64,
    /// Bytes in the run.
    pub length: u64,
    /// What the run holds.
    pub state: ExtentState,
    /// Which layer supplies the run: 0 is the image opened, 1 its parent...
    pub depth: u32,
}

impl Extent {
    /// The byte range the extent covers.
    pub fn range(&self) -> Range<u64> {
        self.offset..self.offset + self.length
    }
}

/// Appends `e` to `out`, merging it with the last extent when they touch and
/// agree.
pub(crate) fn push_extent(out: &mut Vec<Extent>, e: Extent) {
    if e.length == 0 {
        return;
    }
    if let Some(last) = out.last_mut()
        && last.state == e.state
        && last.depth == e.depth
        && last.offset + last.length == e.offset
    {
        last.length += e.length;
        return;
    }
    out.push(e);
}

/// The display name for an image read from memory rather than a file.
pub(crate) fn memory_path(name: &str) -> PathBuf {
    Path::new("<memory>").join(name)
}
