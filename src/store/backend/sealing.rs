//! An encrypted store's view of its storage: every object under a sealed
//! prefix (index files, manifests, restore points, the job log, vacuum's
//! records, tombstones) is an envelope (`crypto::envelope`), sealed as it is written
//! and opened as it is read, so the store's logic reads and writes
//! plaintext as it does in a plain store.
//!
//! Packs are not wrapped: their records and index are sealed one by one
//! (records must stay readable alone, and vacuum copies them between packs
//! as they are). The config and key objects are read before the key is
//! known; leases (who holds the store) and damage markers (empty; names
//! only) are not sealed: a forged one can only delay maintenance or make a
//! restore pass over a sound copy, as deleting objects could.
//!
//! Reads of a range open only the segments that hold it. The layout of an
//! object (its header and size) is kept after the first read, since every
//! object is immutable; a stale layout could only fail to open, never
//! yield other bytes. `stat` gives an object's plaintext size; `list` gives
//! sizes as stored (what the store occupies).

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::store::backend::{Backend, ObjectInfo, ObjectWriter};
use crate::store::crypto::Keys;
use crate::store::crypto::envelope::{self, Layout, Opener};

use crate::store::crypto::seal_error;
use crate::store::model::layout::sealed_key;
use crate::store::model::malformed::Malformed;

/// Layouts remembered at most (a few hundred bytes each).
const LAYOUTS: usize = 4096;

/// `inner`, its sealed prefixes opened and sealed with `keys`.
#[derive(Debug)]
pub(crate) struct SealingBackend {
    inner: Arc<dyn Backend>,
    keys: Arc<Keys>,
    layouts: Mutex<HashMap<String, Layout>>,
}

impl SealingBackend {
    pub(crate) fn new(inner: Arc<dyn Backend>, keys: Arc<Keys>) -> SealingBackend {
        SealingBackend { inner, keys, layouts: Mutex::new(HashMap::new()) }
    }

    /// The layout of sealed object `key`: remembered, or read (its size and
    /// header).
    fn layout(&self, key: &str) -> io::Result<Layout> {
        if let Some(l) = self.layouts.lock().unwrap_or_else(|p| p.into_inner()).get(key) {
            return Ok(*l);
        }
        let size = self.inner.stat(key)?.size;
        let mut head = [0u8; envelope::HEADER];
        self.inner.read_at(key, &mut head, 0).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                seal_error(Malformed::at("sealed object", 0, "too short for a sealed object"))
            } else {
                e
            }
        })?;
        let layout = envelope::decode_header(&head).and_then(|h| Layout::new(h, size)).map_err(seal_error)?;
        let mut layouts = self.layouts.lock().unwrap_or_else(|p| p.into_inner());
        if layouts.len() >= LAYOUTS {
            layouts.clear();
        }
        layouts.insert(key.to_string(), layout);
        Ok(layout)
    }
}

/// Writes an envelope through the inner backend's writer.
struct SealingWriter {
    inner: Box<dyn ObjectWriter>,
    sealer: envelope::Writer,
}

impl ObjectWriter for SealingWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let SealingWriter { inner, sealer } = self;
        sealer.push(bytes, &mut |b| inner.write(b))
    }
    fn position(&self) -> u64 {
        self.sealer.position()
    }
    fn commit(self: Box<Self>) -> io::Result<()> {
        let SealingWriter { mut inner, sealer } = *self;
        sealer.finish(&mut |b| inner.write(b))?;
        inner.commit()
    }
}

impl Backend for SealingBackend {
    fn describe(&self, key: &str) -> PathBuf {
        self.inner.describe(key)
    }

    fn read_at(&self, key: &str, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if !sealed_key(key) {
            return self.inner.read_at(key, buf, offset);
        }
        let layout = self.layout(key)?;
        let end = offset.checked_add(buf.len() as u64).filter(|end| *end <= layout.plain_len()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{key} ends before byte {}", offset.saturating_add(buf.len() as u64)),
            )
        })?;
        let segments = layout.segments_for(offset, end);
        if segments.is_empty() {
            return Ok(());
        }
        // One read for every segment the range touches.
        let first = layout.segment(segments.start);
        let last = layout.segment(segments.end - 1);
        let mut sealed = vec![0u8; (last.offset + last.len as u64 - first.offset) as usize];
        self.inner.read_at(key, &mut sealed, first.offset)?;
        let opener = Opener::new(&self.keys, key, layout.header());
        for i in segments {
            let at = layout.segment(i);
            let from = (at.offset - first.offset) as usize;
            let plain = opener.open(i, &at, &mut sealed[from..from + at.len]).map_err(seal_error)?;
            // The part of this segment's plaintext the range wants.
            let lo = offset.max(at.plain_offset);
            let hi = end.min(at.plain_offset + plain.len() as u64);
            if lo < hi {
                let src = &plain[(lo - at.plain_offset) as usize..(hi - at.plain_offset) as usize];
                buf[(lo - offset) as usize..(hi - offset) as usize].copy_from_slice(src);
            }
        }
        Ok(())
    }

    fn read_all(&self, key: &str) -> io::Result<Vec<u8>> {
        let bytes = self.inner.read_all(key)?;
        if !sealed_key(key) {
            return Ok(bytes);
        }
        envelope::open(&self.keys, key, &bytes).map_err(seal_error)
    }

    fn stat(&self, key: &str) -> io::Result<ObjectInfo> {
        let info = self.inner.stat(key)?;
        if !sealed_key(key) {
            return Ok(info);
        }
        let layout = self.layout(key)?;
        Ok(ObjectInfo { size: layout.plain_len(), ..info })
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<ObjectInfo>> {
        self.inner.list(prefix)
    }

    fn create(&self, key: &str) -> io::Result<Box<dyn ObjectWriter>> {
        let mut inner = self.inner.create(key)?;
        if !sealed_key(key) {
            return Ok(inner);
        }
        let sealer = envelope::Writer::new(&self.keys, key);
        inner.write(sealer.header())?;
        Ok(Box::new(SealingWriter { inner, sealer }))
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        self.layouts.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
        self.inner.delete(key)
    }

    forward_to_inner!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::backend::MemoryBackend;

    fn backends() -> (Arc<MemoryBackend>, SealingBackend) {
        let inner = Arc::new(MemoryBackend::new());
        let sealing = SealingBackend::new(inner.clone(), Arc::new(Keys::for_tests(4)));
        (inner, sealing)
    }

    fn put(b: &dyn Backend, key: &str, bytes: &[u8]) {
        let mut w = b.create(key).unwrap();
        for piece in bytes.chunks(10_000) {
            w.write(piece).unwrap();
        }
        assert_eq!(w.position(), bytes.len() as u64);
        w.commit().unwrap();
    }

    #[test]
    fn sealed_prefixes_read_back_as_written_and_are_stored_sealed() {
        let (inner, b) = backends();
        let plain: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 256) as u8).collect();
        put(&b, "manifests/m.manifest", &plain);
        put(&b, "damaged/x", b"");
        assert_eq!(b.read_all("manifests/m.manifest").unwrap(), plain);
        assert_eq!(b.stat("manifests/m.manifest").unwrap().size, plain.len() as u64);
        let stored = inner.read_all("manifests/m.manifest").unwrap();
        assert!(stored.len() > plain.len() && !stored.windows(64).any(|w| w == &plain[1000..1064]));
        assert_eq!(b.list("manifests").unwrap()[0].size, stored.len() as u64, "listings give stored sizes");
        // Unsealed prefixes pass through.
        assert_eq!(inner.read_all("damaged/x").unwrap(), b"");
        // Ranges: inside a segment, across segments, at the end, past it.
        let mut buf = vec![0u8; 100_000];
        for offset in [0u64, 1, 65_535, 65_536, 100_000, 200_000] {
            b.read_at("manifests/m.manifest", &mut buf, offset).unwrap();
            assert_eq!(buf, plain[offset as usize..offset as usize + buf.len()], "at {offset}");
        }
        let mut tail = [0u8; 5];
        b.read_at("manifests/m.manifest", &mut tail, plain.len() as u64 - 5).unwrap();
        let err = b.read_at("manifests/m.manifest", &mut tail, plain.len() as u64 - 4).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        b.read_at("manifests/m.manifest", &mut [], plain.len() as u64).unwrap();
    }

    #[test]
    fn an_object_moved_to_another_key_or_altered_is_corrupt_not_misread() {
        let (inner, b) = backends();
        put(&b, "points/a.point", b"{\"point\": \"a\"}");
        let stored = inner.read_all("points/a.point").unwrap();
        put(&*inner, "points/b.point", &stored);
        let err = b.read_all("points/b.point").unwrap_err();
        assert!(err.get_ref().is_some_and(|e| e.is::<crate::store::crypto::SealError>()), "{err}");
        let mut altered = stored.clone();
        altered[40] ^= 1;
        put(&*inner, "points/c.point", &altered);
        assert!(b.read_all("points/c.point").is_err());
        let mut buf = [0u8; 4];
        assert!(b.read_at("points/c.point", &mut buf, 0).is_err());
        // Too short to be sealed at all.
        put(&*inner, "points/d.point", b"{}");
        assert_eq!(b.read_at("points/d.point", &mut buf[..1], 0).unwrap_err().kind(), io::ErrorKind::InvalidData);
        // Damaged is not absent: something relying on "does it exist"
        // (fencing a lease, say) must not take it for missing.
        assert!(crate::store::backend::exists(&b, "points/c.point").unwrap());
        assert!(crate::store::backend::exists(&b, "points/d.point").unwrap());
        assert!(!crate::store::backend::exists(&b, "points/none.point").unwrap());
    }
}
