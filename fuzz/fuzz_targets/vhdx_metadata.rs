#![no_main]
//! The VHDX metadata table and its items, including the parent locator.
use libfuzzer_sys::fuzz_target;
use vhdkit::format::FormatError;
use vhdkit::format::vhdx::{Metadata, MetadataTable, ParentLocator};

fuzz_target!(|data: &[u8]| {
    // The input is the metadata region; its table is the first 64 KiB.
    let mut region = data.to_vec();
    region.resize(region.len().max(65536), 0);
    region[..8].copy_from_slice(b"metadata");
    let len = region.len() as u64;
    if let Ok(table) = MetadataTable::parse(&region, 2 << 20, len) {
        let _ = Metadata::parse(&table, 2 << 20, |e| -> Result<Vec<u8>, FormatError> {
            let start = e.offset as usize;
            Ok(region.get(start..start + e.length as usize).map(<[u8]>::to_vec).unwrap_or_default())
        });
    }
    if let Ok(loc) = ParentLocator::parse(data, 0) {
        let _ = loc.linkage(0);
        let _ = loc.paths();
        assert_eq!(ParentLocator::parse(&loc.encode(), 0).unwrap(), loc);
    }
});
