#![no_main]
//! A whole image from raw bytes: sniffing, opening (VHD or VHDX), mapping
//! and reading every extent.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vhdkit_fuzz::open_and_walk(Box::new(data.to_vec()));
});
