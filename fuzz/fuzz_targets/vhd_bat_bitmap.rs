#![no_main]
//! The VHD BAT and sector bitmaps: table decoding, block placement checks,
//! and bit runs in both orders.
use libfuzzer_sys::fuzz_target;
use vhdkit::format::bits::{BitOrder, run_at};
use vhdkit::format::vhd::Bat;
use vhdkit::format::vhd::bitmap::bitmap_size;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let count = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let block_size = 1u32 << (9 + data[4] % 23);
    let rest = &data[8..];
    if let Ok(bat) = Bat::parse(rest, count, 1536) {
        let bitmap = bitmap_size(block_size);
        let blocks = u64::from(count);
        let _ = bat.validate(blocks, bitmap, |_| u64::from(block_size), rest.len() as u64 * 4096, 1536);
        for i in 0..blocks.min(64) {
            let _ = bat.locate(i, bitmap);
        }
        let _ = bat.allocated(blocks);
    }
    let start = u64::from(data[5]) * 3;
    let max = u64::from(data[6]) * 97;
    for order in [BitOrder::MsbFirst, BitOrder::LsbFirst] {
        let (_, len) = run_at(rest, order, start, max);
        assert!(len <= max && (max == 0 || len >= 1));
    }
});
