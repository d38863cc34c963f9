//! File systems inside any disk, read-only: find a disk's partitions, open
//! the NTFS, ext2/3/4 or FAT volume in one, and list, stat and read its
//! files, without mounting anything and without restoring the disk.
//!
//! Everything reads through [`VirtualDisk::read_at`](crate::VirtualDisk),
//! so the same calls work on an image, a differencing chain, a backup in a
//! store ([`store::BackupReader`](crate::store::BackupReader)) or an NBD
//! overlay. A volume keeps a bounded cache of 256 KiB blocks (16 MiB), so
//! listing a folder costs reads in proportion to the metadata it touches.
//!
//! ```no_run
//! use std::io::Read;
//! use std::sync::Arc;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let disk = Arc::new(vhdkit::open("vm/disk.vhdx")?);
//! for p in vhdkit::fs::partitions(&*disk)?.partitions {
//!     println!("{} {:?} at {}", p.number, p.filesystem, p.offset);
//! }
//! let volume = vhdkit::fs::Volume::open_spec(disk, Some("2"))?;
//! for entry in volume.read_dir("/Windows")? {
//!     println!("{} {}", entry.name, entry.metadata.len);
//! }
//! let mut text = String::new();
//! volume.open_file("/Windows/win.ini")?.read_to_string(&mut text)?;
//! # Ok(())
//! # }
//! ```
//!
//! The readers are crates (`ntfs`, `ext4-view`, `fatfs`); what they cannot
//! read (NTFS-compressed, EFS-encrypted or WOF-compressed files; ReFS, XFS,
//! LVM, BitLocker, exFAT volumes) fails with [`FsError::Unsupported`] by
//! name and path, never as wrong bytes. A crate's panic on damaged bytes is
//! caught and becomes [`FsError::Panicked`]; that volume is then closed.
//! A [`Volume`] is used from one thread (the crates' readers are not
//! `Sync`); open one per thread.
//!
//! May import: `disk` (the [`VirtualDisk`](crate::VirtualDisk) trait),
//! `format` (GUIDs), `cancel` and the crate's error; never `store`,
//! `export` or `nbd`.

mod device;
mod error;
mod ext_volume;
mod fat_volume;
mod ntfs_volume;
mod partition;
mod path;
mod probe;
mod volume;
mod walk;

use std::fmt;

use serde::{Serialize, Serializer};

pub use error::{FsError, Result};
pub use partition::{Partition, PartitionTable, Scheme, partitions};
pub use path::split_spec;
pub use volume::{FileReader, Volume};
pub use walk::{CheckOptions, CheckReport, Problem, check_disk, walk};

/// A file system kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FsKind {
    /// NTFS (any version Windows writes).
    Ntfs,
    /// ext2, ext3 or ext4.
    Ext {
        /// 2, 3 or 4, from the superblock's features.
        version: u8,
    },
    /// FAT12, FAT16 or FAT32.
    Fat {
        /// 12, 16 or 32.
        bits: u8,
    },
    /// Recognised, but not readable here (ReFS, XFS, LVM, BitLocker, exFAT).
    Unreadable(&'static str),
}

impl fmt::Display for FsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsKind::Ntfs => f.write_str("NTFS"),
            FsKind::Ext { version } => write!(f, "ext{version}"),
            FsKind::Fat { bits } => write!(f, "FAT{bits}"),
            FsKind::Unreadable(name) => f.write_str(name),
        }
    }
}

impl Serialize for FsKind {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// A regular file.
    File,
    /// A folder.
    Dir,
    /// A symbolic link (ext), or an NTFS symbolic link or junction.
    Symlink,
    /// A device, FIFO or socket (ext), or an NTFS reparse point of
    /// another kind.
    Other,
}

/// A moment, as seconds and nanoseconds since 1970-01-01 UTC. FAT keeps
/// local time without a zone; it is given as if it were UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct FileTime {
    /// Seconds since the Unix epoch (negative before 1970).
    pub seconds: i64,
    /// Nanoseconds within the second.
    pub nanos: u32,
}

/// A named data stream of an NTFS file besides its main one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stream {
    /// Its name (read it as `path:name`).
    pub name: String,
    /// Its length in bytes.
    pub len: u64,
    /// Why it cannot be read here, when it cannot (compressed, encrypted).
    pub unsupported: Option<String>,
}

/// What a file system says about one file or folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Metadata {
    /// File, folder, link...
    pub kind: FileKind,
    /// Bytes of data (of the main stream on NTFS; 0 for folders).
    pub len: u64,
    /// Last change of the data.
    pub modified: Option<FileTime>,
    /// Last access, where kept.
    pub accessed: Option<FileTime>,
    /// Creation, where kept.
    pub created: Option<FileTime>,
    /// Unix permission bits and type (ext).
    pub mode: Option<u32>,
    /// Owner and group (ext).
    pub uid: Option<u32>,
    /// Group (ext).
    pub gid: Option<u32>,
    /// The file's own number (NTFS file record number): equal for hard
    /// links to one file.
    pub id: Option<u64>,
    /// Names the file has (NTFS).
    pub links: Option<u32>,
    /// DOS/Windows attribute bits (NTFS, FAT).
    pub attributes: Option<u32>,
    /// Named streams (NTFS).
    pub streams: Vec<Stream>,
    /// Why its data cannot be read here, when it cannot (NTFS compression,
    /// encryption, WOF...). Reading it fails with [`FsError::Unsupported`].
    pub unsupported: Option<String>,
}

impl Metadata {
    pub(crate) fn new(kind: FileKind, len: u64) -> Metadata {
        Metadata {
            kind,
            len,
            modified: None,
            accessed: None,
            created: None,
            mode: None,
            uid: None,
            gid: None,
            id: None,
            links: None,
            attributes: None,
            streams: Vec::new(),
            unsupported: None,
        }
    }

    /// Whether this is a folder.
    pub fn is_dir(&self) -> bool {
        self.kind == FileKind::Dir
    }
}

/// One entry of a folder.
#[derive(Debug, Clone, Serialize)]
pub struct DirEntry {
    /// Its name (the long name on NTFS and FAT). Names that are not valid
    /// UTF-8 or UTF-16 are shown with U+FFFD in place of what is not.
    pub name: String,
    /// The 8.3 name, where the file system keeps a different one.
    pub short_name: Option<String>,
    /// What it is. When the entry's own record could not be read, this
    /// holds what the folder says and `problem` says why.
    pub metadata: Metadata,
    /// Why the entry's record could not be read, if it could not.
    pub problem: Option<String>,
}
