//! Attachments: small files kept with a restore point (a VM's
//! configuration), cut into chunks and stored like disk data, so they
//! deduplicate and verify like the rest.

use std::path::Path;

use crate::cancel::CancelToken;
use crate::store::error::{Result, StoreError};
use crate::store::format::point::MAX_ATTACHMENT_BYTES;
use crate::store::format::point::{AttachmentRecord, plain_file_name};
use crate::store::ops::backup::packer::ChunkBytes;
use crate::store::ops::backup::packer::{Claims, Packer, WorkerPack};
use crate::store::state::handle::Handle;
use crate::store::state::index::Index;
use crate::zero::is_all_zero;

/// A small file to keep with a backup job.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Attachment {
    /// Its name in the restore point: a file name, no folders.
    pub name: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

impl Attachment {
    /// An attachment named `name` (a plain file name) holding `bytes` (at
    /// most [`MAX_ATTACHMENT_BYTES`]).
    pub fn new(name: impl Into<String>, bytes: Vec<u8>) -> Result<Attachment> {
        let name = name.into();
        if !plain_file_name(&name) {
            return Err(StoreError::Invalid(format!("attachment name {name:?} is not a plain file name")));
        }
        if bytes.len() as u64 > MAX_ATTACHMENT_BYTES {
            return Err(StoreError::Invalid(format!(
                "attachment {name:?} holds {} bytes; at most {MAX_ATTACHMENT_BYTES} are kept",
                bytes.len()
            )));
        }
        Ok(Attachment { name, bytes })
    }

    /// Reads `path` (at most [`MAX_ATTACHMENT_BYTES`]) as an attachment
    /// named after its file name.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Attachment> {
        let path = path.as_ref();
        let io = |action| StoreError::io(path, action);
        let size = std::fs::metadata(path).map_err(io("read attachment"))?.len();
        if size > MAX_ATTACHMENT_BYTES {
            return Err(StoreError::Invalid(format!(
                "{}: {size} bytes; attachments are at most {MAX_ATTACHMENT_BYTES}",
                path.display()
            )));
        }
        let bytes = std::fs::read(path).map_err(io("read attachment"))?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Attachment::new(name, bytes)
    }
}

/// Stores `attachments`' chunks (new ones in one pack, sealed on return;
/// their entries wait in `claims`) and returns what the point records.
pub(super) fn store_attachments(
    store: &Handle,
    index: &Index,
    claims: &Claims,
    attachments: &[Attachment],
    cancel: &CancelToken,
) -> Result<(Vec<AttachmentRecord>, u64)> {
    let chunk = store.config.chunk_size as usize;
    let mut pack = WorkerPack::new();
    let mut packer = Packer::new(store);
    let mut stored = 0u64;
    let mut records = Vec::with_capacity(attachments.len());
    for a in attachments {
        let mut chunks = Vec::with_capacity(a.bytes.len().div_ceil(chunk));
        for piece in a.bytes.chunks(chunk) {
            if cancel.is_cancelled() {
                return Err(StoreError::Cancelled);
            }
            if is_all_zero(piece) {
                chunks.push(None);
                continue;
            }
            let id = store.crypt().chunk_id(piece);
            if !index.contains(&id) && claims.claim(id) {
                let (compression, bytes) = packer.pack(id, ChunkBytes::Borrowed(piece));
                stored += u64::from(pack.add(store, claims, id, compression, piece.len() as u32, &bytes)?);
            }
            chunks.push(Some(id));
        }
        records.push(AttachmentRecord { name: a.name.clone(), size: a.bytes.len() as u64, chunks });
    }
    pack.seal(store, claims)?;
    Ok((records, stored))
}
