//! The rule config files and restore points share: a JSON object whose
//! `checksum` field is the BLAKE3, in hex, of the same object serialised
//! compactly with `checksum` set to `""` (docs/store-format.md, "config").
//! The file holds the object pretty-printed; a reader re-serialises what it
//! parsed to check it.

/// An object with a `checksum` field that covers the rest of it.
pub(crate) trait Checksummed: serde::Serialize + Clone {
    /// The checksum field.
    fn checksum_mut(&mut self) -> &mut String;

    /// The checksum this object should carry.
    fn compute_checksum(&self) -> String {
        let mut unsealed = self.clone();
        *unsealed.checksum_mut() = String::new();
        let json = serde_json::to_vec(&unsealed).unwrap_or_default();
        blake3::hash(&json).to_hex().to_string()
    }

    /// The object as its file holds it: pretty-printed, with a newline.
    fn encode_pretty(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
}
