//! A read-only view of a source with in-memory patches laid over it.
//!
//! Replaying a dirty VHDX log must not write to the image (a backup tool never
//! modifies its source), so the replayed state is this overlay: the file's
//! bytes, then each logged write applied in order, later writes winning. The
//! logical size may exceed the file's when the log extends the file; bytes
//! past the file's end read as zeros unless a patch covers them.
//!
//! Memory: the patches' bytes (at most the log's data sectors) plus one map
//! node per patch.

use std::collections::BTreeMap;
use std::io;

use super::ReadAt;

#[derive(Debug, Clone)]
enum Patch {
    Zero,
    Bytes(Vec<u8>),
}

/// A source with patches; see the module documentation.
#[derive(Debug)]
pub struct LogOverlay<R> {
    base: R,
    /// The base's size when the overlay was made: below it, a short read is
    /// an error, not zeros.
    base_size: u64,
    size: u64,
    /// Non-overlapping patches keyed by start offset: (end, content).
    patches: BTreeMap<u64, (u64, Patch)>,
}

impl<R: ReadAt> LogOverlay<R> {
    /// An overlay with no patches over `base`, `size` bytes long (at least
    /// the base's size).
    pub fn new(base: R, size: u64) -> Self {
        let base_size = base.size();
        LogOverlay { base, base_size, size: size.max(base_size), patches: BTreeMap::new() }
    }

    /// Lays `bytes` over `offset..offset + bytes.len()`.
    pub fn write(&mut self, offset: u64, bytes: &[u8]) {
        let end = offset.saturating_add(bytes.len() as u64);
        self.insert(offset, end, Patch::Bytes(bytes.to_vec()));
    }

    /// Lays zeros over `offset..offset + len`.
    pub fn zero(&mut self, offset: u64, len: u64) {
        self.insert(offset, offset.saturating_add(len), Patch::Zero);
    }

    /// Number of patches (for tests and diagnostics).
    pub fn patch_count(&self) -> usize {
        self.patches.len()
    }

    /// The source underneath.
    pub fn base(&self) -> &R {
        &self.base
    }

    fn insert(&mut self, start: u64, end: u64, patch: Patch) {
        if start >= end {
            return;
        }
        self.size = self.size.max(end);
        // Cut every existing patch that overlaps [start, end) down to the
        // parts outside it.
        let overlapping: Vec<u64> =
            self.patches.range(..end).rev().take_while(|(_, (e, _))| *e > start).map(|(s, _)| *s).collect();
        for s in overlapping {
            let Some((e, old)) = self.patches.remove(&s) else { continue };
            if s < start {
                self.patches.insert(s, (start, slice_patch(&old, s, s, start)));
            }
            if e > end {
                self.patches.insert(end, (e, slice_patch(&old, s, end, e)));
            }
        }
        self.patches.insert(start, (end, patch));
    }
}

/// The part `from..to` of a patch that starts at `origin`.
fn slice_patch(p: &Patch, origin: u64, from: u64, to: u64) -> Patch {
    match p {
        Patch::Zero => Patch::Zero,
        Patch::Bytes(b) => Patch::Bytes(b[(from - origin) as usize..(to - origin) as usize].to_vec()),
    }
}

impl<R: ReadAt> ReadAt for LogOverlay<R> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(self.size - offset) as usize;
        let buf = &mut buf[..len];
        let end = offset + len as u64;

        // The base's bytes, zero-filled past its end (a file extended by a
        // replayed log). Below its end the base must deliver every byte.
        let from_base = (self.base_size.saturating_sub(offset) as usize).min(len);
        self.base.read_exact_at(&mut buf[..from_base], offset)?;
        buf[from_base..].fill(0);

        // Patches overlapping [offset, end), in address order.
        let first =
            self.patches.range(..=offset).next_back().filter(|(_, (e, _))| *e > offset).map_or(offset, |(s, _)| *s);
        for (&s, (e, patch)) in self.patches.range(first..end) {
            let from = s.max(offset);
            let to = (*e).min(end);
            if from >= to {
                continue;
            }
            let dst = &mut buf[(from - offset) as usize..(to - offset) as usize];
            match patch {
                Patch::Zero => dst.fill(0),
                Patch::Bytes(b) => dst.copy_from_slice(&b[(from - s) as usize..(to - s) as usize]),
            }
        }
        Ok(len)
    }

    fn size(&self) -> u64 {
        self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn later_writes_win_and_the_size_grows() {
        let base = vec![1u8; 16];
        let mut o = LogOverlay::new(base, 16);
        o.write(4, &[9; 8]);
        o.zero(6, 2);
        o.write(14, &[7; 4]);
        assert_eq!(o.size(), 18);
        let mut buf = vec![0u8; 18];
        o.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(buf, vec![1, 1, 1, 1, 9, 9, 0, 0, 9, 9, 9, 9, 1, 1, 7, 7, 7, 7]);
    }

    proptest! {
        /// The overlay reads exactly like applying the writes to a copy.
        #[test]
        fn matches_a_flat_model(
            base_len in 0usize..200,
            ops in prop::collection::vec((0u64..250, 1usize..40, any::<u8>(), any::<bool>()), 0..20),
            reads in prop::collection::vec((0u64..260, 0usize..80), 1..10),
        ) {
            let base: Vec<u8> = (0..base_len).map(|i| i as u8 ^ 0x55).collect();
            let mut model = base.clone();
            let mut o = LogOverlay::new(base, base_len as u64);
            for (off, len, fill, zero) in ops {
                let end = off as usize + len;
                if model.len() < end { model.resize(end, 0); }
                if zero {
                    o.zero(off, len as u64);
                    model[off as usize..end].fill(0);
                } else {
                    o.write(off, &vec![fill; len]);
                    model[off as usize..end].fill(fill);
                }
            }
            prop_assert_eq!(o.size(), model.len() as u64);
            for (off, len) in reads {
                let mut buf = vec![0xEEu8; len];
                let n = o.read_at(&mut buf, off).unwrap();
                let want: &[u8] = model.get(off as usize..).map_or(&[], |m| &m[..m.len().min(len)]);
                prop_assert_eq!(&buf[..n], want);
            }
        }
    }
}
