//! Every on-disk structure round-trips through its binrw definition: any
//! bytes that carry the structure's signature decode, and encode back to
//! exactly those bytes (so decode∘encode and encode∘decode are identities),
//! plus structure-level round trips for the variable-size ones.

use proptest::prelude::*;
use vhdkit::Guid;
use vhdkit::format::Structure;
use vhdkit::format::vhd;
use vhdkit::format::vhdx::{self, log::LogWrite};

/// Random bytes of `T::SIZE` with `T`'s signature in front.
fn bytes_for<T: Structure>(seed: Vec<u8>) -> Vec<u8> {
    let mut b = seed;
    b.resize(T::SIZE, 0);
    b[..T::MAGIC.len()].copy_from_slice(T::MAGIC.as_bytes());
    b
}

fn round_trip<T: Structure + PartialEq + std::fmt::Debug>(seed: Vec<u8>) -> Result<(), TestCaseError> {
    let bytes = bytes_for::<T>(seed);
    let value = T::decode(&bytes, 0).map_err(|e| TestCaseError::fail(format!("{}: {e}", T::NAME)))?;
    let again = value.encode();
    prop_assert_eq!(&again, &bytes, "{} re-encodes differently", T::NAME);
    prop_assert_eq!(T::decode(&again, 0).unwrap(), value);
    Ok(())
}

fn seed(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), max..=max)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn vhd_footer(s in seed(512)) { round_trip::<vhd::Footer>(s)?; }
    #[test]
    fn vhd_dynamic_header(s in seed(1024)) { round_trip::<vhd::DynamicHeader>(s)?; }
    #[test]
    fn vhd_bat_entry(s in seed(4)) { round_trip::<vhd::BatEntry>(s)?; }
    #[test]
    fn vhd_locator_entry(s in seed(24)) { round_trip::<vhd::LocatorEntry>(s)?; }
    #[test]
    fn vhdx_file_identifier(s in seed(520)) { round_trip::<vhdx::FileIdentifier>(s)?; }
    #[test]
    fn vhdx_header(s in seed(4096)) { round_trip::<vhdx::Header>(s)?; }
    #[test]
    fn vhdx_region_table_header(s in seed(16)) { round_trip::<vhdx::region::RegionTableHeader>(s)?; }
    #[test]
    fn vhdx_region_entry(s in seed(32)) { round_trip::<vhdx::region::RegionEntry>(s)?; }
    #[test]
    fn vhdx_metadata_table_header(s in seed(32)) { round_trip::<vhdx::metadata::MetadataTableHeader>(s)?; }
    #[test]
    fn vhdx_metadata_entry(s in seed(32)) { round_trip::<vhdx::metadata::MetadataEntry>(s)?; }
    #[test]
    fn vhdx_file_parameters(s in seed(8)) { round_trip::<vhdx::metadata::FileParameters>(s)?; }
    #[test]
    fn vhdx_parent_locator_header(s in seed(20)) { round_trip::<vhdx::parent_locator::ParentLocatorHeader>(s)?; }
    #[test]
    fn vhdx_key_value_entry(s in seed(12)) { round_trip::<vhdx::parent_locator::KeyValueEntry>(s)?; }
    #[test]
    fn vhdx_bat_entry(s in seed(8)) { round_trip::<vhdx::BatEntry>(s)?; }
    #[test]
    fn vhdx_log_entry_header(s in seed(64)) { round_trip::<vhdx::log::LogEntryHeader>(s)?; }
    #[test]
    fn vhdx_zero_descriptor(s in seed(32)) { round_trip::<vhdx::log::ZeroDescriptor>(s)?; }
    #[test]
    fn vhdx_data_descriptor(s in seed(32)) { round_trip::<vhdx::log::DataDescriptor>(s)?; }
    #[test]
    fn vhdx_data_sector(s in seed(4096)) { round_trip::<vhdx::log::DataSector>(s)?; }

    #[test]
    fn guids_round_trip_through_text_and_both_layouts(b in any::<[u8; 16]>()) {
        let g = Guid::from_canonical(b);
        prop_assert_eq!(g.to_string().parse::<Guid>().unwrap(), g);
        prop_assert_eq!(format!("{{{}}}", g.to_string().to_uppercase()).parse::<Guid>().unwrap(), g);
        prop_assert_eq!(Guid::from_mixed_endian(g.to_mixed_endian()), g);
    }

    #[test]
    fn vhdx_bat_entries_keep_state_and_offset(state in 0u8..8, mib in 0u64..(1 << 44)) {
        let e = vhdx::BatEntry::new(state, mib << 20);
        prop_assert_eq!(e.state_bits(), state);
        prop_assert_eq!(e.file_offset(), mib << 20);
    }

    #[test]
    fn vhdx_parent_locators_round_trip(
        pairs in prop::collection::btree_map("[a-z_0-9]{1,20}", "\\PC{1,60}", 0..8)
    ) {
        let loc = vhdx::ParentLocator { entries: pairs.into_iter().collect() };
        let bytes = loc.encode();
        prop_assert_eq!(vhdx::ParentLocator::parse(&bytes, 0).unwrap(), loc);
    }

    #[test]
    fn vhdx_log_entries_round_trip(
        seq in 1u64..u64::MAX,
        ops in prop::collection::vec((0u64..1 << 30, any::<u8>(), any::<bool>(), 1u64..64), 0..40),
        pos_sectors in 0u64..256,
    ) {
        let guid = Guid::new_random();
        let writes: Vec<LogWrite> = ops
            .iter()
            .map(|&(at, fill, zero, len)| {
                let file_offset = at / 4096 * 4096;
                if zero {
                    LogWrite::Zero { file_offset, length: len * 4096 }
                } else {
                    let mut sector = Box::new([fill; 4096]);
                    sector[0] = fill.wrapping_add(1);
                    sector[4095] = fill.wrapping_add(2);
                    LogWrite::Data { file_offset, sector }
                }
            })
            .collect();
        let pos = pos_sectors * 4096;
        let entry = vhdx::log::build_entry(seq, pos as u32, guid, 1 << 20, 1 << 20, &writes);
        // Place it anywhere in a 1 MiB ring, wrapping if it must.
        let ring = 1usize << 20;
        let mut log = vec![0u8; ring];
        for (i, b) in entry.iter().enumerate() {
            log[(pos as usize + i) % ring] = *b;
        }
        let active = vhdx::find_active_sequence(&log, 1 << 20, guid).unwrap().unwrap();
        prop_assert_eq!(active.entries.len(), 1);
        prop_assert_eq!(active.entries[0].position, pos);
        prop_assert_eq!(active.writes().cloned().collect::<Vec<_>>(), writes);
    }
}
