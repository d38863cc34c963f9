//! Writing one object to a bucket: a small one buffered and sent as one
//! conditional put at commit, a large one as a multipart upload of
//! [`PART`]-byte parts whose completion first checks that the key is still
//! free. Dropped uncommitted, an upload is aborted.

use std::io;

use object_store::{MultipartUpload, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::store::backend::ObjectWriter;
use crate::store::backend::object::{ObjectBackend, PART, io_error, other};

pub(super) enum Upload {
    /// Small so far: the bytes, sent in one conditional put at commit.
    Buffer(Vec<u8>),
    /// A multipart upload under way, and the part being filled.
    Parts { upload: Box<dyn MultipartUpload>, part: Vec<u8> },
}

pub(super) struct Writer {
    backend: ObjectBackend,
    key: String,
    upload: Option<Upload>,
    written: u64,
}

impl Writer {
    /// A new object `key` of `backend`, buffered until it grows past a part.
    pub(super) fn new(backend: ObjectBackend, key: &str) -> Writer {
        Writer { backend, key: key.to_string(), upload: Some(Upload::Buffer(Vec::new())), written: 0 }
    }

    fn send_part(&mut self, upload: &mut Box<dyn MultipartUpload>, part: Vec<u8>) -> io::Result<()> {
        let n = part.len();
        let fut = upload.put_part(PutPayload::from(part));
        self.backend.request("PUT part", &self.key);
        self.backend.block(fut)?.map_err(io_error)?;
        self.backend.counters.uploaded(n);
        Ok(())
    }
}

impl ObjectWriter for Writer {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.written += bytes.len() as u64;
        let mut upload = self.upload.take().ok_or_else(|| other("object already committed"))?;
        let result = (|| {
            if let Upload::Buffer(buf) = &mut upload {
                buf.extend_from_slice(bytes);
                if buf.len() < PART {
                    return Ok(());
                }
                // Large: switch to a multipart upload.
                let path = self.backend.path(&self.key);
                let store = self.backend.store.clone();
                self.backend.request("POST multipart", &self.key);
                let mp = self.backend.block(async move { store.put_multipart(&path).await })?.map_err(io_error)?;
                upload = Upload::Parts { upload: mp, part: std::mem::take(buf) };
            } else if let Upload::Parts { part, .. } = &mut upload {
                part.extend_from_slice(bytes);
            }
            if let Upload::Parts { upload: mp, part } = &mut upload {
                while part.len() >= PART {
                    let rest = part.split_off(PART);
                    let full = std::mem::replace(part, rest);
                    self.send_part(mp, full)?;
                }
            }
            Ok(())
        })();
        self.upload = Some(upload);
        result
    }

    fn position(&self) -> u64 {
        self.written
    }

    fn commit(mut self: Box<Self>) -> io::Result<()> {
        let upload = self.upload.take().ok_or_else(|| other("object already committed"))?;
        let path = self.backend.path(&self.key);
        let store = self.backend.store.clone();
        match upload {
            Upload::Buffer(buf) => {
                let n = buf.len();
                let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
                self.backend.request("PUT", &self.key);
                self.backend
                    .block(async move { store.put_opts(&path, PutPayload::from(buf), opts).await })?
                    .map_err(io_error)?;
                self.backend.counters.uploaded(n);
                Ok(())
            }
            Upload::Parts { mut upload, part } => {
                if !part.is_empty() {
                    self.send_part(&mut upload, part)?;
                }
                // Completion cannot be conditional here: check the key first.
                let (head_store, head_path) = (store.clone(), path.clone());
                self.backend.request("HEAD", &self.key);
                match self.backend.block(async move { head_store.head(&head_path).await })? {
                    Ok(_) => {
                        self.backend.request("DELETE multipart", &self.key);
                        let _ = self.backend.block(async move { upload.abort().await });
                        return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists", self.key)));
                    }
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(io_error(e)),
                }
                self.backend.request("POST complete", &self.key);
                self.backend.block(async move { upload.complete().await })?.map_err(io_error)?;
                Ok(())
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Abandoned: an unfinished multipart upload is aborted (a killed
        // process leaves it to the bucket's lifecycle rule).
        if let Some(Upload::Parts { mut upload, .. }) = self.upload.take() {
            self.backend.request("DELETE multipart", &self.key);
            let _ = self.backend.block(async move { upload.abort().await });
        }
    }
}
