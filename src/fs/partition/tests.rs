use std::sync::Arc;

use super::gpt::tests::build;
use super::*;

fn disk(bytes: Vec<u8>) -> Arc<dyn VirtualDisk> {
    Arc::new(crate::disk::OpenOptions::default().open_raw_reader(Box::new(bytes), "t"))
}

fn mbr_entry(s: &mut [u8], slot: usize, ty: u8, first: u32, count: u32) {
    let e = &mut s[446 + slot * 16..446 + (slot + 1) * 16];
    e[4] = ty;
    e[8..12].copy_from_slice(&first.to_le_bytes());
    e[12..16].copy_from_slice(&count.to_le_bytes());
    s[510] = 0x55;
    s[511] = 0xAA;
}

#[test]
fn gpt_falls_back_to_the_backup_and_says_so() {
    let sectors = 400u64;
    let mut d = vec![0u8; sectors as usize * 512];
    mbr_entry(&mut d[..512], 0, 0xEE, 1, 399);
    let (h, a) = build(512, 1, sectors - 1, 2, &[(40, 99, "one"), (100, 199, "two")]);
    d[512..1024].copy_from_slice(&h);
    d[1024..1024 + a.len()].copy_from_slice(&a);
    let (bh, ba) = build(512, sectors - 1, 1, sectors - 33, &[(40, 99, "one"), (100, 199, "two")]);
    let end = d.len();
    d[end - 512..].copy_from_slice(&bh);
    d[(sectors as usize - 33) * 512..(sectors as usize - 33) * 512 + ba.len()].copy_from_slice(&ba);

    let t = partitions(&*disk(d.clone())).unwrap();
    assert_eq!(t.scheme, Scheme::Gpt);
    assert_eq!(
        t.partitions.iter().map(|p| (p.number, p.offset, p.length)).collect::<Vec<_>>(),
        [(1, 40 * 512, 60 * 512), (2, 100 * 512, 100 * 512)]
    );
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);

    d[1024 + 40] ^= 0xFF; // the primary's entries no longer match their CRC
    let t = partitions(&*disk(d.clone())).unwrap();
    assert_eq!(t.partitions.len(), 2);
    assert_eq!(t.partitions[1].name.as_deref(), Some("two"));
    assert!(t.warnings[0].contains("primary GPT") && t.warnings[0].contains("backup"), "{:?}", t.warnings);

    let end = d.len();
    d[end - 500] ^= 0xFF; // and now the backup's header too
    let e = partitions(&*disk(d)).unwrap_err();
    assert!(matches!(e, FsError::PartitionTable { what: "GPT", .. }), "{e}");
    assert!(e.to_string().contains("entry array CRC32") && e.to_string().contains("header CRC32"), "{e}");
}

#[test]
fn mbr_logical_partitions_follow_the_chain_and_a_loop_ends() {
    let mut d = vec![0u8; 2000 * 512];
    mbr_entry(&mut d[..512], 0, 0x83, 10, 90);
    mbr_entry(&mut d[..512], 1, 0x0F, 100, 1000);
    // EBR at 100: logical at 100+10, next EBR at 100+300.
    mbr_entry(&mut d[100 * 512..101 * 512], 0, 0x07, 10, 200);
    mbr_entry(&mut d[100 * 512..101 * 512], 1, 0x05, 300, 400);
    // EBR at 400: logical at 400+5, next EBR back at 100 (a loop).
    mbr_entry(&mut d[400 * 512..401 * 512], 0, 0x0C, 5, 50);
    mbr_entry(&mut d[400 * 512..401 * 512], 1, 0x05, 0, 400);
    let t = partitions(&*disk(d)).unwrap();
    assert_eq!(t.scheme, Scheme::Mbr);
    let got: Vec<_> = t.partitions.iter().map(|p| (p.number, p.offset / 512, p.length / 512, p.logical)).collect();
    assert_eq!(got, [(1, 10, 90, false), (5, 110, 200, true), (6, 405, 50, true)]);
    assert!(t.warnings.iter().any(|w| w.contains("loops")), "{:?}", t.warnings);
}

#[test]
fn a_partition_past_the_end_is_listed_with_a_warning_and_a_blank_disk_has_none() {
    let mut d = vec![0u8; 100 * 512];
    mbr_entry(&mut d[..512], 0, 0x07, 50, 1000);
    let t = partitions(&*disk(d)).unwrap();
    assert_eq!(t.partitions.len(), 1);
    assert!(t.warnings[0].contains("past the disk"), "{:?}", t.warnings);
    let t = partitions(&*disk(vec![0u8; 4096])).unwrap();
    assert_eq!((t.scheme, t.partitions.len()), (Scheme::None, 0));
    let t = partitions(&*disk(vec![0u8; 100])).unwrap();
    assert_eq!(t.partitions.len(), 0);
}
