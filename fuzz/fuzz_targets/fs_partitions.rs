#![no_main]
//! Partition tables from bytes (a disk of 512-byte sectors): MBR, EBR
//! chains, GPT with its backup. Never a panic; every partition found that
//! fits the disk lies inside it.
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vhdkit::VirtualDisk;

fuzz_target!(|data: &[u8]| {
    let disk: Arc<dyn VirtualDisk> =
        Arc::new(vhdkit::OpenOptions::default().open_raw_reader(Box::new(data.to_vec()), "fuzz"));
    if let Ok(table) = vhdkit::fs::partitions(&*disk) {
        assert!(table.partitions.len() <= 128 + 4 || table.scheme == vhdkit::fs::Scheme::Gpt);
        for p in &table.partitions {
            let fits = p.offset.checked_add(p.length).is_some_and(|e| e <= data.len() as u64);
            assert!(fits || table.warnings.iter().any(|w| w.contains(&format!("partition {} ", p.number))));
        }
    }
});
