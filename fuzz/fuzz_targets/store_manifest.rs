#![no_main]
//! Manifest decoding: header, checksum, records and run lengths, through a
//! backend holding the fuzz input as the manifest file.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vhdkit_fuzz::decode_manifest(data);
});
