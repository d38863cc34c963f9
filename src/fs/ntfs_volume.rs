//! NTFS through the `ntfs` crate: names looked up case-insensitively with
//! the volume's $UpCase table, long names listed and 8.3 names beside them,
//! named streams, hard links (one file record, several names), sparse files
//! (holes read as zeros by the crate), and refusal by name of what the
//! crate would return as raw bytes: compressed, EFS-encrypted and
//! WOF-compressed files.

use std::collections::{HashMap, HashSet};
use std::io::SeekFrom;

use ntfs::indexes::NtfsFileNameIndex;
use ntfs::structured_values::{NtfsFileAttributeFlags, NtfsFileNamespace, NtfsIndexRoot};
use ntfs::{Ntfs, NtfsAttributeFlags, NtfsAttributeType, NtfsFile, NtfsReadSeek, NtfsTime};

use super::device::Device;
use super::error::{FsError, Result};
use super::path::{FsPath, unaddressable};
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
        let name = self.ntfs.volume_name(&mut *dev);
        // A damaged $Volume only costs the label; its read error is not
        // left for a later, unrelated failure to be blamed on.
        let _ = dev.take_error();
        Some(name?.ok()?.name().to_string_lossy())
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
                let index = self.directory_index(&file, &mut dev, path)?;
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

    /// The folder index of `file`, after checking its index record size:
    /// the crate allocates one record of that size per index record it
    /// reads, and takes the size from the folder's own $INDEX_ROOT.
    fn directory_index<'n, 'f>(
        &self,
        file: &'f NtfsFile<'n>,
        dev: &mut Device,
        path: &FsPath,
    ) -> Result<ntfs::NtfsIndex<'n, 'f, NtfsFileNameIndex>> {
        let fail = |e: ntfs::NtfsError| self.fail(path, e);
        let mut attrs = file.attributes();
        while let Some(item) = attrs.next(dev) {
            let item = item.map_err(fail)?;
            let attr = item.to_attribute().map_err(fail)?;
            if attr.ty().map_err(fail)? == NtfsAttributeType::IndexRoot {
                let root = attr.resident_structured_value::<NtfsIndexRoot>().map_err(fail)?;
                let size = root.index_record_size();
                if !(512..=65536).contains(&size) || !size.is_power_of_two() {
                    return Err(self.fail(path, format!("index records of {size} bytes")));
                }
            }
        }
        file.directory_index(dev).map_err(fail)
    }

    pub fn metadata(&self, path: &FsPath) -> Result<Metadata> {
        let file = self.lookup(path)?;
        let mut meta = self.file_metadata(&file, path)?;
        if let Some(stream) = &path.stream {
            let s = meta.streams.iter().find(|s| s.name.eq_ignore_ascii_case(stream));
            let s = s.ok_or_else(|| FsError::NotFound { fs: KIND, path: path.display() })?;
            meta.len = s.len;
            meta.kind = FileKind::File;
            meta.unsupported = s.unsupported.clone();
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
        // What keeps the main stream from being read; a named stream has
        // its own flags (compression, encryption), and EFS covers every stream.
        let mut unsupported = Vec::new();
        let encrypted = attributes.contains(NtfsFileAttributeFlags::ENCRYPTED);
        if encrypted {
            unsupported.push("EFS encryption".to_string());
        }
        let mut attrs = file.attributes();
        while let Some(item) = attrs.next(&mut dev) {
            let item = item.map_err(fail)?;
            let attr = item.to_attribute().map_err(fail)?;
            match attr.ty().map_err(fail)? {
                NtfsAttributeType::Data => {
                    let name = attr.name().map_err(fail)?;
                    let refused = stream_refusal(&attr, encrypted);
                    if name.is_empty() {
                        meta.len = attr.value_length();
                        unsupported.extend(refused.filter(|r| !unsupported.contains(r)));
                    } else {
                        let name = name.to_string_lossy();
                        meta.streams.push(Stream { name, len: attr.value_length(), unsupported: refused });
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
        let index = self.directory_index(&dir, &mut dev, path)?;
        let mut entries = index.entries();
        let mut listed = Vec::new();
        let mut short_names: HashMap<u64, String> = HashMap::new();
        // Every entry counts, 8.3 names and hidden ones too, so an index
        // that loops through any of them ends.
        let mut seen = HashSet::new();
        while let Some(entry) = entries.next(&mut dev) {
            let entry = entry.map_err(fail)?;
            let Some(key) = entry.key() else { continue };
            let key = key.map_err(fail)?;
            let reference = entry.file_reference();
            let record = reference.file_record_number();
            let name = key.name().to_string_lossy();
            let dos = key.namespace() == NtfsFileNamespace::Dos;
            if !seen.insert((dos, name.clone())) || seen.len() > MAX_DIR_ENTRIES {
                return Err(
                    self.fail(path, format!("the folder's index lists {name:?} twice, or too many names (a loop?)"))
                );
            }
            if dos {
                short_names.insert(record, name);
                continue;
            }
            if name == "." || (is_root && record < FIRST_USER_RECORD && name.starts_with('$')) {
                continue;
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
                Ok(mut metadata) => {
                    if let Some(why) = unaddressable(&name, true) {
                        metadata.unsupported = Some(why);
                    }
                    out.push(DirEntry { name, short_name, metadata, problem: None })
                }
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
        let valid = valid_length(&dev, &file, &attr).map_err(|e| self.fail(path, e))?;
        let valid = valid.map_or(want, |v| v.saturating_sub(pos).min(want as u64) as usize);
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
/// 0x38 of the attribute; `ntfs` keeps it private). On disk, the last two
/// bytes of each 512-byte stride of a file record hold the update sequence
/// number; their real values are in the record's update sequence array,
/// and are put back here. `Ok(None)` when resident, when no shorter, or
/// when the data size read does not match the one the crate parsed (not
/// the first extent's header).
fn valid_length(dev: &Device, file: &NtfsFile<'_>, attr: &ntfs::NtfsAttribute<'_, '_>) -> std::io::Result<Option<u64>> {
    if attr.is_resident() {
        return Ok(None);
    }
    let unplaced =
        || std::io::Error::new(std::io::ErrorKind::InvalidData, "an attribute without a place on the volume");
    let record = file.position().value().ok_or_else(unplaced)?.get();
    let at = attr.position().value().ok_or_else(unplaced)?.get() + 0x30;
    let rel = at.checked_sub(record).ok_or_else(unplaced)?;
    let mut b = [0u8; 16];
    dev.read_exact_at(&mut b, at)?;
    let mut head = [0u8; 8];
    dev.read_exact_at(&mut head, record)?;
    let usa = u64::from(u16::from_le_bytes([head[4], head[5]]));
    let usa_count = u64::from(u16::from_le_bytes([head[6], head[7]]));
    for stride in 0..usa_count.saturating_sub(1).min(64) {
        let fixup = 512 * (stride + 1) - 2;
        for i in 0..2u64 {
            let byte = fixup + i;
            if (rel..rel + 16).contains(&byte) {
                let mut real = [0u8; 1];
                dev.read_exact_at(&mut real, record + usa + 2 * (stride + 1) + i)?;
                b[(byte - rel) as usize] = real[0];
            }
        }
    }
    let data = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let valid = u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
    Ok((data == attr.value_length() && valid < data).then_some(valid))
}

/// Why a $DATA attribute's bytes cannot be read as they are stored, if so.
/// Resident data is never compressed, whatever its flag says (Windows sets
/// it on small files in a compressed folder).
fn stream_refusal(attr: &ntfs::NtfsAttribute<'_, '_>, file_encrypted: bool) -> Option<String> {
    if attr.flags().contains(NtfsAttributeFlags::COMPRESSED) && !attr.is_resident() {
        Some("NTFS compression".into())
    } else if file_encrypted || attr.flags().contains(NtfsAttributeFlags::ENCRYPTED) {
        Some("EFS encryption".into())
    } else {
        None
    }
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
