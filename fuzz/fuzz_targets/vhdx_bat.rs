#![no_main]
//! The VHDX BAT: layout arithmetic for every block and sector size, state
//! and placement validation, payload and sector-bitmap lookups.
use libfuzzer_sys::fuzz_target;
use vhdkit::format::vhdx::{Bat, BatLayout};

fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let block = 1u32 << (20 + data[0] % 9);
    let sector = if data[1] & 1 == 0 { 512 } else { 4096 };
    let has_parent = data[1] & 2 != 0;
    let vsize = (u64::from_le_bytes(data[2..10].try_into().unwrap()) % (64 << 40)) / sector as u64 * sector as u64;
    if vsize == 0 {
        return;
    }
    let layout = BatLayout::new(block, sector, vsize, has_parent);
    let table = &data[12..];
    if let Ok(bat) = Bat::parse(table, layout, 3 << 20) {
        let file_size = u64::from(data[10]) << 24;
        if bat.validate(3 << 20, file_size).is_ok() {
            for b in 0..layout.payload_blocks.min(1024) {
                let _ = bat.payload(b);
            }
            for c in 0..layout.bitmap_blocks.min(16) {
                let _ = bat.bitmap_block(c);
            }
        }
    }
});
