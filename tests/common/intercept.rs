//! A backend that passes every call to a folder store after asking a hook,
//! which may fail the call, count it, or end the process: the one wrapper
//! the crash, fault and lock tests share.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use vhdkit::store::{Backend, LocalDir, ObjectInfo, ObjectWriter};

/// A storage operation, as the hook sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    Read(&'a str),
    List(&'a str),
    Create(&'a str),
    Write(&'a str, usize),
    /// Before the object becomes visible.
    Commit(&'a str),
    /// After it became visible.
    Committed(&'a str),
    /// Before the delete.
    Delete(&'a str),
    /// After it.
    Deleted(&'a str),
}

pub type Hook = Arc<dyn Fn(Op<'_>) -> io::Result<()> + Send + Sync>;

pub struct Intercept {
    pub inner: LocalDir,
    pub hook: Hook,
}

impl std::fmt::Debug for Intercept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intercept").field("inner", &self.inner).finish()
    }
}

impl Intercept {
    pub fn new(root: impl Into<PathBuf>, hook: impl Fn(Op<'_>) -> io::Result<()> + Send + Sync + 'static) -> Intercept {
        Intercept { inner: LocalDir::new(root), hook: Arc::new(hook) }
    }
}

struct Writer {
    key: String,
    inner: Box<dyn ObjectWriter>,
    hook: Hook,
}

impl ObjectWriter for Writer {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        (self.hook)(Op::Write(&self.key, bytes.len()))?;
        self.inner.write(bytes)
    }
    fn position(&self) -> u64 {
        self.inner.position()
    }
    fn commit(self: Box<Self>) -> io::Result<()> {
        (self.hook)(Op::Commit(&self.key))?;
        let Writer { key, inner, hook } = *self;
        inner.commit()?;
        hook(Op::Committed(&key))
    }
}

impl Backend for Intercept {
    fn describe(&self, key: &str) -> PathBuf {
        self.inner.describe(key)
    }
    fn read_at(&self, key: &str, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (self.hook)(Op::Read(key))?;
        self.inner.read_at(key, buf, offset)
    }
    fn read_all(&self, key: &str) -> io::Result<Vec<u8>> {
        (self.hook)(Op::Read(key))?;
        self.inner.read_all(key)
    }
    fn stat(&self, key: &str) -> io::Result<ObjectInfo> {
        (self.hook)(Op::Read(key))?;
        self.inner.stat(key)
    }
    fn list(&self, prefix: &str) -> io::Result<Vec<ObjectInfo>> {
        (self.hook)(Op::List(prefix))?;
        self.inner.list(prefix)
    }
    fn create(&self, key: &str) -> io::Result<Box<dyn ObjectWriter>> {
        (self.hook)(Op::Create(key))?;
        let inner = self.inner.create(key)?;
        Ok(Box::new(Writer { key: key.to_string(), inner, hook: self.hook.clone() }))
    }
    fn delete(&self, key: &str) -> io::Result<()> {
        (self.hook)(Op::Delete(key))?;
        self.inner.delete(key)?;
        (self.hook)(Op::Deleted(key))
    }
    fn now(&self) -> io::Result<SystemTime> {
        self.inner.now()
    }
    fn traffic(&self) -> vhdkit::store::Traffic {
        self.inner.traffic()
    }
}
