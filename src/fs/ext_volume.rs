//! ext2/3/4 through `ext4-view`: extents and block maps, htree folders,
//! symbolic links, the journal replayed in memory, checksums checked. The
//! crate resolves paths itself; names that are not UTF-8 are listed with
//! U+FFFD and cannot be named again.

use std::io::{Read, Seek, SeekFrom};

use ext4_view::{Ext4, Ext4Error, FileType};

use super::device::Device;
use super::error::{FsError, Result};
use super::path::FsPath;
use super::{DirEntry, FileKind, FileTime, FsKind, Metadata};

/// The most entries one folder may list (ext4 with large_dir allows more,
/// but no real folder comes near this).
const MAX_DIR_ENTRIES: usize = 4 << 20;

pub(crate) struct ExtVolume {
    fs: Ext4,
    dev: Device,
    kind: FsKind,
}

impl ExtVolume {
    pub fn open(dev: Device, kind: FsKind) -> Result<ExtVolume> {
        let fs = Ext4::load(Box::new(dev.clone())).map_err(|e| map(&dev, kind, "", e))?;
        Ok(ExtVolume { fs, dev, kind })
    }

    pub fn label(&self) -> Option<String> {
        self.fs.label().to_str().ok().filter(|l| !l.is_empty()).map(String::from)
    }

    fn err(&self, path: &FsPath, e: Ext4Error) -> FsError {
        map(&self.dev, self.kind, &path.display(), e)
    }

    pub fn metadata(&self, path: &FsPath) -> Result<Metadata> {
        let m = self.fs.symlink_metadata(path.display().as_str()).map_err(|e| self.err(path, e))?;
        Ok(metadata(&m))
    }

    pub fn read_dir(&self, path: &FsPath) -> Result<Vec<DirEntry>> {
        let shown = path.display();
        let iter = self.fs.read_dir(shown.as_str()).map_err(|e| self.err(path, e))?;
        let mut out = Vec::new();
        // A real folder never lists a name twice; extents that map one
        // folder block again and again do, and would list without end.
        let mut seen = std::collections::HashSet::new();
        for entry in iter {
            let entry = entry.map_err(|e| self.err(path, e))?;
            if !seen.insert(entry.file_name().as_ref().to_vec()) || seen.len() > MAX_DIR_ENTRIES {
                let name = String::from_utf8_lossy(entry.file_name().as_ref()).into_owned();
                return Err(self.dev.fail(
                    self.kind,
                    &shown,
                    format!("the folder lists {name:?} twice, or too many names (a loop?)"),
                ));
            }
            let name = String::from_utf8_lossy(entry.file_name().as_ref()).into_owned();
            if name == "." || name == ".." {
                continue;
            }
            let mut child = path.clone();
            child.comps.push(name.clone());
            match entry.metadata() {
                Ok(m) => out.push(DirEntry { name, short_name: None, metadata: metadata(&m), problem: None }),
                Err(e) => match self.err(&child, e) {
                    FsError::Disk(e) => return Err(FsError::Disk(e)),
                    e => {
                        let kind = entry.file_type().map(kind_of).unwrap_or(FileKind::Other);
                        let problem = Some(e.to_string());
                        out.push(DirEntry { name, short_name: None, metadata: Metadata::new(kind, 0), problem });
                    }
                },
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn read_link(&self, path: &FsPath) -> Result<String> {
        let target = self.fs.read_link(path.display().as_str()).map_err(|e| self.err(path, e))?;
        Ok(String::from_utf8_lossy(target.as_ref()).into_owned())
    }

    /// The open file at `path` (a link is followed, as reading one does).
    pub fn open_data(&self, path: &FsPath) -> Result<(ext4_view::File, u64)> {
        let file = self.fs.open(path.display().as_str()).map_err(|e| self.err(path, e))?;
        let len = file.metadata().len();
        Ok((file, len))
    }

    pub fn read_data(&self, path: &FsPath, file: &mut ext4_view::File, pos: u64, buf: &mut [u8]) -> Result<usize> {
        let io = |e: std::io::Error| self.dev.fail(self.kind, &path.display(), e);
        if file.position() != pos {
            file.seek(SeekFrom::Start(pos)).map_err(io)?;
        }
        let mut done = 0;
        while done < buf.len() {
            let n = file.read(&mut buf[done..]).map_err(io)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }
}

fn map(dev: &Device, kind: FsKind, path: &str, e: Ext4Error) -> FsError {
    let path = if path.is_empty() { "/".to_string() } else { path.to_string() };
    match e {
        Ext4Error::NotFound => FsError::NotFound { fs: kind, path },
        Ext4Error::NotADirectory => FsError::WrongKind { fs: kind, path, reason: "not a folder" },
        Ext4Error::IsADirectory => FsError::WrongKind { fs: kind, path, reason: "is a folder" },
        Ext4Error::NotASymlink => FsError::WrongKind { fs: kind, path, reason: "not a symbolic link" },
        Ext4Error::IsASpecialFile => FsError::WrongKind { fs: kind, path, reason: "is a device, FIFO or socket" },
        Ext4Error::Encrypted => FsError::Unsupported { fs: kind, path, what: "ext4 encryption".into() },
        Ext4Error::Incompatible(i) => FsError::Unsupported { fs: kind, path, what: i.to_string() },
        e => dev.fail(kind, &path, e),
    }
}

fn kind_of(t: FileType) -> FileKind {
    if t.is_regular_file() {
        FileKind::File
    } else if t.is_dir() {
        FileKind::Dir
    } else if t.is_symlink() {
        FileKind::Symlink
    } else {
        FileKind::Other
    }
}

fn metadata(m: &ext4_view::Metadata) -> Metadata {
    let kind = kind_of(m.file_type());
    let stamp = |t: ext4_view::Timestamp| FileTime { seconds: t.seconds(), nanos: t.nanoseconds() };
    let mut meta = Metadata::new(kind, if kind == FileKind::Dir { 0 } else { m.len() });
    meta.modified = Some(stamp(m.modified()));
    meta.accessed = Some(stamp(m.accessed()));
    meta.created = m.created().map(stamp);
    // ext4-view gives the permission bits; st_mode has the type above them.
    let t = m.file_type();
    let type_bits = if t.is_regular_file() {
        0o100_000
    } else if t.is_dir() {
        0o040_000
    } else if t.is_symlink() {
        0o120_000
    } else if t.is_block_dev() {
        0o060_000
    } else if t.is_char_dev() {
        0o020_000
    } else if t.is_fifo() {
        0o010_000
    } else {
        0o140_000
    };
    meta.mode = Some(type_bits | u32::from(m.mode() & 0o7777));
    meta.uid = Some(m.uid());
    meta.gid = Some(m.gid());
    meta
}
