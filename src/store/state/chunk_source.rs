//! Reading many chunks at once: several ranged reads in flight, records
//! that lie together in a pack read together, chunks read ahead for
//! sequential readers, and a bounded cache of decoded chunks for readers
//! that come back.
//!
//! A [`ChunkSource`] answers [`ChunkSource::get`]: the chunks a caller
//! needs now, and the ones it will probably need next. Both are planned
//! into ranged reads ([`readplan`](super::readplan)) and handed to a pool
//! of `connections` threads; what a caller needs is read before what is
//! only read ahead. Each thread reads its range, checks every record in
//! it (CRC, tag, decompression, BLAKE3 against the id) and, for any that
//! fails, reads that chunk again through [`fetch_chunk`], which tries
//! every stored copy. So a chunk handed out is always verified, and a
//! damaged record costs the same as before.
//!
//! Why threads over `Backend::read_at` and not an async stream: the
//! object backend already runs each call on its own runtime, so N threads
//! give N requests in flight; the same plan then passes through every
//! backend wrapper (cache, sealing, locks) unchanged, and a folder gets
//! fewer, larger reads too.
//!
//! Memory, whatever the disk's size: decoded chunks read ahead and not
//! yet taken (at most `read_ahead`), chunks taken and kept (`cache`), the
//! chunks of the calls being answered, and one range per thread (at most
//! `max_request`, or one record).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::store::backend::Backend;
use crate::store::crypto::Crypt;
use crate::store::format::record::decode_record;
use crate::store::model::id::ChunkId;
use crate::store::model::limits::ReadSettings;
use crate::store::state::fetch::fetch_chunk;
use crate::store::state::index::Index;
use crate::store::state::readplan::{Fetch, Want, coalesce};

/// A chunk read ahead and not taken within this long stops counting
/// against the read-ahead budget (the reader went elsewhere) and may be
/// dropped like any cached chunk.
const STALE: Duration = Duration::from_secs(30);
/// Cached entries kept at most, whatever their size (failures are small).
const MAX_KEPT: usize = 1 << 16;

/// A chunk's decoded bytes, or why no copy could be read.
pub(crate) type Chunk = std::result::Result<Arc<ChunkBytes>, String>;

/// Decoded bytes whose buffer goes back to its source's pool when the
/// last holder drops it. Reading threads decode into pooled buffers: a
/// fresh 512 KiB allocation per chunk, made on one of many threads and
/// freed on another, leaves every thread's allocator arena holding freed
/// chunks, and a restore's memory then grows with the connections.
#[derive(Debug)]
pub(crate) struct ChunkBytes {
    bytes: Vec<u8>,
    pool: std::sync::Weak<Pool>,
}

impl std::ops::Deref for ChunkBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for ChunkBytes {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.give(std::mem::take(&mut self.bytes));
        }
    }
}

/// Buffers not in use, kept up to a number of bytes.
#[derive(Debug)]
struct Pool {
    /// The buffers, and the bytes they hold.
    free: Mutex<(Vec<Vec<u8>>, usize)>,
    keep: usize,
}

impl Pool {
    fn new(keep: u64) -> Arc<Pool> {
        Arc::new(Pool { free: Mutex::new((Vec::new(), 0)), keep: keep as usize })
    }

    fn take(&self) -> Vec<u8> {
        let Ok(mut f) = self.free.lock() else { return Vec::new() };
        let buf = f.0.pop().unwrap_or_default();
        f.1 -= buf.capacity();
        buf
    }

    fn give(&self, buf: Vec<u8>) {
        if let Ok(mut f) = self.free.lock()
            && f.1 + buf.capacity() <= self.keep
        {
            f.1 += buf.capacity();
            f.0.push(buf);
        }
    }
}

enum Entry {
    /// A thread is reading it.
    Pending,
    /// Read; `taken` once a caller had it (it is then only cached).
    Done { chunk: Chunk, tick: u64, taken: bool, at: Instant },
}

#[derive(Default)]
struct State {
    entries: HashMap<ChunkId, Entry>,
    /// Taken chunks by last use: dropped oldest first past `cache`.
    taken: BTreeMap<u64, ChunkId>,
    /// Chunks read ahead, not yet taken, by arrival.
    ahead: BTreeMap<u64, ChunkId>,
    tick: u64,
    taken_bytes: u64,
    ahead_bytes: u64,
    /// Decoded bytes of chunks being read.
    pending_bytes: u64,
}

impl State {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// Marks `id` taken now (moving it from the read-ahead set).
    fn take(&mut self, id: ChunkId) -> Option<Chunk> {
        let tick = self.next_tick();
        let Some(Entry::Done { chunk, tick: old, taken, .. }) = self.entries.get_mut(&id) else { return None };
        let len = chunk.as_ref().map_or(0, |b| b.len() as u64);
        if *taken {
            self.taken.remove(old);
        } else {
            self.ahead.remove(old);
            self.ahead_bytes -= len;
            self.taken_bytes += len;
            *taken = true;
        }
        *old = tick;
        self.taken.insert(tick, id);
        let chunk = chunk.clone();
        // A failure is told once: the next read tries the copies again.
        if chunk.is_err() {
            self.taken.remove(&tick);
            self.entries.remove(&id);
        }
        Some(chunk)
    }

    /// Drops taken chunks past the cache's budget, and counts chunks read
    /// ahead long ago as merely cached.
    fn trim(&mut self, cache: u64) {
        let now = Instant::now();
        while let Some((&tick, &id)) = self.ahead.first_key_value() {
            let Some(Entry::Done { chunk, taken, at, .. }) = self.entries.get_mut(&id) else { break };
            if now.duration_since(*at) < STALE {
                break;
            }
            let len = chunk.as_ref().map_or(0, |b| b.len() as u64);
            *taken = true;
            self.ahead.remove(&tick);
            self.ahead_bytes -= len;
            self.taken_bytes += len;
            self.taken.insert(tick, id);
        }
        while self.taken_bytes > cache || self.taken.len() > MAX_KEPT {
            let Some((_, id)) = self.taken.pop_first() else { break };
            if let Some(Entry::Done { chunk: Ok(b), .. }) = self.entries.remove(&id) {
                self.taken_bytes -= b.len() as u64;
            }
        }
    }
}

struct Shared {
    backend: Arc<dyn Backend>,
    index: Arc<Index>,
    crypt: Crypt,
    settings: ReadSettings,
    state: Mutex<State>,
    done: Condvar,
    /// Range buffers not in use; at most as many as the window holds ranges.
    ranges: Arc<Pool>,
    /// Chunk buffers not in use; at most as many as window and cache hold.
    chunks: Arc<Pool>,
}

impl Shared {
    /// `plain` as a chunk whose buffer returns to the pool.
    fn chunk(&self, plain: Vec<u8>) -> Arc<ChunkBytes> {
        Arc::new(ChunkBytes { bytes: plain, pool: Arc::downgrade(&self.chunks) })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The pool's queues: what a caller waits for, and what is read ahead.
struct Queues {
    need: Sender<Fetch>,
    ahead: Sender<Fetch>,
}

/// Reads chunks of one store for one reader: see the module documentation.
/// Its threads start at the first read and end when it is dropped.
pub(crate) struct ChunkSource {
    shared: Arc<Shared>,
    queues: OnceLock<Queues>,
}

impl std::fmt::Debug for ChunkSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkSource").field("settings", &self.shared.settings).finish()
    }
}

impl ChunkSource {
    pub(crate) fn new(backend: Arc<dyn Backend>, index: Arc<Index>, crypt: Crypt, settings: ReadSettings) -> Self {
        let shared = Arc::new(Shared {
            backend,
            index,
            crypt,
            settings,
            state: Mutex::new(State::default()),
            done: Condvar::new(),
            ranges: Pool::new(settings.read_ahead + 2 * settings.max_request),
            chunks: Pool::new(settings.read_ahead / 2),
        });
        ChunkSource { shared, queues: OnceLock::new() }
    }

    /// The settings it reads with.
    pub(crate) fn settings(&self) -> &ReadSettings {
        &self.shared.settings
    }

    /// Whether `id` is cached or being read: a reader need not plan it ahead again.
    pub(crate) fn has(&self, id: &ChunkId) -> bool {
        self.shared.lock().entries.contains_key(id)
    }

    fn queues(&self) -> &Queues {
        self.queues.get_or_init(|| {
            let (need, need_rx) = crossbeam_channel::unbounded();
            let (ahead, ahead_rx) = crossbeam_channel::unbounded();
            for _ in 0..self.shared.settings.connections {
                let (shared, need_rx, ahead_rx) = (self.shared.clone(), need_rx.clone(), ahead_rx.clone());
                // A thread that cannot start leaves the others to do its
                // share; with none at all, `get` reads on the caller's thread.
                let _ = std::thread::Builder::new()
                    .name("vhdkit-read".into())
                    .spawn(move || worker(&shared, &need_rx, &ahead_rx));
            }
            Queues { need, ahead }
        })
    }

    /// The chunks `need`, in order (each verified, or why no copy could be
    /// read), once they are all read; meanwhile starts reading `ahead`, as
    /// far as the read-ahead budget allows, for the calls to come.
    pub(crate) fn get(&self, need: &[ChunkId], ahead: &[ChunkId]) -> Vec<Chunk> {
        let s = &*self.shared;
        let (mut now, mut later) = (Vec::new(), Vec::new());
        let mut failed: HashMap<ChunkId, String> = HashMap::new();
        {
            let mut st = s.lock();
            st.trim(s.settings.cache);
            for id in need {
                if st.entries.contains_key(id) {
                    continue;
                }
                match s.index.locations(id).next() {
                    Some(loc) => {
                        st.entries.insert(*id, Entry::Pending);
                        st.pending_bytes += u64::from(loc.plain_len);
                        now.push(Want { id: *id, loc: *loc });
                    }
                    None => {
                        failed.insert(*id, "no stored copy".into());
                    }
                }
            }
            for id in ahead {
                if st.entries.contains_key(id) {
                    continue;
                }
                let Some(loc) = s.index.locations(id).next() else { continue };
                let plain = u64::from(loc.plain_len);
                if st.pending_bytes + st.ahead_bytes + plain > s.settings.read_ahead {
                    break;
                }
                st.entries.insert(*id, Entry::Pending);
                st.pending_bytes += plain;
                later.push(Want { id: *id, loc: *loc });
            }
        }
        let (gap, max) = (s.settings.max_gap, s.settings.max_request);
        let queues = self.queues();
        for f in coalesce(&now, gap, max) {
            if let Err(e) = queues.need.send(f) {
                // No thread to read it: read it here.
                run_fetch(s, e.into_inner(), &mut Vec::new());
            }
        }
        for f in coalesce(&later, gap, max) {
            if let Err(e) = queues.ahead.send(f) {
                run_fetch(s, e.into_inner(), &mut Vec::new());
            }
        }
        let mut st = s.lock();
        let mut out = Vec::with_capacity(need.len());
        for id in need {
            if let Some(reason) = failed.get(id) {
                out.push(Err(reason.clone()));
                continue;
            }
            loop {
                match st.entries.get(id) {
                    Some(Entry::Done { .. }) => {
                        out.push(st.take(*id).unwrap_or_else(|| Err("lost from the cache".into())));
                        break;
                    }
                    Some(Entry::Pending) => st = s.done.wait(st).unwrap_or_else(|p| p.into_inner()),
                    // Dropped from the cache (or told failed to an earlier
                    // duplicate of this id in `need`) while this call waited:
                    // read it here, once more.
                    None => {
                        drop(st);
                        out.push(read_one(s, *id));
                        st = s.lock();
                        break;
                    }
                }
            }
        }
        out
    }
}

/// One chunk through every stored copy, on the caller's thread.
fn read_one(s: &Shared, id: ChunkId) -> Chunk {
    let (mut plain, mut record) = (s.chunks.take(), Vec::new());
    fetch_chunk(&*s.backend, &s.index, &s.crypt, id, &mut plain, &mut record).map(|()| s.chunk(plain))
}

/// A reading thread: what callers wait for first, then what is read ahead;
/// but every fifth read is a read-ahead when one waits, so a caller that
/// waits on a chunk another caller planned ahead is never starved by a
/// stream of others' needs.
fn worker(s: &Shared, need: &Receiver<Fetch>, ahead: &Receiver<Fetch>) {
    let mut turn = 0u32;
    loop {
        turn = turn.wrapping_add(1);
        let first = if turn.is_multiple_of(5) { ahead.try_recv().or_else(|_| need.try_recv()) } else { need.try_recv() };
        let next = first.or_else(|_| {
            crossbeam_channel::select! {
                recv(need) -> f => f,
                recv(ahead) -> f => f,
            }
        });
        match next {
            Ok(f) => {
                // Range buffers come from a shared pool: one allocated and
                // freed per request would leave every thread's allocator
                // arena holding freed ranges (hundreds of MiB at 64
                // connections), and one kept per thread would too.
                let mut raw = s.ranges.take();
                run_fetch(s, f, &mut raw);
                s.ranges.give(raw);
            }
            // A queue closed: the source was dropped.
            Err(_) => return,
        }
    }
}

/// Reads one range, checks each record in it, and posts the results.
fn run_fetch(s: &Shared, f: Fetch, raw: &mut Vec<u8>) {
    let ids: Vec<(ChunkId, u32)> = f.members.iter().map(|m| (m.id, m.loc.plain_len)).collect();
    let results = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_fetch(s, &f, raw)))
        .unwrap_or_else(|_| ids.iter().map(|_| Err("a reading thread failed (internal error)".to_string())).collect());
    let mut st = s.lock();
    for ((id, plain), chunk) in ids.into_iter().zip(results) {
        st.pending_bytes -= u64::from(plain);
        let len = chunk.as_ref().map_or(0, |b| b.len() as u64);
        let tick = st.next_tick();
        st.ahead.insert(tick, id);
        st.ahead_bytes += len;
        st.entries.insert(id, Entry::Done { chunk, tick, taken: false, at: Instant::now() });
    }
    drop(st);
    s.done.notify_all();
}

fn read_fetch(s: &Shared, f: &Fetch, raw: &mut Vec<u8>) -> Vec<Chunk> {
    let key = f.pack.key();
    raw.clear();
    raw.resize(f.len() as usize, 0);
    let read = s.backend.read_at(&key, raw, f.start);
    let mut plain = s.chunks.take();
    let out = f
        .members
        .iter()
        .map(|m| {
            let at = (m.loc.offset - f.start) as usize;
            let record = raw.get(at..at + m.loc.length as usize);
            if read.is_ok()
                && let Some(record) = record
                && decode_record(record, m.id, &mut plain, &s.crypt).is_ok()
            {
                return Ok(s.chunk(std::mem::replace(&mut plain, s.chunks.take())));
            }
            // The range or this record failed: every copy, one by one.
            read_one(s, m.id)
        })
        .collect();
    s.chunks.give(plain);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry_count(src: &ChunkSource) -> usize {
        src.shared.lock().entries.len()
    }

    #[test]
    fn a_source_with_nothing_stored_says_so_and_keeps_nothing() {
        let src = ChunkSource::new(
            Arc::new(crate::store::backend::MemoryBackend::new()),
            Arc::new(Index::default()),
            Crypt::Plain,
            ReadSettings::new(4, 1 << 20),
        );
        let got = src.get(&[ChunkId([1; 32]), ChunkId([1; 32])], &[ChunkId([2; 32])]);
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|c| c.as_ref().is_err_and(|e| e.contains("no stored copy"))));
        assert_eq!(entry_count(&src), 0);
    }
}
