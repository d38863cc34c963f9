#![no_main]
//! The VHD footer: finding it at the end of a file, decoding, checksum, size rule.
use libfuzzer_sys::fuzz_target;
use vhdkit::format::Structure;
use vhdkit::format::vhd::{Footer, locate_footer, verify_footer_checksum};

fuzz_target!(|data: &[u8]| {
    let file_size = data.len() as u64;
    let tail = &data[data.len().saturating_sub(512)..];
    if let Ok((bytes, at)) = locate_footer(tail, file_size) {
        if let Ok(f) = Footer::decode(&bytes, at) {
            let _ = verify_footer_checksum(&bytes, at);
            let _ = f.disk_type(at);
            let _ = (f.virtual_size(), f.creator(), f.size_rule());
            assert_eq!(Footer::decode(&f.encode(), at).unwrap(), f);
        }
    }
    let _ = Footer::decode(data, 0);
});
