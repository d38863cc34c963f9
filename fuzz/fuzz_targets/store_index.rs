#![no_main]
//! Index files: signature, count against length, checksum, order.
use libfuzzer_sys::fuzz_target;
use vhdkit::store::format::index_file::decode_index;

fuzz_target!(|data: &[u8]| {
    let _ = decode_index(data);
    // With a valid checksum, so the fuzzer reaches the entry checks.
    if data.len() >= 16 {
        let mut sealed = data.to_vec();
        sealed.extend_from_slice(blake3::hash(data).as_bytes());
        let _ = decode_index(&sealed);
    }
});
