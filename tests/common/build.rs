//! Test-only image builders, written from the specifications with raw byte
//! offsets and deliberately independent of the crate's own structures and
//! writers, so a misreading shared by our reader and writer cannot hide.
//! Unwritten sectors of allocated blocks are filled with 0xEE garbage: a
//! reader that returns them instead of the parent's bytes fails loudly.

use std::collections::BTreeMap;
use std::path::Path;

pub const MIB: u64 = 1 << 20;
pub const GARBAGE: u8 = 0xEE;

/// One block of a child image.
#[derive(Debug, Clone)]
pub enum Block {
    /// Every sector present, with these bytes (block-sized).
    Full(Vec<u8>),
    /// Sectors whose flag is set hold `data` (block-sized); the rest come from the parent.
    Partial {
        present: Vec<bool>,
        data: Vec<u8>,
    },
    /// VHDX payload states that read as zeros.
    Zero,
    Unmapped,
    Undefined,
}

/// Canonical GUID text → Microsoft mixed-endian bytes.
pub fn guid_mixed(text: &str) -> [u8; 16] {
    let c = guid_canonical(text);
    [c[3], c[2], c[1], c[0], c[5], c[4], c[7], c[6], c[8], c[9], c[10], c[11], c[12], c[13], c[14], c[15]]
}

/// Canonical GUID text → bytes in text order.
pub fn guid_canonical(text: &str) -> [u8; 16] {
    let hex: String = text.trim_matches(['{', '}']).chars().filter(|c| *c != '-').collect();
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).unwrap();
    }
    out
}

/// Mixed-endian bytes → canonical text.
pub fn guid_text_from_mixed(b: &[u8]) -> String {
    let c = [b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]];
    guid_text(&c)
}

pub fn guid_text(c: &[u8]) -> String {
    let h: Vec<String> = c.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", h[..4].concat(), h[4..6].concat(), h[6..8].concat(), h[8..10].concat(), h[10..].concat())
}

/// A GUID from a seed, in canonical text.
pub fn guid_from_seed(seed: u64) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut b = [0u8; 16];
    for v in &mut b {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *v = x as u8;
    }
    guid_text(&b)
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn crc32c_with_zero_field(bytes: &mut [u8], field: usize) {
    bytes[field..field + 4].fill(0);
    let crc = crc32c::crc32c(bytes);
    bytes[field..field + 4].copy_from_slice(&crc.to_le_bytes());
}

/// What a VHDX child or base looks like.
pub struct VhdxSpec {
    pub virtual_size: u64,
    pub block_size: u64,
    pub logical_sector: u64,
    pub data_write_guid: String,
    /// (parent_linkage, parent_linkage2, relative_path, absolute_win32_path)
    pub parent: Option<(String, Option<String>, String, String)>,
    pub blocks: BTreeMap<u64, Block>,
}

/// Writes `spec` as a VHDX file ([MS-VHDX] §2).
pub fn write_vhdx(path: &Path, spec: &VhdxSpec) {
    let bs = spec.block_size;
    let ls = spec.logical_sector;
    let chunk_ratio = (1u64 << 23) * ls / bs;
    let spb = bs / ls;
    let n = spec.virtual_size.div_ceil(bs);
    let has_parent = spec.parent.is_some();
    let entries = if has_parent { n.div_ceil(chunk_ratio) * (chunk_ratio + 1) } else { n + (n - 1) / chunk_ratio };
    let bat_len = (entries * 8).div_ceil(MIB) * MIB;
    let (log_at, meta_at, bat_at) = (MIB, 2 * MIB, 3 * MIB);
    let mut next = bat_at + bat_len;
    let mut file = vec![0u8; next as usize];

    // File identifier.
    put(&mut file, 0, b"vhdxfile");
    put(&mut file, 8, &utf16le("vhdkit test builder"));
    // Headers: sequence 1 at 64 KiB, 2 at 128 KiB (the second is current).
    for (i, at) in [(1u64, 0x10000usize), (2, 0x20000)] {
        let mut h = vec![0u8; 4096];
        put(&mut h, 0, b"head");
        put(&mut h, 8, &i.to_le_bytes());
        put(&mut h, 16, &guid_mixed(&guid_from_seed(i + 77)));
        put(&mut h, 32, &guid_mixed(&spec.data_write_guid));
        put(&mut h, 66, &1u16.to_le_bytes());
        put(&mut h, 68, &(MIB as u32).to_le_bytes());
        put(&mut h, 72, &log_at.to_le_bytes());
        crc32c_with_zero_field(&mut h, 4);
        put(&mut file, at, &h);
    }
    // Region tables.
    for at in [0x30000usize, 0x40000] {
        let mut t = vec![0u8; 65536];
        put(&mut t, 0, b"regi");
        put(&mut t, 8, &2u32.to_le_bytes());
        put(&mut t, 16, &guid_mixed("2DC27766-F623-4200-9D64-115E9BFD4A08"));
        put(&mut t, 32, &bat_at.to_le_bytes());
        put(&mut t, 40, &(bat_len as u32).to_le_bytes());
        put(&mut t, 44, &1u32.to_le_bytes());
        put(&mut t, 48, &guid_mixed("8B7CA206-4790-4B9A-B8FE-575F050F886E"));
        put(&mut t, 64, &meta_at.to_le_bytes());
        put(&mut t, 72, &(MIB as u32).to_le_bytes());
        put(&mut t, 76, &1u32.to_le_bytes());
        crc32c_with_zero_field(&mut t, 4);
        put(&mut file, at, &t);
    }
    // Metadata: table then items from +64 KiB.
    let mut items: Vec<(&str, Vec<u8>, u32)> = vec![
        (
            "CAA16737-FA36-4D43-B3B6-33F0AA44E76B",
            [(bs as u32).to_le_bytes(), (if has_parent { 2u32 } else { 0 }).to_le_bytes()].concat(),
            4,
        ),
        ("2FA54224-CD1B-4876-B211-5DBED83BF4B8", spec.virtual_size.to_le_bytes().to_vec(), 6),
        ("BECA12AB-B2E6-4523-93EF-C309E000C746", guid_mixed(&guid_from_seed(5)).to_vec(), 6),
        ("8141BF1D-A96F-4709-BA47-F233A8FAAB5F", (ls as u32).to_le_bytes().to_vec(), 6),
        ("CDA348C7-445D-4471-9CC9-E9885251C556", 4096u32.to_le_bytes().to_vec(), 6),
    ];
    if let Some((linkage, linkage2, rel, abs)) = &spec.parent {
        let mut kv = vec![("parent_linkage", linkage.clone())];
        if let Some(l2) = linkage2 {
            kv.push(("parent_linkage2", l2.clone()));
        }
        for (key, value) in [("relative_path", rel), ("absolute_win32_path", abs)] {
            if !value.is_empty() {
                kv.push((key, value.clone()));
            }
        }
        let mut item = vec![0u8; 20 + 12 * kv.len()];
        put(&mut item, 0, &guid_mixed("B04AEFB7-D19E-4A81-B789-25B8E9445913"));
        put(&mut item, 18, &(kv.len() as u16).to_le_bytes());
        for (i, (k, v)) in kv.iter().enumerate() {
            let (k, v) = (utf16le(k), utf16le(v));
            let ko = item.len() as u32;
            item.extend(&k);
            let vo = item.len() as u32;
            item.extend(&v);
            let e = 20 + 12 * i;
            put(&mut item, e, &ko.to_le_bytes());
            put(&mut item, e + 4, &vo.to_le_bytes());
            put(&mut item, e + 8, &(k.len() as u16).to_le_bytes());
            put(&mut item, e + 10, &(v.len() as u16).to_le_bytes());
        }
        items.push(("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C", item, 4));
    }
    let m = meta_at as usize;
    put(&mut file, m, b"metadata");
    put(&mut file, m + 10, &(items.len() as u16).to_le_bytes());
    let mut item_at = 0x10000usize;
    for (i, (id, bytes, flags)) in items.iter().enumerate() {
        let e = m + 32 + 32 * i;
        put(&mut file, e, &guid_mixed(id));
        put(&mut file, e + 16, &(item_at as u32).to_le_bytes());
        put(&mut file, e + 20, &(bytes.len() as u32).to_le_bytes());
        put(&mut file, e + 24, &flags.to_le_bytes());
        put(&mut file, m + item_at, bytes);
        item_at += bytes.len().div_ceil(8) * 8;
    }

    // Blocks, appended 1 MiB-aligned; sector bitmaps per chunk as needed.
    let mut bat = vec![0u64; entries as usize];
    let mut bitmaps: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut data_blocks: Vec<(u64, Vec<u8>)> = Vec::new();
    for (&b, block) in &spec.blocks {
        let index = (b + b / chunk_ratio) as usize;
        let (state, bytes) = match block {
            Block::Zero => (2u64, None),
            Block::Unmapped => (3, None),
            Block::Undefined => (1, None),
            Block::Full(d) => (6, Some(d.clone())),
            Block::Partial { present, data } => {
                let chunk = b / chunk_ratio;
                let bm = bitmaps.entry(chunk).or_insert_with(|| vec![0u8; MIB as usize]);
                let mut bytes = data.clone();
                for (s, &p) in present.iter().enumerate() {
                    let bit = (b % chunk_ratio) * spb + s as u64;
                    if p {
                        bm[(bit / 8) as usize] |= 1 << (bit % 8);
                    } else {
                        bytes[s * ls as usize..(s + 1) * ls as usize].fill(GARBAGE);
                    }
                }
                (7, Some(bytes))
            }
        };
        let offset = if let Some(bytes) = bytes {
            let at = next;
            next += bs;
            data_blocks.push((at, bytes));
            at
        } else {
            0
        };
        bat[index] = offset | state;
    }
    for (&chunk, bm) in &bitmaps {
        let at = next;
        next += MIB;
        bat[(chunk * (chunk_ratio + 1) + chunk_ratio) as usize] = at | 6;
        data_blocks.push((at, bm.clone()));
    }
    for (i, e) in bat.iter().enumerate() {
        put(&mut file, bat_at as usize + i * 8, &e.to_le_bytes());
    }
    file.resize(next as usize, 0);
    for (at, bytes) in data_blocks {
        put(&mut file, at as usize, &bytes);
    }
    std::fs::write(path, file).unwrap();
}

/// What a VHD child looks like.
pub struct VhdSpec {
    pub virtual_size: u64,
    pub block_size: u64,
    pub unique_id: String,
    /// (parent unique id, relative W2ru path, absolute W2ku path, header name)
    pub parent: Option<(String, String, String, String)>,
    pub blocks: BTreeMap<u64, Block>,
}

fn vhd_checksum(bytes: &mut [u8], field: usize) {
    bytes[field..field + 4].fill(0);
    let sum = bytes.iter().fold(0u32, |a, &b| a.wrapping_add(u32::from(b)));
    bytes[field..field + 4].copy_from_slice(&(!sum).to_be_bytes());
}

/// Writes `spec` as a dynamic (no parent) or differencing VHD.
pub fn write_vhd(path: &Path, spec: &VhdSpec) {
    let bs = spec.block_size;
    let n = spec.virtual_size.div_ceil(bs);
    let bat_at = 1536usize;
    let bat_len = ((n * 4) as usize).div_ceil(512) * 512;
    let mut file = vec![0u8; bat_at + bat_len];

    let mut footer = vec![0u8; 512];
    put(&mut footer, 0, b"conectix");
    put(&mut footer, 8, &2u32.to_be_bytes());
    put(&mut footer, 12, &0x0001_0000u32.to_be_bytes());
    put(&mut footer, 16, &512u64.to_be_bytes());
    put(&mut footer, 28, b"vkit");
    put(&mut footer, 36, b"Wi2k");
    put(&mut footer, 40, &spec.virtual_size.to_be_bytes());
    put(&mut footer, 48, &spec.virtual_size.to_be_bytes());
    put(&mut footer, 56, &[0xFF, 0xFF, 16, 255]);
    put(&mut footer, 60, &(if spec.parent.is_some() { 4u32 } else { 3 }).to_be_bytes());
    put(&mut footer, 68, &guid_canonical(&spec.unique_id));
    vhd_checksum(&mut footer, 64);

    let mut header = vec![0u8; 1024];
    put(&mut header, 0, b"cxsparse");
    put(&mut header, 8, &u64::MAX.to_be_bytes());
    put(&mut header, 16, &(bat_at as u64).to_be_bytes());
    put(&mut header, 24, &0x0001_0000u32.to_be_bytes());
    put(&mut header, 28, &(n as u32).to_be_bytes());
    put(&mut header, 32, &(bs as u32).to_be_bytes());
    let mut locators: Vec<(&[u8; 4], Vec<u8>)> = Vec::new();
    if let Some((id, rel, abs, name)) = &spec.parent {
        put(&mut header, 40, &guid_canonical(id));
        let name16: Vec<u8> = name.encode_utf16().flat_map(u16::to_be_bytes).collect();
        put(&mut header, 64, &name16);
        locators.push((b"W2ru", utf16le(rel)));
        locators.push((b"W2ku", utf16le(abs)));
    }
    for (i, (code, data)) in locators.iter().enumerate() {
        let at = file.len();
        let space = data.len().div_ceil(512) * 512;
        file.resize(at + space, 0);
        put(&mut file, at, data);
        let e = 576 + 24 * i;
        put(&mut header, e, *code);
        put(&mut header, e + 4, &(space as u32).to_be_bytes());
        put(&mut header, e + 8, &(data.len() as u32).to_be_bytes());
        put(&mut header, e + 16, &(at as u64).to_be_bytes());
    }
    vhd_checksum(&mut header, 36);

    let bitmap_len = ((bs / 512) as usize).div_ceil(8).div_ceil(512) * 512;
    let mut bat = vec![0xFFu8; bat_len];
    for (&b, block) in &spec.blocks {
        let (present, data): (Vec<bool>, Vec<u8>) = match block {
            Block::Full(d) => (vec![true; (bs / 512) as usize], d.clone()),
            Block::Partial { present, data } => (present.clone(), data.clone()),
            other => panic!("VHD has no {other:?} blocks"),
        };
        let at = file.len();
        let mut bitmap = vec![0u8; bitmap_len];
        let mut bytes = data;
        for (s, &p) in present.iter().enumerate() {
            if p {
                bitmap[s / 8] |= 0x80 >> (s % 8);
            } else if spec.parent.is_some() {
                bytes[s * 512..(s + 1) * 512].fill(GARBAGE);
            }
        }
        file.extend(&bitmap);
        file.extend(&bytes);
        put(&mut bat, b as usize * 4, &((at / 512) as u32).to_be_bytes());
    }
    put(&mut file, 0, &footer);
    put(&mut file, 512, &header);
    put(&mut file, bat_at, &bat);
    file.extend(&footer);
    std::fs::write(path, file).unwrap();
}

/// Reads the DataWriteGuid of a VHDX's current header (canonical text).
pub fn vhdx_data_write_guid(path: &Path) -> String {
    let f = std::fs::read(path).unwrap();
    let seq = |at: usize| u64::from_le_bytes(f[at + 8..at + 16].try_into().unwrap());
    let at = if seq(0x20000) > seq(0x10000) { 0x20000 } else { 0x10000 };
    guid_text_from_mixed(&f[at + 32..at + 48])
}

/// Reads a VHD's footer unique id (canonical text).
pub fn vhd_unique_id(path: &Path) -> String {
    let f = std::fs::read(path).unwrap();
    let footer = &f[f.len() - 512..];
    guid_text(&footer[68..84])
}
