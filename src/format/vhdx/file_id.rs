//! The file type identifier: the first structure of every VHDX.

use binrw::binrw;

use crate::format::{Structure, utf16_until_nul};

/// Offset of the file type identifier.
pub const FILE_ID_OFFSET: u64 = 0;

/// `vhdxfile` followed by the creator's name.
#[binrw]
#[brw(little, magic = b"vhdxfile")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileIdentifier {
    /// UTF-16LE, NUL-terminated: which program created the file. Diagnostic only.
    pub creator: [u8; 512],
}

impl Structure for FileIdentifier {
    const NAME: &'static str = "VHDX file identifier";
    const SIZE: usize = 520;
    const MAGIC: &'static str = "vhdxfile";
}

impl FileIdentifier {
    /// The creator string.
    pub fn creator(&self) -> String {
        utf16_until_nul(&self.creator, false)
    }

    /// An identifier naming `creator`.
    pub fn new(creator: &str) -> Self {
        let mut out = [0u8; 512];
        for (slot, unit) in out.chunks_exact_mut(2).zip(creator.encode_utf16().take(255)) {
            slot.copy_from_slice(&unit.to_le_bytes());
        }
        FileIdentifier { creator: out }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_creator() {
        let id = FileIdentifier::new("vhdkit 0.1");
        let bytes = id.encode();
        assert_eq!(&bytes[..8], b"vhdxfile");
        assert_eq!(FileIdentifier::decode(&bytes, 0).unwrap().creator(), "vhdkit 0.1");
    }
}
