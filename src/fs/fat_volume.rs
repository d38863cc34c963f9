//! FAT12/16/32 through `fatfs`, opened over a device whose writes always
//! fail (the crate opens volumes read-write; nothing here ever writes, and
//! it writes only when asked to change something). Names compare without
//! case, long or 8.3; times are local times without a zone, given as UTC.

use std::io::{Read, Seek, SeekFrom};

use fatfs::{Dir, FileSystem, FsOptions};

use super::device::Device;
use super::error::{FsError, Result};
use super::path::{FsPath, unaddressable};
use super::{DirEntry, FileKind, FileTime, FsKind, Metadata};

/// FAT allows 65 536 entries in a folder; more means its cluster chain loops.
const MAX_DIR_ENTRIES: usize = 65_536;

pub(crate) struct FatVolume {
    fs: FileSystem<Device>,
    dev: Device,
    kind: FsKind,
}

type Entry<'a> = fatfs::DirEntry<'a, Device>;

impl FatVolume {
    pub fn open(dev: Device, kind: FsKind) -> Result<FatVolume> {
        let fs = FileSystem::new(dev.clone(), FsOptions::new()).map_err(|e| dev.fail(kind, "/", e))?;
        let kind = match fs.fat_type() {
            fatfs::FatType::Fat12 => FsKind::Fat { bits: 12 },
            fatfs::FatType::Fat16 => FsKind::Fat { bits: 16 },
            fatfs::FatType::Fat32 => FsKind::Fat { bits: 32 },
        };
        Ok(FatVolume { fs, dev, kind })
    }

    pub fn kind(&self) -> FsKind {
        self.kind
    }

    pub fn label(&self) -> Option<String> {
        let from_root = self.fs.read_volume_label_from_root_dir().ok().flatten();
        let label = from_root.unwrap_or_else(|| self.fs.volume_label());
        // A damaged root folder only costs the label; its read error is
        // not left for a later, unrelated failure to be blamed on.
        let _ = self.dev.take_error();
        let label = label.trim_end().to_string();
        (!label.is_empty() && label != "NO NAME").then_some(label)
    }

    fn io(&self, path: &FsPath, e: std::io::Error) -> FsError {
        self.dev.fail(self.kind, &path.display(), e)
    }

    /// The entries of `dir`, without `.` and `..`, bounded.
    fn entries<'a>(&'a self, dir: &Dir<'a, Device>, path: &FsPath) -> Result<Vec<Entry<'a>>> {
        let mut out = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| self.io(path, e))?;
            let name = entry.file_name();
            if name == "." || name == ".." {
                continue;
            }
            if out.len() >= MAX_DIR_ENTRIES {
                return Err(self.dev.fail(
                    self.kind,
                    &path.display(),
                    "more than 65536 entries (a looping cluster chain?)",
                ));
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// The entry `name` of `dir`: a linear search, as FAT folders are
    /// lists, stopping at the first match and bounded like a listing.
    fn find<'a>(&'a self, dir: &Dir<'a, Device>, name: &str, path: &FsPath) -> Result<Entry<'a>> {
        let same = |a: &str| a.chars().flat_map(char::to_lowercase).eq(name.chars().flat_map(char::to_lowercase));
        for (n, entry) in dir.iter().enumerate() {
            if n >= MAX_DIR_ENTRIES {
                return Err(self.dev.fail(
                    self.kind,
                    &path.display(),
                    "more than 65536 entries (a looping cluster chain?)",
                ));
            }
            let entry = entry.map_err(|e| self.io(path, e))?;
            if same(&entry.file_name()) || same(&entry.short_file_name()) {
                return Ok(entry);
            }
        }
        Err(FsError::NotFound { fs: self.kind, path: path.display() })
    }

    /// The folder at `comps`.
    fn dir_at(&self, path: &FsPath, comps: &[String]) -> Result<Dir<'_, Device>> {
        let mut dir = self.fs.root_dir();
        for (i, name) in comps.iter().enumerate() {
            let entry = self.find(&dir, name, path)?;
            if !entry.is_dir() {
                let at = FsPath { comps: comps[..=i].to_vec(), stream: None };
                return Err(FsError::WrongKind { fs: self.kind, path: at.display(), reason: "not a folder" });
            }
            dir = entry.to_dir();
        }
        Ok(dir)
    }

    fn entry(&self, path: &FsPath) -> Result<Option<Entry<'_>>> {
        let Some((last, parent)) = path.comps.split_last() else { return Ok(None) };
        let dir = self.dir_at(path, parent)?;
        self.find(&dir, last, path).map(Some)
    }

    pub fn metadata(&self, path: &FsPath) -> Result<Metadata> {
        Ok(match self.entry(path)? {
            Some(e) => metadata(&e),
            None => Metadata::new(FileKind::Dir, 0),
        })
    }

    pub fn read_dir(&self, path: &FsPath) -> Result<Vec<DirEntry>> {
        let dir = self.dir_at(path, &path.comps)?;
        let mut out: Vec<DirEntry> = self
            .entries(&dir, path)?
            .into_iter()
            .filter(|e| !e.attributes().contains(fatfs::FileAttributes::VOLUME_ID))
            .map(|e| {
                let name = e.file_name();
                let short = e.short_file_name();
                let mut metadata = metadata(&e);
                metadata.unsupported = unaddressable(&name, false);
                DirEntry { short_name: (short != name).then_some(short), name, metadata, problem: None }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn open_data(&self, path: &FsPath) -> Result<(fatfs::File<'_, Device>, u64)> {
        match self.entry(path)? {
            Some(e) if e.is_file() => Ok((e.to_file(), e.len())),
            _ => Err(FsError::WrongKind { fs: self.kind, path: path.display(), reason: "is a folder" }),
        }
    }

    pub fn read_data(
        &self,
        path: &FsPath,
        file: &mut fatfs::File<'_, Device>,
        pos: u64,
        buf: &mut [u8],
    ) -> Result<usize> {
        file.seek(SeekFrom::Start(pos)).map_err(|e| self.io(path, e))?;
        let mut done = 0;
        while done < buf.len() {
            let n = file.read(&mut buf[done..]).map_err(|e| self.io(path, e))?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }
}

fn metadata(e: &Entry<'_>) -> Metadata {
    let mut meta =
        Metadata::new(if e.is_dir() { FileKind::Dir } else { FileKind::File }, if e.is_dir() { 0 } else { e.len() });
    meta.modified = stamp(e.modified());
    meta.created = stamp(e.created());
    meta.accessed =
        stamp(fatfs::DateTime { date: e.accessed(), time: fatfs::Time { hour: 0, min: 0, sec: 0, millis: 0 } });
    meta.attributes = Some(u32::from(e.attributes().bits()));
    meta
}

/// A FAT date and time as seconds since 1970, or `None` when the fields
/// are not a date (0 for "never set", or damage).
fn stamp(t: fatfs::DateTime) -> Option<FileTime> {
    let (y, m, d) = (i64::from(t.date.year), i64::from(t.date.month), i64::from(t.date.day));
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || t.time.hour > 23 || t.time.min > 59 || t.time.sec > 59 {
        return None;
    }
    // Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar.
    let (y, m) = if m <= 2 { (y - 1, m + 12) } else { (y, m) };
    let days = 365 * y + y / 4 - y / 100 + y / 400 + (153 * (m - 3) + 2) / 5 + d - 719_469;
    let secs = days * 86_400 + i64::from(t.time.hour) * 3600 + i64::from(t.time.min) * 60 + i64::from(t.time.sec);
    Some(FileTime { seconds: secs, nanos: u32::from(t.time.millis.min(999)) * 1_000_000 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fat_times_convert_and_bad_ones_are_none() {
        let t = |year, month, day, hour, min, sec| fatfs::DateTime {
            date: fatfs::Date { year, month, day },
            time: fatfs::Time { hour, min, sec, millis: 0 },
        };
        assert_eq!(stamp(t(1980, 1, 1, 0, 0, 0)).unwrap().seconds, 315_532_800);
        assert_eq!(stamp(t(2024, 2, 29, 12, 30, 15)).unwrap().seconds, 1_709_209_815);
        assert_eq!(stamp(t(2024, 0, 29, 12, 30, 15)), None);
    }
}
