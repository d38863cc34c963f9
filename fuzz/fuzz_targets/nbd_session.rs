//! A whole NBD session from the client's bytes: handshake options, then
//! requests, against a small read-only export. The server must reply or
//! close, never panic, and never reply without bound.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use vhdkit::VirtualDisk;
use vhdkit::disk::OpenOptions;
use vhdkit::nbd::{Export, fuzz_session};

fn exports() -> &'static [Arc<Export>] {
    static EXPORTS: OnceLock<Vec<Arc<Export>>> = OnceLock::new();
    EXPORTS.get_or_init(|| {
        // 1 MiB: data in the first half, a hole in the second.
        let mut bytes = vec![0u8; 1 << 20];
        bytes[..1 << 19].iter_mut().enumerate().for_each(|(i, b)| *b = (i % 251) as u8);
        let disk: Arc<dyn VirtualDisk> =
            Arc::new(OpenOptions::new().open_raw_reader(Box::new(Arc::new(bytes)), "fuzz"));
        vec![Arc::new(Export::new("fuzz", disk))]
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = fuzz_session(data, exports());
});
