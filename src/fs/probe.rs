//! What file system a volume holds, from its first 4 KiB: pure.

use super::FsKind;

/// How many bytes [`probe`] wants (fewer if the volume is shorter).
pub(crate) const PROBE_BYTES: usize = 4096;

/// The file system whose signature `head` (the volume's first bytes)
/// carries, if any; kinds this crate cannot read come back as
/// [`FsKind::Unreadable`] with their name.
pub(crate) fn probe(head: &[u8]) -> Option<FsKind> {
    let at = |o: usize, sig: &[u8]| head.get(o..o + sig.len()) == Some(sig);
    if at(3, b"NTFS    ") {
        return Some(FsKind::Ntfs);
    }
    if at(3, b"-FVE-FS-") {
        return Some(FsKind::Unreadable("BitLocker"));
    }
    if at(3, b"EXFAT   ") {
        return Some(FsKind::Unreadable("exFAT"));
    }
    if at(3, b"ReFS\0\0\0\0") {
        return Some(FsKind::Unreadable("ReFS"));
    }
    if at(0, b"XFSB") {
        return Some(FsKind::Unreadable("XFS"));
    }
    if at(512, b"LABELONE") || at(24 + 512, b"LVM2 001") {
        return Some(FsKind::Unreadable("LVM"));
    }
    if at(1080, &[0x53, 0xEF]) {
        let u32_at = |o: usize| head.get(o..o + 4).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let (compat, incompat) = (u32_at(1024 + 0x5C), u32_at(1024 + 0x60));
        let version = if incompat & (0x40 | 0x80 | 0x200) != 0 {
            4
        } else if compat & 0x4 != 0 {
            3
        } else {
            2
        };
        return Some(FsKind::Ext { version });
    }
    fat_bits(head).map(|bits| FsKind::Fat { bits })
}

/// FAT12, 16 or 32, from a sound BPB (Microsoft's FAT specification: the
/// type follows from the count of clusters alone).
fn fat_bits(b: &[u8]) -> Option<u8> {
    if b.len() < 512 || !(b[0] == 0xEB || b[0] == 0xE9) {
        return None;
    }
    let u16_at = |o: usize| u64::from(u16::from_le_bytes([b[o], b[o + 1]]));
    let u32_at = |o: usize| u64::from(u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]));
    let bps = u16_at(11);
    let spc = u64::from(b[13]);
    let reserved = u16_at(14);
    let fats = u64::from(b[16]);
    let root_entries = u16_at(17);
    let total = if u16_at(19) != 0 { u16_at(19) } else { u32_at(32) };
    let fat_size = if u16_at(22) != 0 { u16_at(22) } else { u32_at(36) };
    let media = b[21];
    let sound = matches!(bps, 512 | 1024 | 2048 | 4096)
        && spc.is_power_of_two()
        && spc <= 128
        && reserved >= 1
        && (1..=4).contains(&fats)
        && (media == 0xF0 || media >= 0xF8)
        && fat_size > 0
        && total > 0;
    if !sound {
        return None;
    }
    let root_sectors = (root_entries * 32).div_ceil(bps);
    let meta = reserved + fats * fat_size + root_sectors;
    let clusters = total.checked_sub(meta)? / spc;
    Some(match clusters {
        0 => return None,
        1..4085 => 12,
        4085..65525 => 16,
        _ => 32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_told_apart() {
        let mut ntfs = vec![0u8; 4096];
        ntfs[3..11].copy_from_slice(b"NTFS    ");
        assert_eq!(probe(&ntfs), Some(FsKind::Ntfs));
        let mut ext = vec![0u8; 4096];
        ext[1080..1082].copy_from_slice(&[0x53, 0xEF]);
        ext[1024 + 0x60] = 0x40;
        assert_eq!(probe(&ext), Some(FsKind::Ext { version: 4 }));
        let mut fat = vec![0u8; 512];
        fat[0] = 0xEB;
        fat[11..13].copy_from_slice(&512u16.to_le_bytes());
        fat[13] = 8;
        fat[14] = 1;
        fat[16] = 2;
        fat[17..19].copy_from_slice(&512u16.to_le_bytes());
        fat[19..21].copy_from_slice(&20_000u16.to_le_bytes());
        fat[21] = 0xF8;
        fat[22..24].copy_from_slice(&20u16.to_le_bytes());
        assert_eq!(probe(&fat), Some(FsKind::Fat { bits: 12 }));
        fat[13] = 0;
        assert_eq!(probe(&fat), None);
        assert_eq!(probe(&[0u8; 10]), None);
    }
}
