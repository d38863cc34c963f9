//! Inputs the fuzzers found crashes with, replayed through the same calls
//! as their fuzz target. Each must now be refused with an error (or parsed),
//! never panic; these run in debug builds, so arithmetic overflow panics.

use vhdkit::store::format::pack::{PACK_HEADER, TRAILER, decode_pack_index, decode_trailer};

/// store_pack, 2026-11-23: a trailer whose index offset is 30 bytes short of
/// 2^64 with zero entries; adding the trailer's length to the index end
/// overflowed instead of failing the "does it fit the pack" check.
#[test]
fn pack_trailer_with_an_index_offset_near_u64_max() {
    let data: [u8; 36] = [
        0x30, 0x31, 0x40, 0x00, // four bytes of "records"
        b'V', b'K', b'P', b'I', b'D', b'X', b'0', b'1', // index magic
        0xe2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // index offset
        0x00, 0x00, 0x00, 0x00, // entry count
        0x00, 0x00, 0x00, 0x38, // index CRC
        b'V', b'K', b'P', b'E', b'N', b'D', b'0', b'1', // end magic
    ];
    let err = decode_trailer(&data[data.len() - TRAILER..], data.len() as u64).unwrap_err();
    assert!(err.reason.contains("does not fit"), "{err}");
}

/// The same check holds at the edges that are valid: an empty index right
/// after the header decodes, one byte further does not.
#[test]
fn pack_trailer_fit_is_exact() {
    let header = PACK_HEADER;
    let trailer = |offset: u64| {
        let mut t = Vec::new();
        t.extend_from_slice(b"VKPIDX01");
        t.extend_from_slice(&offset.to_le_bytes());
        t.extend_from_slice(&0u32.to_le_bytes());
        t.extend_from_slice(&crc32c::crc32c(&[]).to_le_bytes());
        t.extend_from_slice(b"VKPEND01");
        t
    };
    let len = header + TRAILER as u64;
    let t = decode_trailer(&trailer(header), len).unwrap();
    assert!(decode_pack_index(&[], &t, &vhdkit::store::crypto::Crypt::Plain, "packs/00/x.pack").unwrap().is_empty());
    assert!(decode_trailer(&trailer(header + 1), len).is_err());
    assert!(decode_trailer(&trailer(u64::MAX), len).is_err());
}

/// Review finding: a sealed pack index's length was bounded below but not
/// above, so a trailer naming one entry before 64 MiB of "index" made every
/// reader of the pack (verify with or without the key, reindex) allocate
/// the 64 MiB. The index may be no larger than the envelope of its entries.
#[test]
fn a_sealed_pack_index_is_no_larger_than_its_count_allows() {
    let trailer = |offset: u64, count: u32| {
        let mut t = Vec::new();
        t.extend_from_slice(b"VKPIDXS1");
        t.extend_from_slice(&offset.to_le_bytes());
        t.extend_from_slice(&count.to_le_bytes());
        t.extend_from_slice(&0u32.to_le_bytes());
        t.extend_from_slice(b"VKPEND01");
        t
    };
    // One 52-byte record after the header, then the index.
    let offset = PACK_HEADER + 52;
    let fitting = vhdkit::store::crypto::envelope::max_sealed_len(44);
    let len = offset + fitting + TRAILER as u64;
    assert!(decode_trailer(&trailer(offset, 1), len).is_ok());
    let err = decode_trailer(&trailer(offset, 1), len + 1).unwrap_err();
    assert!(err.reason.contains("does not fit"), "{err}");
    let err = decode_trailer(&trailer(offset, 1), offset + (64 << 20) + TRAILER as u64).unwrap_err();
    assert!(err.reason.contains("does not fit"), "{err}");
}
