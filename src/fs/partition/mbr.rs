//! The MBR and its extended boot records: pure parsing of one 512-byte
//! sector at a time. Walking the chain of EBRs (I/O) is `super`'s job.

/// One of the four slots of an MBR or EBR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MbrSlot {
    /// The partition type byte.
    pub ty: u8,
    /// The boot flag (0x80).
    pub bootable: bool,
    /// First sector, relative to what the table's kind says (the disk for
    /// an MBR; the EBR or the extended partition for an EBR).
    pub first: u32,
    /// Sectors.
    pub count: u32,
}

impl MbrSlot {
    /// An extended partition's type: CHS, LBA, Linux.
    pub fn is_extended(&self) -> bool {
        matches!(self.ty, 0x05 | 0x0F | 0x85)
    }

    /// GPT's protective entry.
    pub fn is_protective(&self) -> bool {
        self.ty == 0xEE
    }
}

/// The four slots of a sector ending in the 0x55AA signature, unused ones
/// (type 0 or no sectors) as `None`; `Err` names what is wrong.
pub(crate) fn parse_table(sector: &[u8]) -> Result<[Option<MbrSlot>; 4], &'static str> {
    if sector.len() < 512 {
        return Err("shorter than a sector");
    }
    if sector[510] != 0x55 || sector[511] != 0xAA {
        return Err("no 0x55AA signature");
    }
    let mut out = [None; 4];
    for (i, slot) in out.iter_mut().enumerate() {
        let e = &sector[446 + i * 16..446 + (i + 1) * 16];
        if e[0] & 0x7F != 0 {
            return Err("a boot flag other than 0x00 or 0x80");
        }
        let ty = e[4];
        let first = u32::from_le_bytes([e[8], e[9], e[10], e[11]]);
        let count = u32::from_le_bytes([e[12], e[13], e[14], e[15]]);
        if ty != 0 && count != 0 {
            *slot = Some(MbrSlot { ty, bootable: e[0] == 0x80, first, count });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sector(entries: &[(u8, u8, u32, u32)]) -> Vec<u8> {
        let mut s = vec![0u8; 512];
        for (i, &(flag, ty, first, count)) in entries.iter().enumerate() {
            let e = &mut s[446 + i * 16..446 + (i + 1) * 16];
            e[0] = flag;
            e[4] = ty;
            e[8..12].copy_from_slice(&first.to_le_bytes());
            e[12..16].copy_from_slice(&count.to_le_bytes());
        }
        s[510] = 0x55;
        s[511] = 0xAA;
        s
    }

    #[test]
    fn slots_parse_and_empty_ones_are_none() {
        let s = sector(&[(0x80, 0x07, 2048, 4096), (0, 0x0F, 6144, 100), (0, 0, 9, 9), (0, 0x83, 1, 0)]);
        let t = parse_table(&s).unwrap();
        assert_eq!(t[0], Some(MbrSlot { ty: 7, bootable: true, first: 2048, count: 4096 }));
        assert!(t[1].unwrap().is_extended());
        assert_eq!((t[2], t[3]), (None, None));
    }

    #[test]
    fn damage_is_named() {
        let mut s = sector(&[(0x12, 0x07, 1, 1)]);
        assert_eq!(parse_table(&s), Err("a boot flag other than 0x00 or 0x80"));
        s[510] = 0;
        assert_eq!(parse_table(&s), Err("no 0x55AA signature"));
        assert_eq!(parse_table(&s[..100]), Err("shorter than a sector"));
    }
}
