#![no_main]
//! Pack trailers and pack indexes (plain and sealed), and reading every
//! record they name.
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use vhdkit::store::crypto::{Crypt, Keys};
use vhdkit::store::format::pack::{TRAILER, decode_pack_index, decode_trailer};
use vhdkit::store::format::record::decode_record;

fn crypts() -> &'static [Crypt; 2] {
    static C: OnceLock<[Crypt; 2]> = OnceLock::new();
    C.get_or_init(|| [Crypt::Plain, Crypt::Sealed(Arc::new(Keys::for_tests(1)))])
}

fuzz_target!(|data: &[u8]| {
    if data.len() < TRAILER {
        return;
    }
    let len = data.len() as u64;
    let Ok(t) = decode_trailer(&data[data.len() - TRAILER..], len) else { return };
    let index = &data[t.index_offset as usize..data.len() - TRAILER];
    for crypt in crypts() {
        let Ok(entries) = decode_pack_index(index, &t, crypt, "packs/00/00.pack") else { continue };
        let mut plain = Vec::new();
        for e in entries.iter().take(64) {
            let record = &data[e.offset as usize..(e.offset + u64::from(e.length)) as usize];
            let _ = decode_record(record, e.id, &mut plain, crypt);
        }
    }
});
