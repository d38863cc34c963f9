//! A raw image: the file's bytes are the disk's bytes.

use super::error::Result;
use super::image::{Image, Run, RunKind, image_fields};
use super::source::Source;
use super::{DiskInfo, ImageFormat, Subformat};
use crate::format::Guid;

/// A flat disk image with no metadata.
#[derive(Debug)]
pub(crate) struct RawImage {
    source: Source,
    info: DiskInfo,
}

impl RawImage {
    pub(crate) fn open(source: Source) -> RawImage {
        let size = source.size();
        let info = DiskInfo {
            format: ImageFormat::Raw,
            subformat: Subformat::Fixed,
            virtual_size: size,
            block_size: None,
            logical_sector_size: 512,
            physical_sector_size: 512,
            disk_id: Guid::NIL,
            identity: Guid::NIL,
            file_size: size,
            path: source.path().to_path_buf(),
            creator: String::new(),
            parent: None,
            log_replay: None,
            warnings: Vec::new(),
        };
        RawImage { source, info }
    }
}

impl Image for RawImage {
    image_fields!();

    fn run_at(&self, offset: u64, max: u64) -> Result<Run> {
        Ok(Run { len: max.min(self.info.virtual_size - offset), kind: RunKind::Data { file_offset: offset } })
    }
}
