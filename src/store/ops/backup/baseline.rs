//! The previous backup, read alongside a new one: its chunks under a
//! differencing child's partial slots, and its map for hash comparison.

use crate::disk::{ExtentState, VirtualDisk};
use crate::store::backend::Backend;
use crate::store::crypto::Crypt;
use crate::store::error::{Result, StoreError};
use crate::store::format::manifest::manifest_key;
use crate::store::state::chain::{ChainCursor, Resolved};
use crate::store::state::fetch::fetch_chunk;
use crate::store::state::index::Index;

/// The previous backup's chunks, walked in slot order (memory: one run per
/// manifest of its chain, whatever the disk's size).
pub(super) struct PrevChunks<'a> {
    cursor: ChainCursor<'a>,
    index: &'a Index,
    backend: &'a dyn Backend,
    crypt: &'a Crypt,
    /// The run the cursor last returned: first slot, length, content.
    run: Option<(u64, u64, Resolved)>,
    plain: Vec<u8>,
    record: Vec<u8>,
}

impl<'a> PrevChunks<'a> {
    pub(super) fn new(
        cursor: ChainCursor<'a>,
        index: &'a Index,
        backend: &'a dyn Backend,
        crypt: &'a Crypt,
    ) -> PrevChunks<'a> {
        PrevChunks { cursor, index, backend, crypt, run: None, plain: Vec::new(), record: Vec::new() }
    }

    /// Fills `buf` with slot `slot` of the previous backup (slots must be
    /// asked for in increasing order).
    fn read(&mut self, slot: u64, buf: &mut [u8]) -> Result<()> {
        loop {
            if let Some((start, len, r)) = self.run
                && slot < start + len
            {
                if slot < start {
                    return Err(StoreError::Internal("previous chunks asked for out of order".into()));
                }
                match r {
                    Resolved::Zero => buf.fill(0),
                    Resolved::Data(id) => {
                        fetch_chunk(self.backend, self.index, self.crypt, id, &mut self.plain, &mut self.record)
                            .map_err(|reason| StoreError::ChunkUnavailable {
                                id: id.to_hex(),
                                backup: self.cursor.header().id.to_string(),
                                slot,
                                reason,
                            })?;
                        let n = buf.len().min(self.plain.len());
                        buf[..n].copy_from_slice(&self.plain[..n]);
                        buf[n..].fill(0);
                    }
                }
                return Ok(());
            }
            let next_start = self.run.map_or(0, |(s, l, _)| s + l);
            let Some((r, len)) = self.cursor.next_run()? else {
                let id = &self.cursor.header().id;
                return Err(StoreError::corrupt(
                    self.backend.describe(&manifest_key(id)),
                    "manifest",
                    0,
                    "the previous backup maps fewer slots than the disk has",
                ));
            };
            self.run = Some((next_start, len, r));
        }
    }
}

/// Fills `buf` with a partial slot: the previous backup's bytes, then the
/// source's own data over them. Reads inside the source's own extents
/// never touch its parent.
pub(super) fn read_partial(
    disk: &dyn VirtualDisk,
    prev: &mut PrevChunks<'_>,
    slot_start: u64,
    buf: &mut [u8],
) -> Result<()> {
    let chunk = buf.len() as u64;
    prev.read(slot_start / chunk.max(1), buf)?;
    let end = slot_start + buf.len() as u64;
    let source = StoreError::source(&disk.info().path);
    let own = disk.own_extents(slot_start..end).map_err(source)?;
    for e in own {
        if e.depth == 0 && matches!(e.state, ExtentState::Data | ExtentState::Zero) {
            let at = (e.offset - slot_start) as usize;
            disk.read_at(&mut buf[at..at + e.length as usize], e.offset)
                .map_err(StoreError::source(&disk.info().path))?;
        }
    }
    Ok(())
}

/// The parent's map beside the new backup's, for hash comparison.
pub(super) struct Compare<'a> {
    cursor: ChainCursor<'a>,
}

impl<'a> Compare<'a> {
    pub(super) fn new(cursor: ChainCursor<'a>) -> Compare<'a> {
        Compare { cursor }
    }

    fn short(&self) -> StoreError {
        StoreError::Internal(format!(
            "the parent backup {} maps fewer slots than the disk has",
            self.cursor.header().id
        ))
    }

    /// Advances past `n` slots.
    pub(super) fn skip(&mut self, mut n: u64) -> Result<()> {
        while n > 0 {
            let (_, m) = self.cursor.next_run_limited(n)?.ok_or_else(|| self.short())?;
            n -= m;
        }
        Ok(())
    }

    /// What the parent holds in the next slot.
    pub(super) fn next(&mut self) -> Result<Resolved> {
        self.cursor.next_run_limited(1)?.map(|(r, _)| r).ok_or_else(|| self.short())
    }
}
