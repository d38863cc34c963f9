//! The base of a differencing child being written: opened, checked against
//! the source, and described the way locators store it.

use std::path::{Component, Path, PathBuf};

use super::ExportError;
use crate::disk::{Disk, ImageFormat, OpenOptions, VirtualDisk};
use crate::format::Guid;

/// A parent for a child about to be written.
pub(crate) struct ParentRef {
    pub(crate) disk: Disk,
    /// What the child links to: VHDX DataWriteGuid, VHD unique id.
    pub(crate) identity: Guid,
    /// Path relative to the child's folder, with Windows separators (`.\x.vhd`, `..\a\x.vhdx`).
    pub(crate) relative: String,
    /// Absolute path, with Windows separators.
    pub(crate) absolute: String,
    /// The file name.
    pub(crate) name: String,
    /// The parent file's modification time, seconds since 2000-01-01 UTC.
    pub(crate) vhd_timestamp: u32,
}

impl ParentRef {
    /// Opens `path` as the parent of a `format` child `out` with the same
    /// geometry as `source`.
    pub(crate) fn open(
        path: &Path,
        out: &Path,
        format: ImageFormat,
        source: &dyn VirtualDisk,
        options: &OpenOptions,
    ) -> crate::Result<ParentRef> {
        let disk = options.open(path)?;
        let (p, s) = (disk.info(), source.info());
        if p.format != format {
            return Err(ExportError::Invalid(format!(
                "a {format:?} child needs a {format:?} parent; {} is {:?}",
                path.display(),
                p.format
            ))
            .into());
        }
        if p.virtual_size != s.virtual_size {
            return Err(ExportError::Invalid(format!(
                "the parent {} holds {} bytes but the source holds {}: a child has its parent's size",
                path.display(),
                p.virtual_size,
                s.virtual_size
            ))
            .into());
        }
        if format == ImageFormat::Vhdx && p.logical_sector_size != s.logical_sector_size {
            return Err(ExportError::Invalid(format!(
                "the parent has {}-byte sectors and the source {}-byte ones",
                p.logical_sector_size, s.logical_sector_size
            ))
            .into());
        }
        let abs = absolute(path)?;
        let out_dir = absolute(out)?.parent().map(Path::to_path_buf).unwrap_or_default();
        let relative = relative_path(&out_dir, &abs);
        let name = abs.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let vhd_timestamp = std::fs::metadata(&abs)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs().saturating_sub(crate::format::vhd::VHD_EPOCH_UNIX) as u32)
            .unwrap_or(0);
        Ok(ParentRef {
            identity: p.identity,
            relative: windows_separators(&relative),
            absolute: windows_separators(&abs),
            name,
            vhd_timestamp,
            disk,
        })
    }
}

fn absolute(p: &Path) -> crate::Result<PathBuf> {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|source| ExportError::Io { path: p.to_path_buf(), action: "find the current folder", source })?
            .join(p)
    };
    // Lexical clean-up: the output may not exist yet, so no canonicalize.
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

/// `to` relative to the folder `from` (both absolute and clean).
fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let a: Vec<_> = from.components().collect();
    let b: Vec<_> = to.components().collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::from(".");
    for _ in common..a.len() {
        out.push("..");
    }
    for c in &b[common..] {
        out.push(c);
    }
    out
}

fn windows_separators(p: &Path) -> String {
    p.to_string_lossy().replace('/', "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_climb_and_descend() {
        assert_eq!(relative_path(Path::new("/a/b"), Path::new("/a/b/x.vhd")), PathBuf::from("./x.vhd"));
        assert_eq!(relative_path(Path::new("/a/b"), Path::new("/a/c/x.vhd")), PathBuf::from("./../c/x.vhd"));
        assert_eq!(
            windows_separators(&relative_path(Path::new("/a/b/c"), Path::new("/x.vhdx"))),
            ".\\..\\..\\..\\x.vhdx"
        );
    }
}
