//! GPT headers and entry arrays: pure parsing and CRC checks ([UEFI 2.10]
//! §5.3). Which copy to trust, and reading them, is `super`'s job.

use crate::format::Guid;

/// The largest entry array we read: 128 bytes × 32 768 entries. The
/// specification's minimum is 16 KiB; no tool writes more than a few.
pub(crate) const MAX_ENTRY_BYTES: u64 = 4 << 20;

/// The fields of a GPT header that locate and check its entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GptHeader {
    pub my_lba: u64,
    pub alternate_lba: u64,
    pub first_usable: u64,
    pub last_usable: u64,
    pub disk_guid: Guid,
    pub entries_lba: u64,
    pub entry_count: u32,
    pub entry_size: u32,
    pub entries_crc: u32,
}

impl GptHeader {
    /// Bytes of the entry array.
    pub fn entry_bytes(&self) -> u64 {
        u64::from(self.entry_count) * u64::from(self.entry_size)
    }
}

/// One used entry of the array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GptEntry {
    /// Its slot in the array, from 0.
    pub index: u32,
    pub type_guid: Guid,
    pub unique_guid: Guid,
    /// First and last sector, inclusive.
    pub first_lba: u64,
    pub last_lba: u64,
    pub attributes: u64,
    pub name: String,
}

/// Parses and checks the header in `sector` (the whole logical sector).
pub(crate) fn parse_header(sector: &[u8]) -> Result<GptHeader, String> {
    if sector.len() < 92 || &sector[..8] != b"EFI PART" {
        return Err("no \"EFI PART\" signature".into());
    }
    let u32_at = |o: usize| u32::from_le_bytes(sector[o..o + 4].try_into().unwrap_or_default());
    let u64_at = |o: usize| u64::from_le_bytes(sector[o..o + 8].try_into().unwrap_or_default());
    let size = u32_at(12) as usize;
    if !(92..=sector.len()).contains(&size) {
        return Err(format!("header size {size} outside 92..={}", sector.len()));
    }
    let mut copy = sector[..size].to_vec();
    copy[16..20].fill(0);
    let crc = crc32fast::hash(&copy);
    if crc != u32_at(16) {
        return Err(format!("header CRC32 {:#010x}, computed {crc:#010x}", u32_at(16)));
    }
    let entry_size = u32_at(84);
    if entry_size < 128 || entry_size % 128 != 0 || !entry_size.is_power_of_two() {
        return Err(format!("entry size {entry_size} is not 128 × a power of two"));
    }
    let header = GptHeader {
        my_lba: u64_at(24),
        alternate_lba: u64_at(32),
        first_usable: u64_at(40),
        last_usable: u64_at(48),
        disk_guid: Guid::from_mixed_endian(sector[56..72].try_into().unwrap_or_default()),
        entries_lba: u64_at(72),
        entry_count: u32_at(80),
        entry_size,
        entries_crc: u32_at(88),
    };
    if header.entry_bytes() > MAX_ENTRY_BYTES {
        return Err(format!("{} entries of {entry_size} bytes: more than {MAX_ENTRY_BYTES} bytes", header.entry_count));
    }
    if header.first_usable > header.last_usable {
        return Err(format!("first usable sector {} after the last, {}", header.first_usable, header.last_usable));
    }
    Ok(header)
}

/// The used entries of `bytes` (the array `header` describes), after its CRC.
pub(crate) fn parse_entries(header: &GptHeader, bytes: &[u8]) -> Result<Vec<GptEntry>, String> {
    if bytes.len() as u64 != header.entry_bytes() {
        return Err(format!("{} bytes of entries, the header says {}", bytes.len(), header.entry_bytes()));
    }
    let crc = crc32fast::hash(bytes);
    if crc != header.entries_crc {
        return Err(format!("entry array CRC32 {:#010x}, computed {crc:#010x}", header.entries_crc));
    }
    let mut out = Vec::new();
    for (index, e) in bytes.chunks_exact(header.entry_size as usize).enumerate() {
        let type_guid = Guid::from_mixed_endian(e[0..16].try_into().unwrap_or_default());
        if type_guid.is_nil() {
            continue;
        }
        let u64_at = |o: usize| u64::from_le_bytes(e[o..o + 8].try_into().unwrap_or_default());
        let (first_lba, last_lba) = (u64_at(32), u64_at(40));
        if first_lba > last_lba {
            return Err(format!("entry {}: first sector {first_lba} after its last, {last_lba}", index + 1));
        }
        let units: Vec<u16> = e[56..128].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        let end = units.iter().position(|&u| u == 0).unwrap_or(units.len());
        out.push(GptEntry {
            index: index as u32,
            type_guid,
            unique_guid: Guid::from_mixed_endian(e[16..32].try_into().unwrap_or_default()),
            first_lba,
            last_lba,
            attributes: u64_at(48),
            name: String::from_utf16_lossy(&units[..end]),
        });
    }
    Ok(out)
}

/// A well-known partition type's name, for listings.
pub(crate) fn type_name(guid: &Guid) -> Option<&'static str> {
    Some(match guid.to_string().to_ascii_lowercase().as_str() {
        "c12a7328-f81f-11d2-ba4b-00a0c93ec93b" => "EFI system",
        "e3c9e316-0b5c-4db8-817d-f92df00215ae" => "Microsoft reserved",
        "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7" => "Microsoft basic data",
        "de94bba4-06d1-4d40-a16a-bfd50179d6ac" => "Windows recovery",
        "5808c8aa-7e8f-42e0-85d2-e1e90434cfb3" => "Windows LDM metadata",
        "af9b60a0-1431-4f62-bc68-3311714a69ad" => "Windows LDM data",
        "e75caf8f-f680-4cee-afa3-b001e56efc2d" => "Storage Spaces",
        "0fc63daf-8483-4772-8e79-3d69d8477de4" => "Linux file system",
        "e6d6d379-f507-44c2-a23c-238f2a3df928" => "Linux LVM",
        "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f" => "Linux swap",
        "a19d880f-05fc-4d3b-a006-743f0f84911e" => "Linux RAID",
        "21686148-6449-6e6f-744e-656564454649" => "BIOS boot",
        _ => return None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A header and entry array as a tool writes them, for tests here and
    /// in `super`.
    pub(crate) fn build(
        sector: usize,
        my_lba: u64,
        alt: u64,
        entries_lba: u64,
        parts: &[(u64, u64, &str)],
    ) -> (Vec<u8>, Vec<u8>) {
        let mut array = vec![0u8; 128 * 128];
        for (i, &(first, last, name)) in parts.iter().enumerate() {
            let e = &mut array[i * 128..(i + 1) * 128];
            e[0..16].copy_from_slice(&[
                0xA2, 0xA0, 0xD0, 0xEB, 0xE5, 0xB9, 0x33, 0x44, 0x87, 0xC0, 0x68, 0xB6, 0xB7, 0x26, 0x99, 0xC7,
            ]);
            e[16] = i as u8 + 1;
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
            for (j, u) in name.encode_utf16().enumerate() {
                e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
            }
        }
        let mut h = vec![0u8; sector];
        h[..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&my_lba.to_le_bytes());
        h[32..40].copy_from_slice(&alt.to_le_bytes());
        h[40..48].copy_from_slice(&34u64.to_le_bytes());
        h[48..56].copy_from_slice(&(my_lba.max(alt).saturating_sub(33)).to_le_bytes());
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&crc32fast::hash(&array).to_le_bytes());
        let crc = crc32fast::hash(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        (h, array)
    }

    #[test]
    fn a_built_table_parses_and_names_its_type() {
        let (h, a) = build(512, 1, 1000, 2, &[(34, 99, "data"), (100, 199, "Ünïcode")]);
        let header = parse_header(&h).unwrap();
        assert_eq!((header.my_lba, header.alternate_lba, header.entries_lba), (1, 1000, 2));
        let entries = parse_entries(&header, &a).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!((entries[1].index, entries[1].first_lba, entries[1].last_lba), (1, 100, 199));
        assert_eq!(entries[1].name, "Ünïcode");
        assert_eq!(type_name(&entries[0].type_guid), Some("Microsoft basic data"));
    }

    #[test]
    fn every_damage_is_refused_with_its_reason() {
        let (mut h, mut a) = build(512, 1, 1000, 2, &[(34, 99, "data")]);
        let header = parse_header(&h).unwrap();
        a[40] ^= 1;
        assert!(parse_entries(&header, &a).unwrap_err().contains("entry array CRC32"));
        assert!(parse_entries(&header, &a[..128]).unwrap_err().contains("bytes of entries"));
        h[30] ^= 1;
        assert!(parse_header(&h).unwrap_err().contains("header CRC32"));
        h[0] = b'X';
        assert!(parse_header(&h).unwrap_err().contains("signature"));
        let (mut big, _) = build(512, 1, 1000, 2, &[]);
        big[80..84].copy_from_slice(&u32::MAX.to_le_bytes());
        big[16..20].fill(0);
        let crc = crc32fast::hash(&big[..92]);
        big[16..20].copy_from_slice(&crc.to_le_bytes());
        assert!(parse_header(&big).unwrap_err().contains("more than"));
    }
}
