//! The VHDX parent locator item: UTF-16LE key/value pairs naming a
//! differencing disk's parent and its identity.

use binrw::binrw;

use crate::format::{FormatError, Guid, Result, Structure};

/// The only locator type defined: B04AEFB7-D19E-4A81-B789-25B8E9445913.
pub const VHDX_LOCATOR_TYPE: Guid = Guid::from_canonical([
    0xB0, 0x4A, 0xEF, 0xB7, 0xD1, 0x9E, 0x4A, 0x81, 0xB7, 0x89, 0x25, 0xB8, 0xE9, 0x44, 0x59, 0x13,
]);

/// The locator's 20-byte header.
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParentLocatorHeader {
    /// The locator type (the VHDX parent locator GUID).
    pub locator_type: Guid,
    /// Reserved, zero.
    pub reserved: u16,
    /// Key-value pairs that follow.
    pub key_value_count: u16,
}

impl Structure for ParentLocatorHeader {
    const NAME: &'static str = "VHDX parent locator";
    const SIZE: usize = 20;
    const MAGIC: &'static str = "";
}

/// One 12-byte key/value entry; offsets are from the start of the item.
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyValueEntry {
    /// Offset of the key from the start of the locator.
    pub key_offset: u32,
    /// Offset of the value from the start of the locator.
    pub value_offset: u32,
    /// Bytes of the key (UTF-16LE).
    pub key_length: u16,
    /// Bytes of the value (UTF-16LE).
    pub value_length: u16,
}

impl Structure for KeyValueEntry {
    const NAME: &'static str = "VHDX parent locator entry";
    const SIZE: usize = 12;
    const MAGIC: &'static str = "";
}

/// The decoded key/value pairs, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct ParentLocator {
    /// The key-value pairs, decoded.
    pub entries: Vec<(String, String)>,
}

impl ParentLocator {
    /// Decodes the item found at absolute `offset`.
    ///
    /// Keys and values must lie after the entry table and together fit the
    /// item (so decoding costs at most a few times the item's size), hold
    /// no NUL, and keys must be unique.
    pub fn parse(bytes: &[u8], offset: u64) -> Result<ParentLocator> {
        let header = ParentLocatorHeader::decode(bytes, offset)?;
        if header.locator_type != VHDX_LOCATOR_TYPE {
            return Err(FormatError::unsupported(format!(
                "VHDX parent locator type {} at byte {offset}",
                header.locator_type
            )));
        }
        let count = usize::from(header.key_value_count);
        // Every entry needs 12 bytes inside the item: bounds the loop by the item.
        let table_end = 20 + count * 12;
        crate::format::slice_at(bytes, 20, count * 12, "VHDX parent locator", offset)?;
        let mut entries: Vec<(String, String)> = Vec::with_capacity(count);
        let mut keys = std::collections::HashSet::with_capacity(count);
        let mut total = 0usize;
        for i in 0..count {
            let at = 20 + i * 12;
            let abs = offset + at as u64;
            let e = KeyValueEntry::decode(&bytes[at..], abs)?;
            total += usize::from(e.key_length) + usize::from(e.value_length);
            if total > bytes.len() - table_end {
                return Err(FormatError::corrupt(
                    "VHDX parent locator",
                    abs,
                    format!("keys and values claim more than the {}-byte item holds", bytes.len()),
                ));
            }
            let text = |off: u32, len: u16, what: &str| -> Result<String> {
                if len == 0 || !len.is_multiple_of(2) {
                    return Err(FormatError::corrupt(
                        "VHDX parent locator entry",
                        abs,
                        format!("{what} length {len} is not a positive even number"),
                    ));
                }
                if (off as usize) < table_end {
                    return Err(FormatError::corrupt(
                        "VHDX parent locator entry",
                        abs,
                        format!("{what} at item offset {off} lies inside the entry table"),
                    ));
                }
                let raw = crate::format::slice_at(
                    bytes,
                    off as usize,
                    usize::from(len),
                    "VHDX parent locator entry",
                    offset,
                )?;
                let units: Vec<u16> = raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
                if units.contains(&0) {
                    return Err(FormatError::corrupt("VHDX parent locator entry", abs, format!("{what} holds a NUL")));
                }
                String::from_utf16(&units).map_err(|_| {
                    FormatError::corrupt("VHDX parent locator entry", abs, format!("{what} is not valid UTF-16"))
                })
            };
            let key = text(e.key_offset, e.key_length, "key")?;
            let value = text(e.value_offset, e.value_length, "value")?;
            if !keys.insert(key.clone()) {
                return Err(FormatError::corrupt(
                    "VHDX parent locator entry",
                    abs,
                    format!("key {key:?} appears twice"),
                ));
            }
            entries.push((key, value));
        }
        Ok(ParentLocator { entries })
    }

    /// The value for `key` (keys are case-sensitive).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The parent's DataWriteGuid this child was made against
    /// (`parent_linkage`), and the alternative (`parent_linkage2`) if present.
    /// `offset` locates the item for errors.
    pub fn linkage(&self, offset: u64) -> Result<(Guid, Option<Guid>)> {
        let parse = |key: &str| -> Result<Option<Guid>> {
            self.get(key)
                .map(|v| {
                    v.parse().map_err(|_| {
                        FormatError::corrupt("VHDX parent locator", offset, format!("{key} {v:?} is not a GUID"))
                    })
                })
                .transpose()
        };
        let first = parse("parent_linkage")?
            .ok_or_else(|| FormatError::corrupt("VHDX parent locator", offset, "no parent_linkage key"))?;
        Ok((first, parse("parent_linkage2")?))
    }

    /// Path hints in the order a reader should try them.
    pub fn paths(&self) -> Vec<(&'static str, &str)> {
        ["relative_path", "volume_path", "absolute_win32_path"]
            .into_iter()
            .filter_map(|k| self.get(k).map(|v| (k, v)))
            .collect()
    }

    /// Encodes the pairs as an item (for writers and tests).
    pub fn encode(&self) -> Vec<u8> {
        let header = ParentLocatorHeader {
            locator_type: VHDX_LOCATOR_TYPE,
            reserved: 0,
            key_value_count: self.entries.len() as u16,
        };
        let mut out = header.encode();
        let table_end = 20 + 12 * self.entries.len();
        let mut strings = Vec::new();
        let mut table = Vec::new();
        for (k, v) in &self.entries {
            let k16: Vec<u8> = k.encode_utf16().flat_map(u16::to_le_bytes).collect();
            let v16: Vec<u8> = v.encode_utf16().flat_map(u16::to_le_bytes).collect();
            let key_offset = (table_end + strings.len()) as u32;
            strings.extend_from_slice(&k16);
            let value_offset = (table_end + strings.len()) as u32;
            strings.extend_from_slice(&v16);
            table.extend(
                KeyValueEntry {
                    key_offset,
                    value_offset,
                    key_length: k16.len() as u16,
                    value_length: v16.len() as u16,
                }
                .encode(),
            );
        }
        out.extend(table);
        out.extend(strings);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_linkage() {
        let loc = ParentLocator {
            entries: vec![
                ("parent_linkage".into(), "{83ED0EC3-24C8-49A6-A959-5E4BF1288BFB}".into()),
                ("relative_path".into(), "..\\base.vhdx".into()),
                ("absolute_win32_path".into(), "\\\\?\\C:\\vms\\base.vhdx".into()),
            ],
        };
        let bytes = loc.encode();
        let back = ParentLocator::parse(&bytes, 1000).unwrap();
        assert_eq!(back, loc);
        let (g, g2) = back.linkage(1000).unwrap();
        assert_eq!(g.to_string(), "83ed0ec3-24c8-49a6-a959-5e4bf1288bfb");
        assert_eq!(g2, None);
        assert_eq!(back.paths()[0], ("relative_path", "..\\base.vhdx"));
    }

    #[test]
    fn rejects_shared_or_overlapping_strings_that_would_multiply_memory() {
        // Two entries whose values are the same bytes: their lengths add up
        // to more than the item holds.
        let loc = ParentLocator {
            entries: vec![
                ("parent_linkage".into(), "{83ed0ec3-24c8-49a6-a959-5e4bf1288bfb}".into()),
                ("k".into(), "v".repeat(30)),
            ],
        };
        let mut bytes = loc.encode();
        let first_value = u32::from_le_bytes(bytes[24..28].try_into().unwrap());
        bytes[32 + 4..32 + 8].copy_from_slice(&first_value.to_le_bytes());
        bytes[32 + 10..32 + 12].copy_from_slice(&1000u16.to_le_bytes());
        assert!(ParentLocator::parse(&bytes, 0).is_err());
        // A key pointing into the entry table.
        let mut bytes = loc.encode();
        bytes[20..24].copy_from_slice(&20u32.to_le_bytes());
        assert!(ParentLocator::parse(&bytes, 0).is_err());
    }

    #[test]
    fn rejects_entries_pointing_outside_the_item() {
        let loc =
            ParentLocator { entries: vec![("parent_linkage".into(), "{83ed0ec3-24c8-49a6-a959-5e4bf1288bfb}".into())] };
        let mut bytes = loc.encode();
        bytes[20..24].copy_from_slice(&5000u32.to_le_bytes());
        assert!(ParentLocator::parse(&bytes, 0).is_err());
        let mut bytes = loc.encode();
        bytes[18..20].copy_from_slice(&60000u16.to_le_bytes());
        assert!(matches!(ParentLocator::parse(&bytes, 0), Err(FormatError::Truncated { .. })));
    }
}
