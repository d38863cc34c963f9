//! A store in memory: for tests, and for deterministic schedules, whose
//! clock can be logical so that leases expire when the schedule says.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::store::backend::{Backend, Counters, ObjectInfo, ObjectWriter, Traffic};

#[derive(Debug, Default)]
struct Objects {
    map: BTreeMap<String, (Arc<Vec<u8>>, SystemTime)>,
}

/// A store held in memory. Cloning shares the same objects.
#[derive(Debug, Clone, Default)]
pub struct MemoryBackend {
    objects: Arc<Mutex<Objects>>,
    /// Seconds since the epoch, when the clock is logical.
    logical: Option<Arc<AtomicU64>>,
    counters: Arc<Counters>,
}

impl MemoryBackend {
    /// An empty store whose clock is the system's.
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }

    /// An empty store whose clock starts at `start` and moves only when
    /// [`MemoryBackend::advance`] says.
    pub fn with_logical_clock(start: SystemTime) -> MemoryBackend {
        let secs = start.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        MemoryBackend { logical: Some(Arc::new(AtomicU64::new(secs))), ..Default::default() }
    }

    /// Moves a logical clock forward (no effect on a system clock).
    pub fn advance(&self, by: Duration) {
        if let Some(c) = &self.logical {
            c.fetch_add(by.as_secs(), Ordering::SeqCst);
        }
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner()).map.keys().cloned().collect()
    }

    /// Replaces an object's bytes in place (for damage tests: the store
    /// itself never overwrites).
    pub fn tamper(&self, key: &str, f: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        let mut objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        let (bytes, _) = objects.map.get_mut(key).ok_or_else(|| not_found(key))?;
        f(Arc::make_mut(bytes));
        Ok(())
    }

    fn clock(&self) -> SystemTime {
        match &self.logical {
            Some(c) => UNIX_EPOCH + Duration::from_secs(c.load(Ordering::SeqCst)),
            None => SystemTime::now(),
        }
    }

    fn get(&self, key: &str) -> io::Result<Arc<Vec<u8>>> {
        let objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        objects.map.get(key).map(|(b, _)| b.clone()).ok_or_else(|| not_found(key))
    }
}

fn not_found(key: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no object {key}"))
}

struct MemoryWriter {
    store: MemoryBackend,
    key: String,
    bytes: Vec<u8>,
}

impl ObjectWriter for MemoryWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }

    fn position(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn commit(self: Box<Self>) -> io::Result<()> {
        self.store.counters.request();
        self.store.counters.uploaded(self.bytes.len());
        let now = self.store.clock();
        let mut objects = self.store.objects.lock().unwrap_or_else(|p| p.into_inner());
        if objects.map.contains_key(&self.key) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists", self.key)));
        }
        objects.map.insert(self.key, (Arc::new(self.bytes), now));
        Ok(())
    }
}

impl Backend for MemoryBackend {
    fn describe(&self, key: &str) -> PathBuf {
        PathBuf::from("memory://").join(key)
    }

    fn read_at(&self, key: &str, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.counters.request();
        crate::store::backend::copy_range(&self.get(key)?, key, buf, offset)
    }

    fn read_all(&self, key: &str) -> io::Result<Vec<u8>> {
        self.counters.request();
        Ok(self.get(key)?.as_ref().clone())
    }

    fn stat(&self, key: &str) -> io::Result<ObjectInfo> {
        self.counters.request();
        let objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        let (bytes, modified) = objects.map.get(key).ok_or_else(|| not_found(key))?;
        Ok(ObjectInfo { key: key.to_string(), size: bytes.len() as u64, modified: *modified })
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<ObjectInfo>> {
        self.counters.request();
        let folder = if prefix.is_empty() || prefix.ends_with('/') { prefix.to_string() } else { format!("{prefix}/") };
        let objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        Ok(objects
            .map
            .range(folder.clone()..)
            .take_while(|(k, _)| k.starts_with(&folder))
            .map(|(k, (b, t))| ObjectInfo { key: k.clone(), size: b.len() as u64, modified: *t })
            .collect())
    }

    fn create(&self, key: &str) -> io::Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(MemoryWriter { store: self.clone(), key: key.to_string(), bytes: Vec::new() }))
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        self.counters.request();
        self.objects.lock().unwrap_or_else(|p| p.into_inner()).map.remove(key);
        Ok(())
    }

    fn now(&self) -> io::Result<SystemTime> {
        Ok(self.clock())
    }

    fn traffic(&self) -> Traffic {
        self.counters.snapshot()
    }
}
