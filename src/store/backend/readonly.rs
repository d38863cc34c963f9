//! An encrypted store opened without its key: it may read anything, and
//! write nothing but its own lease (so vacuum knows a verify is running).
//! Without the key nothing it wrote could be sealed, and an operation that
//! writes plaintext into an encrypted store (a manifest, an index file, a
//! log entry) would leak or damage it.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use super::{Backend, ObjectInfo, ObjectWriter};

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
    key.starts_with("locks/")
}

fn refused(key: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{key}: the store is encrypted and was opened without its key, so it is read-only"),
    )
}

impl Backend for ReadOnlyBackend {
    fn describe(&self, key: &str) -> PathBuf {
        self.inner.describe(key)
    }
    fn read_at(&self, key: &str, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(key, buf, offset)
    }
    fn read_all(&self, key: &str) -> io::Result<Vec<u8>> {
        self.inner.read_all(key)
    }
    fn stat(&self, key: &str) -> io::Result<ObjectInfo> {
        self.inner.stat(key)
    }
    fn list(&self, prefix: &str) -> io::Result<Vec<ObjectInfo>> {
        self.inner.list(prefix)
    }
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
    forward_to_inner!();
}
