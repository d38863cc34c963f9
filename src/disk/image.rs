//! What one image file of a chain answers, whatever its format: where a
//! run of its bytes comes from ([`Image::run_at`]) and its file's bytes.
//! VHD, VHDX and raw images implement [`Image`]; a chain walks them
//! through `layer::Layer`.

use super::DiskInfo;
use super::error::Result;
use super::source::Source;

/// Where the bytes of a run of one image come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunKind {
    /// In this image's file, starting at `file_offset`.
    Data { file_offset: u64 },
    /// This image says they are zero.
    Zero,
    /// This image holds nothing here and has no parent to ask: zeros.
    Unallocated,
    /// This image defers to its parent.
    Parent,
}

/// A run of bytes of one image in one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub(crate) len: u64,
    pub(crate) kind: RunKind,
}

/// The accessors every image writes the same way, over its `source` and
/// `info` fields: `impl Image for X { image_fields!(); fn run_at ... }`.
macro_rules! image_fields {
    () => {
        fn source(&self) -> &Source {
            &self.source
        }

        fn info(&self) -> &DiskInfo {
            &self.info
        }

        fn info_mut(&mut self) -> &mut DiskInfo {
            &mut self.info
        }
    };
}
pub(crate) use image_fields;

/// One image file, as a chain reads it.
pub(crate) trait Image: std::fmt::Debug {
    /// The image's file.
    fn source(&self) -> &Source;

    /// What the image says of itself.
    fn info(&self) -> &DiskInfo;

    /// The same, for opening to fill in a parent's link.
    fn info_mut(&mut self) -> &mut DiskInfo;

    /// The run starting at `offset` (which must be inside the image), at
    /// most `max` bytes long (`max > 0`).
    fn run_at(&self, offset: u64, max: u64) -> Result<Run>;

    /// Structural problems that did not prevent opening (for `check`).
    fn check(&self) -> Vec<String> {
        self.info().warnings.clone()
    }

    /// Reads file bytes for a `Data` run.
    fn read_data(&self, buf: &mut [u8], file_offset: u64) -> Result<()> {
        self.source().read_exact(buf, file_offset)
    }

    /// The file bytes of a `Data` run, borrowed where the reader can.
    fn data_bytes(&self, file_offset: u64, len: usize) -> Option<&[u8]> {
        self.source().bytes_at(file_offset, len)
    }

    /// Whether this image's reader can lend bytes (see `Disk::borrow_at`).
    fn lends(&self) -> bool {
        self.source().lends()
    }
}
