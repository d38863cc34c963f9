#![no_main]
//! VHD parent locator entries and their path blobs, every platform code.
use libfuzzer_sys::fuzz_target;
use vhdkit::format::Structure;
use vhdkit::format::vhd::{LocatorEntry, Platform, decode_locator_path};

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = LocatorEntry::decode(data, 576) {
        let _ = e.validate(576, data.len() as u64);
        let _ = e.platform();
    }
    let blob = data.get(24..).unwrap_or(&[]);
    for p in [
        Platform::WindowsRelative,
        Platform::WindowsAbsolute,
        Platform::LegacyRelative,
        Platform::LegacyAbsolute,
        Platform::MacFileUrl,
        Platform::MacAlias,
    ] {
        let _ = decode_locator_path(p, blob);
    }
});
