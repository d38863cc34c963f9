//! NTFS through the `ntfs` crate: names looked up case-insensitively with
//! the volume's $UpCase table, long names listed and 8.3 names beside them,
//! named streams, hard links (one file record, several names), sparse files
//! (holes read as zeros by the crate), and refusal by name of what the
//! crate would return as raw bytes: compressed, EFS-encrypted and
//! WOF-compressed files.

use std::collections::{HashMap, HashSet};
use std::io::SeekFrom;

use ntfs::indexes::NtfsFileNameIndex;
use ntfs::structured_values::{NtfsFileAttributeFlags, NtfsFileNamespace};
use ntfs::{Ntfs, NtfsAttributeFlags, NtfsAttributeType, NtfsFile, NtfsReadSeek, NtfsTime};

use super::device::Device;
use super::error::{FsError, Result};
use super::path::FsPath;
use super::{DirEntry, FileKind, FileTime, FsKind, Metadata, Stream};

/// The most entries one folder may list: a loop in a damaged index ends
/// here (or sooner, at the first name listed twice).
const MAX_DIR_ENTRIES: usize = 4 << 20;
/// Reparse tags: symbolic link, junction, WOF, deduplication.
const TAG_SYMLINK: u32 = 0xA000_000C;
const TAG_MOUNT_POINT: u32 = 0xA000_0003;
const TAG_WOF: u32 = 0x8000_0017;
const TAG_DEDUP: u32 = 0x8000_0013;
/// File record numbers below this are the volume's own metafiles ($MFT,
/// $Bitmap...), hidden from the root's listing as Windows hides them.
const FIRST_USER_RECORD: u64 = 16;

pub(crate) struct NtfsVolume {
    ntfs: Ntfs,
    dev: std::cell::RefCell<Device>,
}

const KIND: FsKind = FsKind::Ntfs;

impl NtfsVolume {
    pub fn open(dev: Device) -> Result<NtfsVolume> {
        let mut d = dev.clone();
        let mut ntfs = Ntfs::new(&mut d).map_err(|e| dev.fail(KIND, "", e))?;
        ntfs.read_upcase_table(&mut d).map_err(|e| dev.fail(KIND, "$UpCase", e))?;
        Ok(NtfsVolume { ntfs, dev: std::cell::RefCell::new(dev) })
    }

    pub fn label(&self) -> Option<String> {
        let mut dev = self.dev.borrow_mut();
        let name = self.ntfs.volume_name(&mut *dev)?.ok()?;
        Some(name.name().to_string_lossy())
    }

    fn fail(&self, path: &FsPath, e: impl std::fmt::Display) -> FsError {
        self.dev.borrow().fail(KIND, &path.display(), e)
    }

    /// The file at `path`.
    fn lookup(&self, path: &FsPath) -> Result<NtfsFile<'_>> {
        let mut dev = self.dev.borrow().clone();
        let fail = |e: ntfs::NtfsError| self.fail(path, e);
        let mut file = self.ntfs.root_directory(&mut dev).map_err(fail)?;
        for (i, name) in path.comps.iter().enumerate() {
            if !file.is_directory() {
                let at = FsPath { comps: path.comps[..i].to_vec(), stream: None };
                return Err(FsError::WrongKind { fs: KIND, path: at.display(), reason: "not a folder" });
            }
            let next = {
                let index = file.directory_index(&mut dev).map_err(fail)?;
                let mut finder = index.finder();
                match NtfsFileNameIndex::find(&mut finder, &self.ntfs, &mut dev, name) {
                    None => return Err(FsError::NotFound { fs: KIND, path: path.display() }),
                    Some(entry) => entry.map_err(fail)?.file_reference().to_file(&self.ntfs, &mut dev).map_err(fail)?,
                }
            };
            file = next;
        }
        Ok(file)
    }

    pub fn metadata(&self, path: &FsPath) -> Result<Metadata> {
        let file = self.lookup(path)?;
        let mut meta = self.file_metadata(&file, path)?;
        if let Some(stream) = &path.stream {
            let s = meta.streams.iter().find(|s| s.name.eq_ignore_ascii_case(stream));
            let s = s.ok_or_else(|| FsError::NotFound { fs: KIND, path: path.display() })?;
            meta.len = s.len;
            meta.kind = FileKind::File;
        }
        Ok(meta)
    }

    fn file_metadata(&self, file: &NtfsFile<'_>, path: &FsPath) -> Result<Metadata> {
        let mut dev = self.dev.borrow().clone();
        let fail = |e: ntfs::NtfsError| self.fail(path, e);
        let info = file.info().map_err(fail)?;
        let attributes = info.file_attributes();
        let mut meta = Metadata::new(if file.is_directory() { FileKind::Dir } else { FileKind::File }, 0);
        meta.modified = Some(time(info.modification_time()));
        meta.accessed = Some(time(info.access_time()));
        meta.created = Some(time(info.creation_time()));
        meta.id = Some(file.file_record_number());
        meta.links = Some(u32::from(file.hard_link_count()));
        meta.attributes = Some(attributes.bits());
        let mut unsupported = Vec::new();
        if attributes.contains(NtfsFileAttributeFlags::ENCRYPTED) {
            unsupported.push("EFS encryption".to_string());
        }
        let mut attrs = file.attributes();
        while let Some(item) = attrs.next(&mut dev) {
            let item = item.map_err(fail)?;
            let attr = item.to_attribute().map_err(fail)?;
            match attr.ty().map_err(fail)? {
                NtfsAttributeType::Data => {
                    let name = attr.name().map_err(fail)?;
                    if name.is_empty() {
                        meta.len = attr.value_length();
                        // Resident data is never compressed, whatever its flag says
                        // (Windows sets it on small files in a compressed folder).
                        if attr.flags().contains(NtfsAttributeFlags::COMPRESSED) && !attr.is_resident() {
                            unsupported.push("NTFS compression".to_string());
                        }
                        if attr.flags().contains(NtfsAttributeFlags::ENCRYPTED) && unsupported.is_empty() {
                            unsupported.push("EFS encryption".to_string());
                        }
                    } else {
                        meta.streams.push(Stream { name: name.to_string_lossy(), len: attr.value_length() });
                    }
                }
                NtfsAttributeType::ReparsePoint => {
                    let mut value = attr.value(&mut dev).map_err(fail)?;
                    let mut tag = [0u8; 4];
                    value.read_exact(&mut dev, &mut tag).map_err(fail)?;
                    match u32::from_le_bytes(tag) {
                        TAG_SYMLINK | TAG_MOUNT_POINT => meta.kind = FileKind::Symlink,
                        TAG_WOF => unsupported.push("WOF compression".to_string()),
                        TAG_DEDUP => unsupported.push("Data Deduplication".to_string()),
                        _ if !file.is_directory() => meta.kind = FileKind::Other,
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        if meta.kind == FileKind::Dir {
            meta.len = 0;
        }
        meta.unsupported = (!unsupported.is_empty()).then(|| unsupported.join(", "));
        Ok(meta)
    }

    pub fn read_dir(&self, path: &FsPath) -> Result<Vec<DirEntry>> {
        let dir = self.lookup(path)?;
        if !dir.is_directory() {
            return Err(FsError::WrongKind { fs: KIND, path: path.display(), reason: "not a folder" });
        }
        let is_root = path.comps.is_empty();
        let mut dev = self.dev.borrow().clone();
        let fail = |e: ntfs::NtfsError| self.fail(path, e);
        let index = dir.directory_index(&mut dev).map_err(fail)?;
        let mut entries = index.entries();
        let mut listed = Vec::new();
        let mut short_names: HashMap<u64, String> = HashMap::new();
        let mut seen = HashSet::new();
        while let Some(entry) = entries.next(&mut dev) {
            let entry = entry.map_err(fail)?;
            let Some(key) = entry.key() else { continue };
            let key = key.map_err(fail)?;
            let reference = entry.file_reference();
            let record = reference.file_record_number();
            let name = key.name().to_string_lossy();
            if key.namespace() == NtfsFileNamespace::Dos {
                short_names.insert(record, name);
                continue;
            }
            if name == "." || (is_root && record < FIRST_USER_RECORD && name.starts_with('$')) {
                continue;
            }
            if !seen.insert(name.clone()) || seen.len() > MAX_DIR_ENTRIES {
                return Err(
                    self.fail(path, format!("the folder's index lists {name:?} twice, or too many names (a loop?)"))
                );
            }
            let mut meta =
                Metadata::new(if key.is_directory() { FileKind::Dir } else { FileKind::File }, key.data_size());
            meta.modified = Some(time(key.modification_time()));
            meta.id = Some(record);
            listed.push((name, reference, meta));
        }
        drop(entries);
        let mut out = Vec::with_capacity(listed.len());
        for (name, reference, fallback) in listed {
            let mut child = path.clone();
            child.comps.push(name.clone());
            let read = reference.to_file(&self.ntfs, &mut dev).map_err(|e| self.fail(&child, e)).and_then(|file| {
                if file.sequence_number() != reference.sequence_number() {
                    return Err(self.fail(
                        &child,
                        format!(
                            "the entry names record {} of sequence {}, which is now {}",
                            file.file_record_number(),
                            reference.sequence_number(),
                            file.sequence_number()
                        ),
                    ));
                }
                self.file_metadata(&file, &child)
            });
            let short_name = short_names.remove(&reference.file_record_number()).filter(|s| *s != name);
            match read {
                Ok(metadata) => out.push(DirEntry { name, short_name, metadata, problem: None }),
                Err(FsError::Disk(e)) => return Err(FsError::Disk(e)),
                Err(e) => out.push(DirEntry { name, short_name, metadata: fallback, problem: Some(e.to_string()) }),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Where a symbolic link or junction points, as Windows stores it.
    pub fn read_link(&self, path: &FsPath) -> Result<String> {
        let file = self.lookup(path)?;
        let mut dev = self.dev.borrow().clone();
        let fail = |e: ntfs::NtfsError| self.fail(path, e);
        let mut attrs = file.attributes();
        while let Some(item) = attrs.next(&mut dev) {
            let item = item.map_err(fail)?;
            let attr = item.to_attribute().map_err(fail)?;
            if attr.ty().map_err(fail)? != NtfsAttributeType::ReparsePoint {
                continue;
            }
            let len = attr.value_length().min(16 * 1024) as usize;
            let mut bytes = vec![0u8; len];
            attr.value(&mut dev).map_err(fail)?.read_exact(&mut dev, &mut bytes).map_err(fail)?;
            return reparse_target(&bytes).ok_or_else(|| self.fail(path, "a damaged reparse point"));
        }
        Err(FsError::WrongKind { fs: KIND, path: path.display(), reason: "not a symbolic link" })
    }

    /// Checks `path` can be read as data: its file record number and length.
    pub fn open_data(&self, path: &FsPath) -> Result<(u64, u64)> {
        let meta = self.metadata(path)?;
        if meta.kind == FileKind::Dir && path.stream.is_none() {
            return Err(FsError::WrongKind { fs: KIND, path: path.display(), reason: "is a folder" });
        }
        if let Some(what) = meta.unsupported {
            return Err(FsError::Unsupported { fs: KIND, path: path.display(), what });
        }
        Ok((meta.id.unwrap_or_default(), meta.len))
    }

    /// Reads `buf.len()` bytes or up to the end of record `record`'s stream
    /// (the main one for ""), from `pos`.
    pub fn read_data(&self, path: &FsPath, record: u64, pos: u64, buf: &mut [u8]) -> Result<usize> {
        let mut dev = self.dev.borrow().clone();
        let fail = |e: ntfs::NtfsError| self.fail(path, e);
        let file = self.ntfs.file(&mut dev, record).map_err(fail)?;
        let stream = path.stream.as_deref().unwrap_or("");
        let Some(item) = file.data(&mut dev, stream) else { return Ok(0) };
        let item = item.map_err(fail)?;
        let attr = item.to_attribute().map_err(fail)?;
        let mut value = attr.value(&mut dev).map_err(fail)?;
        if pos >= value.len() {
            return Ok(0);
        }
        let want = (value.len() - pos).min(buf.len() as u64) as usize;
        // Past the valid data length NTFS reads zeros, whatever the
        // clusters hold (a preallocated file's tail); the crate does not.
        let valid = valid_length(&dev, &attr).map_or(want, |v| v.saturating_sub(pos).min(want as u64) as usize);
        buf[valid..want].fill(0);
        let mut done = 0;
        if valid > 0 {
            value.seek(&mut dev, SeekFrom::Start(pos)).map_err(fail)?;
        }
        while done < valid {
            let n = value.read(&mut dev, &mut buf[done..valid]).map_err(fail)?;
            if n == 0 {
                return Ok(done);
            }
            done += n;
        }
        Ok(want)
    }
}

/// The valid data length of a non-resident attribute when it is shorter
/// than its data, read from the attribute header on the volume (offset
/// 0x38; `ntfs` keeps it private). `None` when resident, when equal, or when
/// the field straddles an update-sequence fixup (the last two bytes of a
/// 512-byte stride hold the fixup on disk, not the value).
fn valid_length(dev: &Device, attr: &ntfs::NtfsAttribute<'_, '_>) -> Option<u64> {
    if attr.is_resident() {
        return None;
    }
    let sizes = attr.position().value()?.get() + 0x30;
    if sizes % 512 + 16 > 510 {
        return None;
    }
    let mut b = [0u8; 16];
    dev.read_exact_at(&mut b, sizes).ok()?;
    let data = u64::from_le_bytes(b[..8].try_into().ok()?);
    let valid = u64::from_le_bytes(b[8..].try_into().ok()?);
    // The data size read here must be the one the crate parsed, or these
    // are not the header's bytes.
    (data == attr.value_length() && valid < data).then_some(valid)
}

fn time(t: NtfsTime) -> FileTime {
    // 100 ns ticks since 1601-01-01.
    let ticks = t.nt_timestamp() as i128 - 116_444_736_000_000_000;
    FileTime { seconds: ticks.div_euclid(10_000_000) as i64, nanos: (ticks.rem_euclid(10_000_000) * 100) as u32 }
}

/// The print name (else the substitute name) of a symbolic link or mount
/// point's reparse buffer.
pub(crate) fn reparse_target(b: &[u8]) -> Option<String> {
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]) as usize);
    let tag = u32::from_le_bytes(b.get(0..4)?.try_into().ok()?);
    let buffer = match tag {
        TAG_SYMLINK => 20,
        TAG_MOUNT_POINT => 16,
        _ => return None,
    };
    let (sub_off, sub_len, print_off, print_len) = (u16_at(8)?, u16_at(10)?, u16_at(12)?, u16_at(14)?);
    let (off, len) = if print_len > 0 { (print_off, print_len) } else { (sub_off, sub_len) };
    let bytes = b.get(buffer + off..buffer + off + len)?;
    let units: Vec<u16> = bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    Some(String::from_utf16_lossy(&units))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_reparse_buffers_give_their_print_name() {
        let sub: Vec<u8> = "\\??\\C:\\target".encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
        let print: Vec<u8> = "C:\\target".encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
        let mut b = TAG_SYMLINK.to_le_bytes().to_vec();
        b.extend((12 + sub.len() as u16 + print.len() as u16).to_le_bytes());
        b.extend([0, 0]);
        b.extend(0u16.to_le_bytes());
        b.extend((sub.len() as u16).to_le_bytes());
        b.extend((sub.len() as u16).to_le_bytes());
        b.extend((print.len() as u16).to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(&sub);
        b.extend(&print);
        assert_eq!(reparse_target(&b).as_deref(), Some("C:\\target"));
        assert_eq!(reparse_target(&b[..30]), None);
        assert_eq!(time(NtfsTime::from(116_444_736_000_000_000u64 + 15)), FileTime { seconds: 0, nanos: 1500 });
    }
}
