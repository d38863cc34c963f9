#![no_main]
//! Sealed objects (envelopes): as stored, every decoder and check; as
//! plaintext, a round trip, and any one changed byte refused.
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vhdkit::store::crypto::{Keys, envelope};

fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| Keys::for_tests(9))
}

const NAME: &str = "manifests/20261204T000000.000000Z-00000000.manifest";

fuzz_target!(|data: &[u8]| {
    let keys = keys();
    // Size arithmetic on any size and segment, far past what an input can
    // be long (libFuzzer's inputs stay near 4 KiB).
    if let (Some(size), Some(segment)) = (data.get(..8), data.get(8..12)) {
        let size = u64::from_le_bytes(size.try_into().expect("8 bytes"));
        let segment = u32::from_le_bytes(segment.try_into().expect("4 bytes")).clamp(4096, 4 << 20);
        if let Some(plain) = envelope::plain_len(size, segment) {
            assert_eq!(envelope::sealed_len(plain, segment), size, "sizes do not round-trip");
        }
        if let Ok(h) = envelope::decode_header(&data[12..]) {
            if let Ok(layout) = envelope::Layout::new(h, size) {
                let n = layout.segments();
                for i in [0, n / 2, n.saturating_sub(1)] {
                    let _ = layout.segment(i);
                }
                let _ = layout.segments_for(size / 3, size / 2);
            }
        }
    }
    let _ = envelope::check(data);
    let _ = envelope::open(keys, NAME, data);
    if let Ok(layout) = envelope::decode_header(data).and_then(|h| envelope::Layout::new(h, data.len() as u64)) {
        let opener = envelope::Opener::new(keys, NAME, layout.header());
        for i in layout.segments_for(0, layout.plain_len()).take(64) {
            let at = layout.segment(i);
            if let Some(bytes) = data.get(at.offset as usize..at.offset as usize + at.len) {
                let _ = opener.open(i, &at, &mut bytes.to_vec());
            }
        }
    }
    let sealed = envelope::seal(keys, NAME, data);
    assert_eq!(envelope::open(keys, NAME, &sealed).expect("a sealed object opens"), data);
    if let (Some(&first), Some(&last)) = (data.first(), data.last()) {
        let mut changed = sealed.clone();
        let i = (usize::from(first) * 7919 + data.len()) % changed.len();
        changed[i] ^= 1 | last;
        assert!(envelope::open(keys, NAME, &changed).is_err(), "a change at byte {i} went unnoticed");
    }
});
