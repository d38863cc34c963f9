//! Writers: stream any [`VirtualDisk`](crate::VirtualDisk) to a raw image.
//!
//! Output goes to a temporary file beside the target and is renamed into
//! place only when complete and flushed, so a failed or interrupted export
//! never leaves a half-written file under the requested name.

mod error;
mod output;
mod raw;

pub use error::ExportError;
pub use raw::write_raw;

use serde::Serialize;

/// What an export did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ExportReport {
    /// Virtual size of the disk exported.
    pub virtual_size: u64,
    /// Bytes of disk data read from the source.
    pub bytes_read: u64,
    /// Bytes written to the output (data only: holes and zero blocks are not written).
    pub bytes_written: u64,
    /// Size of the output file.
    pub file_size: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}
