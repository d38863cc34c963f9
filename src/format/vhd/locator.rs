//! VHD parent locators: where a differencing disk's parent may be found.
//!
//! The dynamic header holds eight 24-byte entries, each pointing at a small
//! blob elsewhere in the file. The platform code says how the blob encodes
//! the path. Windows writes `W2ku` (absolute) and `W2ru` (relative) as
//! UTF-16LE; Virtual PC for Mac wrote `MacX` (a UTF-8 file URL) and `Mac `
//! (an opaque alias record, which cannot be resolved off a Mac).

use binrw::binrw;

use crate::format::{FormatError, Result, Structure};

/// The longest locator blob read: a Windows path of 32767 UTF-16 units, plus
/// slack. Anything longer is corrupt, not a path.
pub const MAX_LOCATOR_DATA: u32 = 64 * 1024 + 512;

/// One parent locator entry as stored in the dynamic header.
#[binrw]
#[brw(big)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LocatorEntry {
    /// Four-character code, or zero for an unused entry.
    pub platform_code: [u8; 4],
    /// Space reserved for the blob: sectors per the specification, bytes as
    /// Windows writes it. Readers use `data_length`.
    pub data_space: u32,
    /// Length of the blob in bytes.
    pub data_length: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// Absolute file offset of the blob.
    pub data_offset: u64,
}

impl Structure for LocatorEntry {
    const NAME: &'static str = "VHD parent locator";
    const SIZE: usize = 24;
    const MAGIC: &'static str = "";
}

/// What a locator's blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// `W2ru`: UTF-16LE path relative to the child's folder.
    WindowsRelative,
    /// `W2ku`: UTF-16LE absolute path.
    WindowsAbsolute,
    /// `Wi2r`: deprecated 8-bit relative path.
    LegacyRelative,
    /// `Wi2k`: deprecated 8-bit absolute path.
    LegacyAbsolute,
    /// `MacX`: UTF-8 file URL.
    MacFileUrl,
    /// `Mac `: a Mac OS alias record.
    MacAlias,
}

impl LocatorEntry {
    /// Whether the slot is unused.
    pub fn is_empty(&self) -> bool {
        self.platform_code == [0; 4]
    }

    /// The platform, or `None` for an unused slot or an unknown code.
    pub fn platform(&self) -> Option<Platform> {
        Some(match &self.platform_code {
            b"W2ru" => Platform::WindowsRelative,
            b"W2ku" => Platform::WindowsAbsolute,
            b"Wi2r" => Platform::LegacyRelative,
            b"Wi2k" => Platform::LegacyAbsolute,
            b"MacX" => Platform::MacFileUrl,
            b"Mac " => Platform::MacAlias,
            _ => return None,
        })
    }

    /// Checks that the blob lies inside a file of `file_size` bytes and is of
    /// a sane length. `entry_offset` locates the entry for errors.
    pub fn validate(&self, entry_offset: u64, file_size: u64) -> Result<()> {
        if self.data_length > MAX_LOCATOR_DATA {
            return Err(FormatError::corrupt(
                "VHD parent locator",
                entry_offset + 8,
                format!("data length {} exceeds {MAX_LOCATOR_DATA}", self.data_length),
            ));
        }
        let end = self.data_offset.checked_add(u64::from(self.data_length));
        if end.is_none_or(|end| end > file_size) {
            return Err(FormatError::corrupt(
                "VHD parent locator",
                entry_offset + 16,
                format!("data at {} (+{}) lies outside the {file_size}-byte file", self.data_offset, self.data_length),
            ));
        }
        Ok(())
    }
}

/// Decodes a locator blob into a path string. Returns `None` for blobs that
/// hold no usable path (Mac aliases, empty data).
pub fn decode_locator_path(platform: Platform, data: &[u8]) -> Option<String> {
    let path = match platform {
        Platform::WindowsRelative | Platform::WindowsAbsolute => crate::format::utf16_until_nul(data, false),
        Platform::LegacyRelative | Platform::LegacyAbsolute => {
            let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
            String::from_utf8_lossy(&data[..end]).into_owned()
        }
        Platform::MacFileUrl => {
            let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
            let url = String::from_utf8_lossy(&data[..end]).into_owned();
            file_url_to_path(&url)?
        }
        Platform::MacAlias => return None,
    };
    (!path.is_empty()).then_some(path)
}

/// `file://host/p%20ath` → `/p ath`; anything else is returned as is.
fn file_url_to_path(url: &str) -> Option<String> {
    let Some(rest) = url.strip_prefix("file://") else {
        return Some(url.to_string());
    };
    let path = &rest[rest.find('/')?..];
    let mut out = Vec::with_capacity(path.len());
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf16le(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    #[test]
    fn decodes_windows_paths() {
        let rel = utf16le(".\\fat-parent.vhd");
        assert_eq!(decode_locator_path(Platform::WindowsRelative, &rel).as_deref(), Some(".\\fat-parent.vhd"));
        let mut abs = utf16le("C:\\x\\p.vhd");
        abs.extend_from_slice(&[0, 0, 0x41, 0]);
        assert_eq!(decode_locator_path(Platform::WindowsAbsolute, &abs).as_deref(), Some("C:\\x\\p.vhd"));
    }

    #[test]
    fn decodes_mac_file_urls() {
        let url = b"file://localhost/Users/me/Disk%20One.vhd";
        assert_eq!(decode_locator_path(Platform::MacFileUrl, url).as_deref(), Some("/Users/me/Disk One.vhd"));
        assert_eq!(decode_locator_path(Platform::MacAlias, b"alias"), None);
        // Only two hex digits are an escape: "%+1" stays as written.
        let url = b"file://localhost/a%+1b";
        assert_eq!(decode_locator_path(Platform::MacFileUrl, url).as_deref(), Some("/a%+1b"));
    }

    #[test]
    fn rejects_blobs_outside_the_file() {
        let e =
            LocatorEntry { platform_code: *b"W2ku", data_space: 4096, data_length: 84, reserved: 0, data_offset: 4096 };
        e.validate(600, 8192).unwrap();
        assert!(e.validate(600, 4100).is_err());
        let huge = LocatorEntry { data_length: u32::MAX, ..e };
        assert!(huge.validate(600, u64::MAX).is_err());
    }
}
