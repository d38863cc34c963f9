#![no_main]
//! Change lists in the three trackers' JSON shapes: never a panic, and an
//! accepted list is sorted, merged and free of empty ranges.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(list) = vhdkit::store::ChangeList::from_json(data) {
        let r = list.ranges();
        assert!(r.iter().all(|x| x.start < x.end));
        assert!(r.windows(2).all(|w| w[0].end < w[1].start));
    }
});
