//! Helpers shared by the fuzz targets: walking a disk that opened, and
//! template images for the patch-based whole-image targets.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use vhdkit::disk::{Disk, ExtentState, OpenOptions};
use vhdkit::export::{ExportOptions, Target, export};
use vhdkit::io::{LogOverlay, ReadAt};

/// Opens `reader` (no parents) and, if it opens, maps it and reads every
/// extent that holds data (in bounded pieces). Errors are fine; panics,
/// hangs and huge allocations are what the fuzzer hunts.
pub fn open_and_walk(reader: Box<dyn ReadAt>) {
    let Ok(disk) = OpenOptions::new().open_reader(reader, "fuzz") else { return };
    walk(&disk);
    let _ = disk.check();
}

/// Maps a disk and reads the first and last 4 KiB of every data extent,
/// checking what it lends (`borrow_at`) against what it reads.
pub fn walk(disk: &Disk) {
    let size = disk.size();
    let Ok(extents) = disk.extents(0..size) else { return };
    let mut buf = [0u8; 4096];
    for e in extents.iter().take(4096) {
        if matches!(e.state, ExtentState::Data | ExtentState::Zero | ExtentState::Unallocated) {
            let n = e.length.min(buf.len() as u64) as usize;
            let read = disk.read_at(&mut buf[..n], e.offset);
            // Bytes the disk lends must be the bytes it reads, and it lends
            // only stored data.
            if let Ok(Some(view)) = disk.borrow_at(e.offset, n) {
                assert!(e.state == ExtentState::Data, "lent bytes of a {:?} extent", e.state);
                assert!(read.is_ok() && view == &buf[..n], "lent bytes differ from a read");
            }
            let _ = disk.read_at(&mut buf[..n], e.offset + e.length - n as u64);
        }
    }
    // A read straddling the end must fail cleanly.
    let _ = disk.read_at(&mut buf, size.saturating_sub(100));
}

/// A source cut short at `len` bytes.
struct Cut<R> {
    inner: R,
    len: u64,
}

impl<R: ReadAt> ReadAt for Cut<R> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let n = buf.len().min((self.len - offset) as usize);
        self.inner.read_at(&mut buf[..n], offset)
    }

    fn size(&self) -> u64 {
        self.len
    }
}

/// Applies the patches encoded in `data` to `template` without copying it.
/// The first byte's top bit asks for the image to be cut short at the
/// length in the next four bytes; then each patch is `[offset: u32 LE,
/// len: u8, bytes...]`, offsets wrapping at the template's size.
pub fn patched(template: &Arc<Vec<u8>>, mut data: &[u8]) -> Box<dyn ReadAt> {
    let size = template.len() as u64;
    let mut cut = size;
    if data.len() >= 5 && data[0] & 0x80 != 0 {
        cut = u64::from(u32::from_le_bytes([data[1], data[2], data[3], data[4]])) % (size + 1);
        data = &data[5..];
    }
    let mut overlay = LogOverlay::new(template.clone(), size);
    while data.len() >= 5 {
        let offset = u64::from(u32::from_le_bytes([data[0], data[1], data[2], data[3]])) % size.max(1);
        let len = usize::from(data[4]).min(data.len() - 5);
        overlay.write(offset, &data[5..5 + len]);
        data = &data[5 + len..];
    }
    Box::new(Cut { inner: overlay, len: cut })
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vhdkit-fuzz-templates-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// A small disk with data, zeros and gaps.
fn disk_bytes(size: usize, seed: u8) -> Vec<u8> {
    let mut d = vec![0u8; size];
    for (i, b) in d.iter_mut().enumerate() {
        let block = i / 65536;
        if block % 3 != 1 {
            *b = (i as u8).wrapping_mul(31).wrapping_add(seed ^ block as u8);
        }
    }
    d
}

fn write(target: Target, name: &str, bytes: Vec<u8>, block: u32, parent: Option<PathBuf>) -> (PathBuf, Vec<u8>) {
    let dir = scratch();
    let disk = OpenOptions::new().open_raw_reader(Box::new(bytes), name);
    let out = dir.join(name);
    let mut options = ExportOptions::default();
    options.block_size = Some(block);
    options.parent = parent;
    options.sync = false;
    export(&disk, &out, target, &options).expect("template export");
    let bytes = std::fs::read(&out).expect("template read");
    (out, bytes)
}

/// VHD templates: dynamic, fixed, differencing.
pub fn vhd_templates() -> &'static [Arc<Vec<u8>>] {
    static T: OnceLock<Vec<Arc<Vec<u8>>>> = OnceLock::new();
    T.get_or_init(|| {
        let (base, dynamic) = write(Target::Vhd, "base.vhd", disk_bytes(1 << 20, 1), 64 << 10, None);
        let (_, fixed) = write(Target::VhdFixed, "fixed.vhd", disk_bytes(256 << 10, 2), 64 << 10, None);
        let mut changed = disk_bytes(1 << 20, 1);
        changed[70_000..90_000].fill(9);
        changed[500_000..500_512].fill(0);
        let (_, child) = write(Target::Vhd, "child.vhd", changed, 64 << 10, Some(base));
        vec![Arc::new(dynamic), Arc::new(fixed), Arc::new(child)]
    })
}

/// VHDX templates: dynamic, fixed, differencing (with partial blocks), and
/// dirty (a log entry to replay).
pub fn vhdx_templates() -> &'static [Arc<Vec<u8>>] {
    static T: OnceLock<Vec<Arc<Vec<u8>>>> = OnceLock::new();
    T.get_or_init(|| {
        let (base, dynamic) = write(Target::Vhdx, "base.vhdx", disk_bytes(3 << 20, 3), 1 << 20, None);
        let (_, fixed) = write(Target::VhdxFixed, "fixed.vhdx", disk_bytes(2 << 20, 4), 1 << 20, None);
        let mut changed = disk_bytes(3 << 20, 3);
        changed[1_000_000..1_004_096].fill(7);
        changed[2_200_000..2_200_512].fill(0);
        let (_, child) = write(Target::Vhdx, "child.vhdx", changed, 1 << 20, Some(base));
        let dirty = make_dirty(dynamic.clone());
        vec![Arc::new(dynamic), Arc::new(fixed), Arc::new(child), Arc::new(dirty)]
    })
}

/// Gives a VHDX template a dirty log: one entry that rewrites its first BAT
/// page (marking block 1 as zero) and zeroes a range, with the LogGuid set
/// in both headers.
fn make_dirty(mut bytes: Vec<u8>) -> Vec<u8> {
    use vhdkit::format::vhdx::log::{LogWrite, build_entry};
    let mib = 1u64 << 20;
    let guid = vhdkit::Guid::from_canonical([0x5a; 16]);
    let bat = 3 * mib as usize;
    let mut page = Box::new([0u8; 4096]);
    page.copy_from_slice(&bytes[bat..bat + 4096]);
    page[8..16].copy_from_slice(&2u64.to_le_bytes());
    let flushed = (bytes.len() as u64).div_ceil(mib) * mib;
    let writes = vec![
        LogWrite::Data { file_offset: bat as u64, sector: page },
        LogWrite::Zero { file_offset: flushed - 4096, length: 4096 },
    ];
    let entry = build_entry(3, 0, guid, flushed, flushed, &writes);
    bytes[mib as usize..mib as usize + entry.len()].copy_from_slice(&entry);
    for h in [0x10000usize, 0x20000] {
        bytes[h + 48..h + 64].copy_from_slice(&guid.to_mixed_endian());
        bytes[h + 4..h + 8].fill(0);
        let crc = vhdkit::format::vhdx::crc::crc32c_zeroed(&bytes[h..h + 4096], 4..8);
        bytes[h + 4..h + 8].copy_from_slice(&crc.to_le_bytes());
    }
    bytes.resize(flushed as usize, 0);
    bytes
}

/// Decodes the fuzz input as a manifest: as it is, and sealed (the input
/// taken as `[header length u32][header JSON][body]`, wrapped in a valid
/// trailer and checksum) so the fuzzer gets past the checksum to the
/// header and record checks.
pub fn decode_manifest(data: &[u8]) {
    read_manifest(data);
    if data.len() < 4 {
        return;
    }
    let len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let Some(header) = data.get(4..4 + len) else { return };
    let body = &data[4 + len..];
    let slots = serde_json::from_slice::<serde_json::Value>(header)
        .ok()
        .and_then(|v| Some(v.get("virtual_size")?.as_u64()?.div_ceil(v.get("chunk_size")?.as_u64()?.max(1))))
        .unwrap_or(0);
    let mut file = b"VKMANIF1".to_vec();
    file.extend_from_slice(&(len as u32).to_le_bytes());
    file.extend_from_slice(header);
    file.extend_from_slice(body);
    let hash = blake3::hash(&file);
    file.extend_from_slice(b"VKMEND01");
    file.extend_from_slice(&slots.to_le_bytes());
    file.extend_from_slice(&0u64.to_le_bytes());
    file.extend_from_slice(hash.as_bytes());
    read_manifest(&file);
}

fn read_manifest(file: &[u8]) {
    // The id the manifest claims, so the reader finds "its" file.
    let id = file
        .get(12..)
        .and_then(|h| {
            let len = u32::from_le_bytes(file.get(8..12)?.try_into().ok()?) as usize;
            serde_json::from_slice::<serde_json::Value>(h.get(..len)?).ok()
        })
        .and_then(|v| v.get("id")?.as_str()?.parse::<vhdkit::store::BackupId>().ok())
        .unwrap_or_else(|| "x".parse().expect("a valid id"));
    // The input as the manifest of the id it claims, in an otherwise empty store.
    let backend = vhdkit::store::MemoryBackend::new();
    let stored = vhdkit::store::Backend::create(&backend, &format!("manifests/{id}.manifest"))
        .and_then(|mut w| w.write(file).and_then(|()| w.commit()));
    if stored.is_err() {
        return;
    }
    let Ok(mut reader) = vhdkit::store::format::manifest::ManifestReader::open(&backend, &id) else { return };
    let mut runs = 0u32;
    while let Ok(Some(_)) = reader.next_run() {
        runs += 1;
        if runs > 1_000_000 {
            break;
        }
    }
}
