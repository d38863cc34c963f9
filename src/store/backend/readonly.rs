//! An encrypted store opened without its key: it may read anything, and
//! write nothing but its own lease (so vacuum knows a verify is running).
//! Without the key nothing it wrote could be sealed, and an operation that
//! writes plaintext into an encrypted store (a manifest, an index file, a
//! log entry) would leak or damage it.

use std::io;
use std::sync::Arc;

use crate::store::backend::{Backend, ObjectWriter};

/// `inner`, refusing every write outside `locks/`.
#[derive(Debug)]
pub(crate) struct ReadOnlyBackend {
    inner: Arc<dyn Backend>,
}

impl ReadOnlyBackend {
    pub(crate) fn new(inner: Arc<dyn Backend>) -> ReadOnlyBackend {
        ReadOnlyBackend { inner }
    }
}

fn writable(key: &str) -> bool {
    crate::store::model::layout::Folder::of(key).is_some_and(crate::store::model::layout::Folder::writable_without_key)
}

fn refused(key: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{key}: the store is encrypted and was opened without its key, so it is read-only"),
    )
}

impl Backend for ReadOnlyBackend {
    fn create(&self, key: &str) -> io::Result<Box<dyn ObjectWriter>> {
        if !writable(key) {
            return Err(refused(key));
        }
        self.inner.create(key)
    }
    fn delete(&self, key: &str) -> io::Result<()> {
        if !writable(key) {
            return Err(refused(key));
        }
        self.inner.delete(key)
    }
    forward_to_inner!(reads);
}
