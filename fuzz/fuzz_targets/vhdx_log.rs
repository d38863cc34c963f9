#![no_main]
//! The VHDX log: entries, descriptors and data sectors, finding the active
//! sequence in the ring, and replaying it into an overlay.
use libfuzzer_sys::fuzz_target;
use vhdkit::Guid;
use vhdkit::format::vhdx::{LogWrite, find_active_sequence};
use vhdkit::io::{LogOverlay, ReadAt};

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let guid = Guid::from_mixed_endian(data[..16].try_into().unwrap());
    let mut log = data[16..].to_vec();
    log.resize(log.len().div_ceil(4096).max(1) * 4096, 0);
    let Ok(Some(seq)) = find_active_sequence(&log, 1 << 20, guid) else { return };
    let size = seq.replayed_size(8 << 20);
    let mut overlay = LogOverlay::new(vec![0x11u8; 1 << 16], 1 << 16);
    for w in seq.writes() {
        match w {
            LogWrite::Data { file_offset, sector } => overlay.write(*file_offset, &sector[..]),
            LogWrite::Zero { file_offset, length } => overlay.zero(*file_offset, *length),
        }
    }
    let mut buf = [0u8; 8192];
    for at in [0, size / 2, size.saturating_sub(100), overlay.size().saturating_sub(4096)] {
        let _ = overlay.read_at(&mut buf, at);
    }
});
