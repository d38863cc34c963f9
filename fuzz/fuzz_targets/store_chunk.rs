#![no_main]
//! Chunk records, plain and sealed: header, CRC, authentication, zstd
//! decompression, length and (keyed) BLAKE3 checks.
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use vhdkit::store::crypto::{Crypt, Keys};
use vhdkit::store::format::record::{decode_header, decode_record};

fn crypts() -> &'static [Crypt; 3] {
    static C: OnceLock<[Crypt; 3]> = OnceLock::new();
    C.get_or_init(|| [Crypt::Plain, Crypt::Sealed(Arc::new(Keys::for_tests(1))), Crypt::Locked])
}

fuzz_target!(|data: &[u8]| {
    let Ok(h) = decode_header(data) else { return };
    let mut out = Vec::new();
    for crypt in crypts() {
        let _ = decode_record(data, h.id, &mut out, crypt);
        let _ = decode_record(data, crypt.chunk_id(data), &mut out, crypt);
    }
});
