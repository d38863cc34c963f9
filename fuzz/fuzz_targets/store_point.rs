#![no_main]
//! Restore point objects: JSON, checksum, id, attachment chunk lists.
use libfuzzer_sys::fuzz_target;
use vhdkit::store::PointId;
use vhdkit::store::format::point::PointRecord;

fuzz_target!(|data: &[u8]| {
    // The id the object claims, so the checks past the id are reached.
    let claimed = serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .and_then(|v| v.get("id")?.as_str()?.parse::<PointId>().ok());
    let id = claimed.unwrap_or_else(|| "20260101T000000.000000Z-00000000".parse().expect("a valid id"));
    if let Ok(p) = PointRecord::decode(data, &id) {
        // What was accepted says what it is, and encodes back to itself.
        assert_eq!(p.id, id);
        let again = PointRecord::decode(&p.encode(), &id).expect("a re-encoded point decodes");
        assert_eq!(again, p);
    }
});
