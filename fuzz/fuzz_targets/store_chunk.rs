#![no_main]
//! Chunk records: header, CRC, zstd decompression, length and BLAKE3 checks.
use libfuzzer_sys::fuzz_target;
use vhdkit::store::chunk::{ChunkId, decode_header, decode_record};

fuzz_target!(|data: &[u8]| {
    let Ok(h) = decode_header(data) else { return };
    let mut out = Vec::new();
    let _ = decode_record(data, h.id, &mut out);
    let _ = decode_record(data, ChunkId::of(data), &mut out);
});
