//! Windows disks and volumes named as devices (`\\.\PhysicalDrive2`,
//! `\\.\E:`, `\\?\Volume{GUID}`): their length (a device's metadata says
//! nothing), their sector size, and the lock a volume must be under
//! before it is written. Reads of such a device need none of this but the
//! length; an in-place restore needs all of it.

use std::fs::File;
use std::io;
use std::os::windows::io::AsRawHandle;
use std::path::Path;

use windows_sys::Win32::System::IO::DeviceIoControl;
use windows_sys::Win32::System::Ioctl::{
    DISK_GEOMETRY, FSCTL_DISMOUNT_VOLUME, FSCTL_LOCK_VOLUME, GET_LENGTH_INFORMATION, IOCTL_DISK_GET_DRIVE_GEOMETRY,
    IOCTL_DISK_GET_LENGTH_INFO,
};

/// Whether `path` names a device rather than a file: `\\.\...` or a volume
/// GUID path without a file under it.
pub(crate) fn is_device_path(path: &Path) -> bool {
    let Some(s) = path.to_str() else { return false };
    let s = s.replace('/', "\\");
    s.starts_with("\\\\.\\") || (s.starts_with("\\\\?\\Volume{") && s.trim_end_matches('\\').ends_with('}'))
}

/// Whether `path` names a volume (which a mounted file system may be
/// using), not a whole disk.
pub(crate) fn is_volume_path(path: &Path) -> bool {
    let Some(s) = path.to_str() else { return false };
    let s = s.replace('/', "\\");
    let rest = s.strip_prefix("\\\\.\\").unwrap_or("");
    (rest.len() == 2 && rest.as_bytes()[0].is_ascii_alphabetic() && rest.as_bytes()[1] == b':')
        || s.starts_with("\\\\?\\Volume{")
}

/// Sends `code` with no input, filling `out`.
fn ioctl<T>(file: &File, code: u32, out: &mut T) -> io::Result<()> {
    let mut got = 0u32;
    // SAFETY: a live handle, no input, and an output buffer of T's size.
    let ok = unsafe {
        DeviceIoControl(
            file.as_raw_handle(),
            code,
            std::ptr::null(),
            0,
            (out as *mut T).cast(),
            size_of::<T>() as u32,
            &mut got,
            std::ptr::null_mut(),
        )
    };
    if ok == 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// The device's length in bytes.
pub(crate) fn length(file: &File) -> io::Result<u64> {
    let mut info = GET_LENGTH_INFORMATION { Length: 0 };
    ioctl(file, IOCTL_DISK_GET_LENGTH_INFO, &mut info)?;
    u64::try_from(info.Length).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "negative device length"))
}

/// The device's logical sector size (512 when it does not say).
pub(crate) fn sector_size(file: &File) -> u32 {
    // SAFETY: DISK_GEOMETRY is plain data; all zeros is a valid value.
    let mut g: DISK_GEOMETRY = unsafe { std::mem::zeroed() };
    match ioctl(file, IOCTL_DISK_GET_DRIVE_GEOMETRY, &mut g) {
        Ok(()) if g.BytesPerSector.is_power_of_two() && g.BytesPerSector >= 512 => g.BytesPerSector,
        _ => 512,
    }
}

/// Locks and dismounts a volume for writing; the lock holds until `file`
/// is closed. A volume in use (a mounted file system with open files, the
/// system volume) refuses: that is an error naming it, never a write under
/// a live file system.
pub(crate) fn lock_volume(file: &File, path: &Path) -> io::Result<()> {
    let mut none = 0u8;
    ioctl(file, FSCTL_LOCK_VOLUME, &mut none).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "{} is a mounted volume in use and cannot be locked for an in-place restore \
                 (close what uses it, or take it offline): {e}",
                path.display()
            ),
        )
    })?;
    ioctl(file, FSCTL_DISMOUNT_VOLUME, &mut none)
}

/// A buffer aligned to `align` (a power of two), for writes to a device
/// opened without the cache, whose transfers must start at an aligned
/// address.
pub(crate) struct Aligned {
    bytes: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    pub(crate) fn new(len: usize, align: usize) -> Aligned {
        let bytes = vec![0u8; len + align];
        let start = bytes.as_ptr().align_offset(align).min(align);
        Aligned { bytes, start, len }
    }

    /// `data` copied into the aligned buffer (at most its length).
    pub(crate) fn fill(&mut self, data: &[u8]) -> &[u8] {
        let n = data.len().min(self.len);
        self.bytes[self.start..self.start + n].copy_from_slice(&data[..n]);
        &self.bytes[self.start..self.start + n]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_and_volume_paths_are_told_apart() {
        assert!(is_device_path(Path::new(r"\\.\PhysicalDrive2")));
        assert!(is_device_path(Path::new(r"\\.\E:")));
        assert!(is_device_path(Path::new(r"\\?\Volume{0b3d5c3e-1111-2222-3333-444455556666}\")));
        assert!(!is_device_path(Path::new(r"\\?\Volume{0b3d5c3e-1111-2222-3333-444455556666}\vms\a.vhdx")));
        assert!(!is_device_path(Path::new(r"C:\VMs\disk.raw")));
        assert!(is_volume_path(Path::new(r"\\.\E:")));
        assert!(!is_volume_path(Path::new(r"\\.\PhysicalDrive2")));
        let mut a = Aligned::new(8192, 4096);
        assert_eq!(a.fill(&[7u8; 5000]).as_ptr() as usize % 4096, 0);
    }
}
