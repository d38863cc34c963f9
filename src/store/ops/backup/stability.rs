//! Did the source hold still while it was read?
//!
//! A backup of a running VM's disk without a checkpoint reads a file that
//! the VM keeps writing: the backup is then of no single instant. Nothing
//! read can tell, but the files can: each image's size and modification
//! time, and a VHDX's two headers (Hyper-V rewrites one, with a higher
//! sequence number and a new DataWriteGuid, when it first writes after an
//! open), are taken before the backup reads and again before it commits.
//! A difference is reported (and with `require_stable`, refused); equal
//! snapshots are no proof of stillness (a write inside one second that
//! changes neither size nor headers escapes them), only the best a reader
//! can do without the writer's help.

use std::path::PathBuf;
use std::time::SystemTime;

use crate::VirtualDisk;
use crate::disk::ImageFormat;

/// VHDX headers: 4 KiB each, at 64 KiB and 128 KiB.
const VHDX_HEADERS: [u64; 2] = [64 << 10, 128 << 10];
const VHDX_HEADER_BYTES: usize = 4096;

/// One file of the source as it stood.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileState {
    path: PathBuf,
    size: u64,
    modified: Option<SystemTime>,
    /// A VHDX's two headers, as bytes.
    headers: Option<Vec<u8>>,
}

/// Every file of a source's chain, as it stood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SourceState {
    files: Vec<FileState>,
}

fn vhdx_headers(path: &std::path::Path) -> Option<Vec<u8>> {
    let file = crate::io::FileReader::open(path).ok()?;
    let mut out = vec![0u8; VHDX_HEADER_BYTES * VHDX_HEADERS.len()];
    for (i, at) in VHDX_HEADERS.iter().enumerate() {
        let buf = out.get_mut(i * VHDX_HEADER_BYTES..(i + 1) * VHDX_HEADER_BYTES)?;
        crate::io::ReadAt::read_exact_at(&file, buf, *at).ok()?;
    }
    Some(out)
}

impl SourceState {
    /// The state of every regular file in `disk`'s chain (a backup read
    /// back, a byte buffer or a device has none, and always holds still
    /// as far as this can tell).
    pub(super) fn take(disk: &dyn VirtualDisk) -> SourceState {
        let mut files = Vec::new();
        for info in disk.chain_info() {
            if matches!(info.format, ImageFormat::Backup) {
                continue;
            }
            let Ok(meta) = std::fs::metadata(&info.path) else { continue };
            if !meta.is_file() {
                continue;
            }
            files.push(FileState {
                path: info.path.clone(),
                size: meta.len(),
                modified: meta.modified().ok(),
                headers: matches!(info.format, ImageFormat::Vhdx).then(|| vhdx_headers(&info.path)).flatten(),
            });
        }
        SourceState { files }
    }

    /// What differs from `earlier`, one sentence per difference.
    pub(super) fn changes_since(&self, earlier: &SourceState) -> Vec<String> {
        let mut out = Vec::new();
        for (before, after) in earlier.files.iter().zip(&self.files) {
            let p = before.path.display();
            if before.size != after.size {
                out.push(format!("{p}: its size went from {} to {} bytes during the backup", before.size, after.size));
            }
            if before.modified != after.modified {
                out.push(format!("{p}: it was modified during the backup"));
            }
            if before.headers != after.headers {
                out.push(format!("{p}: its VHDX headers were rewritten during the backup (a writer opened it)"));
            }
        }
        if earlier.files.len() != self.files.len() {
            out.push("the source's chain changed during the backup".into());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_written_during_the_backup_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        let disk = crate::OpenOptions::new().open_raw(&path).unwrap();
        let before = SourceState::take(&disk);
        assert_eq!(before.files.len(), 1);
        assert!(SourceState::take(&disk).changes_since(&before).is_empty(), "nothing changed");
        let f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.set_len(2 << 20).unwrap();
        let changes = SourceState::take(&disk).changes_since(&before);
        assert!(changes.iter().any(|c| c.contains("size went from 1048576 to 2097152")), "{changes:?}");
    }
}
