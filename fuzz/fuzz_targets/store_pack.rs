#![no_main]
//! Pack trailers and pack indexes, and reading every record they name.
use libfuzzer_sys::fuzz_target;
use vhdkit::store::chunk::decode_record;
use vhdkit::store::pack::{TRAILER, decode_pack_index, decode_trailer};

fuzz_target!(|data: &[u8]| {
    if data.len() < TRAILER {
        return;
    }
    let len = data.len() as u64;
    let Ok(t) = decode_trailer(&data[data.len() - TRAILER..], len) else { return };
    let index = &data[t.index_offset as usize..data.len() - TRAILER];
    let Ok(entries) = decode_pack_index(index, &t) else { return };
    let mut plain = Vec::new();
    for e in entries.iter().take(64) {
        let record = &data[e.offset as usize..(e.offset + u64::from(e.length)) as usize];
        let _ = decode_record(record, e.id, &mut plain);
    }
});
