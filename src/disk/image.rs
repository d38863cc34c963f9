//! One image file of a chain, whatever its format.

use super::error::Result;
use super::raw::RawImage;
use super::{DiskInfo, VhdImage, VhdxImage};

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

/// One layer of a chain.
#[derive(Debug)]
pub(crate) enum Layer {
    Vhd(Box<VhdImage>),
    Vhdx(Box<VhdxImage>),
    Raw(Box<RawImage>),
}

impl Layer {
    pub(crate) fn info(&self) -> &DiskInfo {
        match self {
            Layer::Vhd(i) => i.info(),
            Layer::Vhdx(i) => i.info(),
            Layer::Raw(i) => i.info(),
        }
    }

    pub(crate) fn info_mut(&mut self) -> &mut DiskInfo {
        match self {
            Layer::Vhd(i) => i.info_mut(),
            Layer::Vhdx(i) => i.info_mut(),
            Layer::Raw(i) => i.info_mut(),
        }
    }

    /// The run starting at `offset` (which must be inside the image), at most
    /// `max` bytes long (`max > 0`).
    pub(crate) fn run_at(&self, offset: u64, max: u64) -> Result<Run> {
        match self {
            Layer::Vhd(i) => i.run_at(offset, max),
            Layer::Vhdx(i) => i.run_at(offset, max),
            Layer::Raw(i) => i.run_at(offset, max),
        }
    }

    pub(crate) fn read_data(&self, buf: &mut [u8], file_offset: u64) -> Result<()> {
        match self {
            Layer::Vhd(i) => i.read_data(buf, file_offset),
            Layer::Vhdx(i) => i.read_data(buf, file_offset),
            Layer::Raw(i) => i.read_data(buf, file_offset),
        }
    }

    pub(crate) fn data_bytes(&self, file_offset: u64, len: usize) -> Option<&[u8]> {
        match self {
            Layer::Vhd(i) => i.data_bytes(file_offset, len),
            Layer::Vhdx(i) => i.data_bytes(file_offset, len),
            Layer::Raw(i) => i.data_bytes(file_offset, len),
        }
    }

    /// Whether this image's reader can lend bytes (see `Disk::borrow_at`).
    pub(crate) fn lends(&self) -> bool {
        match self {
            Layer::Vhd(i) => i.lends(),
            Layer::Vhdx(i) => i.lends(),
            Layer::Raw(i) => i.lends(),
        }
    }

    pub(crate) fn check(&self) -> Vec<String> {
        match self {
            Layer::Vhd(i) => i.check(),
            Layer::Vhdx(i) => i.check(),
            Layer::Raw(_) => Vec::new(),
        }
    }
}
