#![no_main]
//! The VHDX region table: CRC, entry count limit, known and required
//! regions, placement and overlap rules.
use libfuzzer_sys::fuzz_target;
use vhdkit::format::vhdx::RegionTable;
use vhdkit::format::vhdx::crc::seal_crc;

fuzz_target!(|data: &[u8]| {
    let mut table = vec![0u8; 65536];
    let n = data.len().min(table.len());
    table[..n].copy_from_slice(&data[..n]);
    let _ = RegionTable::parse(&table, 196608);
    // Also with a valid CRC, so the fuzzer reaches the field checks.
    table[..4].copy_from_slice(b"regi");
    seal_crc(&mut table, 4..8);
    if let Ok(t) = RegionTable::parse(&table, 196608) {
        let file_size = u64::from(data.first().copied().unwrap_or(0)) << 20;
        let _ = t.regions(196608, file_size);
    }
});
