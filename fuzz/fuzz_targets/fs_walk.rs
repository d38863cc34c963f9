#![no_main]
//! A whole file system from bytes: the first byte picks NTFS, ext or FAT,
//! the rest is the volume. Opening, listing every folder, reading every
//! record and the start of every file must end with entries or errors,
//! never a panic outside the reader crates (theirs are caught and become
//! errors, which is what this checks), a hang or an unbounded allocation.
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vhdkit::VirtualDisk;
use vhdkit::fs::{FsKind, Partition, Volume};

fuzz_target!(|data: &[u8]| {
    // The reader crates may panic on damage; the volume's guard turns that
    // into an error, so only the default hook's noise (and libFuzzer's
    // abort-on-panic hook) is taken away. A panic outside the guard still
    // reaches libFuzzer's catch and aborts.
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let Some((&pick, volume)) = data.split_first() else { return };
    let kind = match pick % 3 {
        0 => FsKind::Ntfs,
        1 => FsKind::Ext { version: 4 },
        _ => FsKind::Fat { bits: 16 },
    };
    let disk: Arc<dyn VirtualDisk> =
        Arc::new(vhdkit::OpenOptions::default().open_raw_reader(Box::new(volume.to_vec()), "fuzz"));
    let partition = Partition::whole(volume.len() as u64, Some(kind));
    let Ok(v) = Volume::open(disk, &partition) else { return };
    let _ = v.label();
    let mut visited = 0u32;
    let mut buf = vec![0u8; 4096];
    let _ = vhdkit::fs::walk(
        &v,
        "",
        &vhdkit::CancelToken::new(),
        &mut |path, entry| {
            visited += 1;
            if visited > 2000 {
                return Err(vhdkit::fs::FsError::Cancelled);
            }
            if entry.metadata.kind == vhdkit::fs::FileKind::File
                && let Ok(mut f) = v.open_file(path)
            {
                let _ = f.read_at(&mut buf, 0);
            }
            Ok(())
        },
        &mut |_, _| {},
    );
});
