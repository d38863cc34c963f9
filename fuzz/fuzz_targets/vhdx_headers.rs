#![no_main]
//! The VHDX file identifier and the two headers: CRCs, choice of the
//! current header, version and log placement rules.
use libfuzzer_sys::fuzz_target;
use vhdkit::format::Structure;
use vhdkit::format::vhdx::{FileIdentifier, choose_current, parse_header};

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = FileIdentifier::decode(data, 0) {
        let _ = id.creator();
    }
    let slot = |i: usize| data.get(i * 4096..).map_or(&[][..], |s| s);
    let a = parse_header(slot(0), 65536);
    let b = parse_header(slot(1), 131072);
    if let Ok(current) = choose_current([a, b]) {
        let _ = current.header.validate(65536, data.len() as u64 * 1024);
    }
});
