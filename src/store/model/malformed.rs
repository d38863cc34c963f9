//! The one error of the store's codecs: bytes that do not decode, with
//! where and why. Codecs (`format/`) and the opening of sealed bytes
//! (`crypto/`) return it; the layers above add which object it was
//! (`StoreError::Corrupt` names the path).

use std::fmt;

/// Bytes that do not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// What was being decoded ("record", "pack trailer", "index file", ...).
    pub what: &'static str,
    /// Byte offset within it.
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
}

impl Malformed {
    /// `what` at byte `offset` is wrong because of `reason`.
    pub fn at(what: &'static str, offset: u64, reason: impl Into<String>) -> Malformed {
        Malformed { what, offset, reason: reason.into() }
    }
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} byte {})", self.reason, self.what, self.offset)
    }
}

impl std::error::Error for Malformed {}
