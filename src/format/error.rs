//! The format layer's error: what is wrong with which structure, and where.

use thiserror::Error;

/// An error found while decoding an on-disk structure.
///
/// Every variant that concerns bytes of the image names the structure and the
/// absolute byte offset in the image file where the problem lies, so a user can
/// look at exactly that byte.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    /// A structure's signature (magic) is not what the format requires.
    #[error("{structure} at byte {offset}: bad signature (expected {expected:?})")]
    BadSignature {
        /// Which structure (`vhd footer`, `vhdx header`...).
        structure: &'static str,
        /// Absolute byte offset in the image file.
        offset: u64,
        /// The signature the format requires.
        expected: &'static str,
    },

    /// A structure's stored checksum does not match its contents.
    #[error("{structure} at byte {offset}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadChecksum {
        /// Which structure (`vhd footer`, `vhdx header`...).
        structure: &'static str,
        /// Absolute byte offset in the image file.
        offset: u64,
        /// The checksum the structure carries.
        stored: u32,
        /// The checksum of its contents.
        computed: u32,
    },

    /// A structure extends past the end of the bytes available.
    #[error("{structure} at byte {offset}: needs {needed} bytes, only {available} available")]
    Truncated {
        /// Which structure (`vhd footer`, `vhdx header`...).
        structure: &'static str,
        /// Absolute byte offset in the image file.
        offset: u64,
        /// Bytes the structure needs.
        needed: u64,
        /// Bytes there are.
        available: u64,
    },

    /// A field holds a value the format does not allow.
    #[error("{structure} at byte {offset}: {reason}")]
    Corrupt {
        /// Which structure (`vhd footer`, `vhdx header`...).
        structure: &'static str,
        /// Absolute byte offset in the image file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },

    /// The image uses a feature this crate does not implement. Distinct from
    /// corruption: the file may be fine, we just cannot read it faithfully.
    #[error("unsupported: {feature}")]
    Unsupported {
        /// The feature, as the format names it.
        feature: String,
    },
}

impl FormatError {
    /// Shorthand for [`FormatError::Corrupt`].
    pub fn corrupt(structure: &'static str, offset: u64, reason: impl Into<String>) -> Self {
        FormatError::Corrupt { structure, offset, reason: reason.into() }
    }

    /// Shorthand for [`FormatError::Unsupported`].
    pub fn unsupported(feature: impl Into<String>) -> Self {
        FormatError::Unsupported { feature: feature.into() }
    }

    /// Whether this error means "valid but not implemented" rather than damage.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, FormatError::Unsupported { .. })
    }

    /// The crate-wide kind: unsupported, or else corrupt.
    pub fn kind(&self) -> crate::ErrorKind {
        if self.is_unsupported() { crate::ErrorKind::Unsupported } else { crate::ErrorKind::Corrupt }
    }

    /// The byte offset the error points at, when it points at one.
    pub fn offset(&self) -> Option<u64> {
        match self {
            FormatError::BadSignature { offset, .. }
            | FormatError::BadChecksum { offset, .. }
            | FormatError::Truncated { offset, .. }
            | FormatError::Corrupt { offset, .. } => Some(*offset),
            FormatError::Unsupported { .. } => None,
        }
    }
}

/// Result alias for the format layer.
pub type Result<T, E = FormatError> = std::result::Result<T, E>;
