#![no_main]
//! The VHD dynamic header: decode, checksum, limits, parent name.
use libfuzzer_sys::fuzz_target;
use vhdkit::format::Structure;
use vhdkit::format::vhd::{DynamicHeader, verify_dynamic_header_checksum};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = DynamicHeader::decode(data, 512) {
        let _ = verify_dynamic_header_checksum(data, 512);
        let _ = h.validate(512);
        let _ = (h.parent_name(), h.bitmap_size());
        for (i, e) in h.parent_locators.iter().enumerate() {
            let _ = e.validate(512 + 576 + 24 * i as u64, data.len() as u64);
            let _ = e.platform();
        }
        assert_eq!(DynamicHeader::decode(&h.encode(), 512).unwrap(), h);
    }
});
