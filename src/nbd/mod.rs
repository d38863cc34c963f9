//! Serves any [`VirtualDisk`] (a backup, an image, a flattened chain) over
//! the NBD protocol, so hypervisors and tools read it in place: instant
//! restore.
//!
//! What is spoken: the fixed newstyle handshake with `NBD_OPT_GO`, `INFO`,
//! `LIST`, `ABORT` and `EXPORT_NAME`; export names; block size constraints
//! (minimum 1, preferred 64 KiB, maximum 32 MiB); structured replies;
//! `NBD_OPT_SET_META_CONTEXT` with `base:allocation`. Block status reports
//! data and holes (holes read as zeros) from the disk's allocation map,
//! and a structured read answers holes with `OFFSET_HOLE` chunks, so a
//! client copies a sparse disk without moving its zeros. Read-only exports
//! advertise `CAN_MULTI_CONN`. No TLS: serve on loopback or a Unix socket
//! (the default address is loopback), or behind a tunnel.
//!
//! An export may have a copy-on-write [`CowOverlay`]: it is then writable,
//! and writes, trims and write-zeroes land in the overlay file, never in
//! the disk served. [`CowDisk`] is the merged view, which a backup can
//! capture as an incremental whose change set is the overlay's map.
//!
//! One thread per connection, at most [`ServerOptions::max_connections`]
//! at once (more are closed as they arrive); each connection's memory is
//! bounded (see the session module). [`Server::serve`] returns once its
//! cancel token is cancelled, after every connection has ended.
//!
//! May import: `disk` (what it serves), `cow` (write overlays) and the leaf
//! helpers; a backup reaches it as a `VirtualDisk`, so it needs no `store`.

#[cfg(feature = "fuzzing")]
pub mod proto;
#[cfg(not(feature = "fuzzing"))]
mod proto;
mod session;

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
#[cfg(unix)]
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cancel::CancelToken;
use crate::cow::CowOverlay;
use crate::disk::VirtualDisk;

/// One disk served under a name.
pub struct Export {
    /// The export's name (`nbd://host:port/NAME`).
    pub name: String,
    /// A line describing it, sent to clients that ask.
    pub description: String,
    disk: Arc<dyn VirtualDisk>,
    overlay: Option<Arc<CowOverlay>>,
    cache: Mutex<BlockCache>,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export").field("name", &self.name).field("overlay", &self.overlay.is_some()).finish()
    }
}

/// Decoded blocks of the disk recently read, so small random reads do not
/// each decode a whole chunk: least recently used first out.
struct BlockCache {
    block: u64,
    budget: usize,
    blocks: HashMap<u64, Arc<Vec<u8>>>,
    order: VecDeque<u64>,
}

impl BlockCache {
    /// The block at `index` if cached, marked as just used.
    fn lookup(&mut self, index: u64) -> Option<Arc<Vec<u8>>> {
        let b = self.blocks.get(&index)?.clone();
        if let Some(i) = self.order.iter().position(|x| *x == index) {
            self.order.remove(i);
        }
        self.order.push_back(index);
        Some(b)
    }

    /// Keeps `bytes` as the block at `index`, dropping the least recently
    /// used blocks past the budget. Another connection may have decoded
    /// the same block meanwhile: the newer copy replaces it.
    fn insert(&mut self, index: u64, bytes: Arc<Vec<u8>>) {
        if self.budget < self.block as usize {
            return;
        }
        if self.blocks.insert(index, bytes).is_some()
            && let Some(i) = self.order.iter().position(|x| *x == index)
        {
            self.order.remove(i);
        }
        self.order.push_back(index);
        while self.order.len() * self.block as usize > self.budget {
            match self.order.pop_front() {
                Some(old) => self.blocks.remove(&old),
                None => break,
            };
        }
    }
}

/// Reads block `index` (of `block` bytes; the last may be shorter) of
/// `disk`: the decoding a cache miss pays, done without the cache's lock so
/// connections reading cold blocks do not wait for one another.
fn read_block(disk: &dyn VirtualDisk, block: u64, index: u64) -> crate::Result<Arc<Vec<u8>>> {
    let size = disk.info().virtual_size;
    let start = index.checked_mul(block).filter(|s| *s < size).ok_or_else(|| {
        crate::Error::from(crate::disk::DiskError::Io {
            path: disk.info().path.clone(),
            offset: index.saturating_mul(block),
            source: io::Error::from(io::ErrorKind::UnexpectedEof),
        })
    })?;
    let mut bytes = vec![0u8; block.min(size - start) as usize];
    disk.read_at(&mut bytes, start)?;
    Ok(Arc::new(bytes))
}

/// Bytes of decoded blocks an export keeps by default.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

impl Export {
    /// `disk`, read-only, under `name`.
    pub fn new(name: impl Into<String>, disk: Arc<dyn VirtualDisk>) -> Export {
        let block = cache_block(&*disk);
        Export {
            name: name.into(),
            description: String::new(),
            disk,
            overlay: None,
            cache: Mutex::new(BlockCache {
                block,
                budget: DEFAULT_CACHE_BYTES,
                blocks: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    /// The same export, writable through `overlay` (which must be the
    /// disk's size).
    pub fn with_overlay(mut self, overlay: Arc<CowOverlay>) -> io::Result<Export> {
        if overlay.size() != self.size() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the overlay is {} bytes, the disk {}", overlay.size(), self.size()),
            ));
        }
        self.overlay = Some(overlay);
        Ok(self)
    }

    /// The same export with a description.
    pub fn described(mut self, description: impl Into<String>) -> Export {
        self.description = description.into();
        self
    }

    /// The same export caching at most `bytes` of decoded blocks.
    pub fn cache_bytes(self, bytes: usize) -> Export {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).budget = bytes;
        self
    }

    /// Bytes in the export.
    pub fn size(&self) -> u64 {
        self.disk.info().virtual_size
    }

    fn writable(&self) -> bool {
        self.overlay.is_some()
    }

    fn view(&self) -> ExportView<'_> {
        ExportView { export: self }
    }

    /// Reads the disk served, small reads through the block cache.
    fn read_disk(&self, buf: &mut [u8], offset: u64) -> crate::Result<()> {
        let block = self.cache.lock().unwrap_or_else(|p| p.into_inner()).block;
        if buf.len() as u64 >= block {
            return self.disk.read_at(buf, offset);
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let index = pos / block;
            let cached = self.cache.lock().unwrap_or_else(|p| p.into_inner()).lookup(index);
            let bytes = match cached {
                Some(b) => b,
                None => {
                    let b = read_block(&*self.disk, block, index)?;
                    self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(index, b.clone());
                    b
                }
            };
            let at = (pos - index * block) as usize;
            let n = (buf.len() - done).min(bytes.len() - at);
            buf[done..done + n].copy_from_slice(&bytes[at..at + n]);
            done += n;
        }
        Ok(())
    }
}

/// The cache's block: the disk's block size, within 64 KiB to 2 MiB.
fn cache_block(disk: &dyn VirtualDisk) -> u64 {
    u64::from(disk.info().block_size.unwrap_or(512 * 1024)).clamp(64 * 1024, 2 << 20).next_power_of_two()
}

/// What a session does to an export.
pub(crate) struct ExportView<'a> {
    export: &'a Export,
}

impl ExportView<'_> {
    fn read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let e = self.export;
        match &e.overlay {
            Some(o) => o.read(&*e.disk, buf, offset, &|b, at| e.read_disk(b, at)),
            None => e.read_disk(buf, offset).map_err(io::Error::other),
        }
    }

    fn extents(&self, range: std::ops::Range<u64>) -> io::Result<Vec<(u64, u64, bool)>> {
        let extents = self.merged_extents(range.clone())?;
        Ok(session::read_parts(&extents, range))
    }

    fn status(&self, range: std::ops::Range<u64>) -> io::Result<Vec<(u64, u32)>> {
        let extents = self.merged_extents(range.clone())?;
        Ok(session::status_parts(&extents, range))
    }

    fn merged_extents(&self, range: std::ops::Range<u64>) -> io::Result<Vec<crate::disk::Extent>> {
        let e = self.export;
        let base = e.disk.extents(range.clone()).map_err(io::Error::other)?;
        Ok(match &e.overlay {
            Some(o) => o.merge_extents(base, range),
            None => base,
        })
    }

    fn write(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let e = self.export;
        let o = e.overlay.as_ref().ok_or_else(|| io::Error::from(io::ErrorKind::PermissionDenied))?;
        o.write(offset, bytes, &|b, at| e.read_disk(b, at))
    }

    fn zero(&self, offset: u64, length: u64, _may_trim: bool) -> io::Result<()> {
        let e = self.export;
        let o = e.overlay.as_ref().ok_or_else(|| io::Error::from(io::ErrorKind::PermissionDenied))?;
        o.zero(offset, length, &|b, at| e.read_disk(b, at))
    }

    fn flush(&self) -> io::Result<()> {
        match &self.export.overlay {
            Some(o) => o.flush(),
            None => Ok(()),
        }
    }
}

/// How a server runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerOptions {
    /// Connections served at once; more are closed as they arrive.
    pub max_connections: usize,
    /// Which export an empty name selects (`nbd://host:port`): by default
    /// the only one, when there is exactly one.
    pub default_export: Option<String>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions { max_connections: 64, default_export: None }
    }
}

/// A set of exports to serve.
#[derive(Debug)]
pub struct Server {
    exports: Vec<Arc<Export>>,
    default: Option<usize>,
    options: ServerOptions,
}

/// Where a server listens.
#[derive(Debug)]
pub enum Listener {
    /// A TCP socket.
    Tcp(TcpListener),
    /// A Unix socket.
    #[cfg(unix)]
    Unix(UnixListener),
}

/// How long a reply may wait for a client that does not read: past it the
/// connection is closed, so a stalled client cannot hold a slot (or a
/// shutdown) forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection of either kind.
enum Stream {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl Stream {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s
                .set_read_timeout(t)
                .and_then(|()| s.set_nodelay(true))
                .and_then(|()| s.set_write_timeout(Some(WRITE_TIMEOUT))),
            #[cfg(unix)]
            Stream::Unix(s) => s.set_read_timeout(t).and_then(|()| s.set_write_timeout(Some(WRITE_TIMEOUT))),
        }
    }
    fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            #[cfg(unix)]
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

/// A connection's reads wait for the client, but give up when the server
/// shuts down; writes go out in 256 KiB batches, flushed per reply.
struct Conn {
    stream: Stream,
    cancel: CancelToken,
    out: Vec<u8>,
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let r = match &mut self.stream {
                Stream::Tcp(s) => s.read(buf),
                #[cfg(unix)]
                Stream::Unix(s) => s.read(buf),
            };
            match r {
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    if self.cancel.is_cancelled() {
                        return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "the server is shutting down"));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.extend_from_slice(buf);
        if self.out.len() >= 256 * 1024 {
            self.flush()?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        let r = match &mut self.stream {
            Stream::Tcp(s) => s.write_all(&self.out),
            #[cfg(unix)]
            Stream::Unix(s) => s.write_all(&self.out),
        };
        self.out.clear();
        r
    }
}

impl Server {
    /// A server of `exports` (names must differ).
    pub fn new(exports: Vec<Export>, options: ServerOptions) -> io::Result<Server> {
        let mut names = std::collections::HashSet::new();
        for e in &exports {
            if !names.insert(e.name.as_str()) {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("two exports named {:?}", e.name)));
            }
            if e.name.len() > 4096 {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "an export name is longer than 4096 bytes"));
            }
        }
        let default = match &options.default_export {
            Some(name) => Some(exports.iter().position(|e| &e.name == name).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("no export {name:?} to be the default"))
            })?),
            None => (exports.len() == 1).then_some(0),
        };
        Ok(Server { exports: exports.into_iter().map(Arc::new).collect(), default, options })
    }

    /// Serves until `cancel` is cancelled; then closes the listener, lets
    /// each connection finish the request it is on, and returns.
    pub fn serve(&self, listener: Listener, cancel: &CancelToken) -> io::Result<()> {
        match &listener {
            Listener::Tcp(l) => l.set_nonblocking(true)?,
            #[cfg(unix)]
            Listener::Unix(l) => l.set_nonblocking(true)?,
        }
        let active = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|scope| {
            while !cancel.is_cancelled() {
                let accepted = match &listener {
                    Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
                    #[cfg(unix)]
                    Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
                };
                let stream = match accepted {
                    Ok(s) => s,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => {
                        continue;
                    }
                    // Out of descriptors, say: wait and try again.
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                if active.load(Ordering::SeqCst) >= self.options.max_connections {
                    stream.shutdown();
                    continue;
                }
                active.fetch_add(1, Ordering::SeqCst);
                let active = active.clone();
                let cancel = cancel.clone();
                scope.spawn(move || {
                    let _ = self.connection(stream, cancel);
                    active.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Ok(())
    }

    fn connection(&self, stream: Stream, cancel: CancelToken) -> io::Result<()> {
        // Sockets accepted from a non-blocking listener may inherit it.
        match &stream {
            Stream::Tcp(s) => s.set_nonblocking(false)?,
            #[cfg(unix)]
            Stream::Unix(s) => s.set_nonblocking(false)?,
        }
        stream.set_timeout(Some(Duration::from_millis(250)))?;
        let conn = Conn { stream, cancel, out: Vec::with_capacity(256 * 1024) };
        let session = session::Session::new(conn, &self.exports, self.default);
        match session.run() {
            Ok(()) => Ok(()),
            Err(session::End::Io(e)) => Err(e),
            Err(session::End::Protocol(why)) => Err(io::Error::new(io::ErrorKind::InvalidData, why)),
        }
    }
}

/// Runs one session over `input` (what a client sent) against `exports`,
/// and returns what the server replied: for the fuzz target.
#[cfg(feature = "fuzzing")]
pub fn fuzz_session(input: &[u8], exports: &[Arc<Export>]) -> Vec<u8> {
    struct Duplex<'a> {
        input: &'a [u8],
        output: Vec<u8>,
    }
    impl Read for Duplex<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }
    impl Write for Duplex<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            // Bounded: a reply larger than this is the server's fault.
            assert!(self.output.len() + buf.len() <= 256 << 20, "the server replied without bound");
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut d = Duplex { input, output: Vec::new() };
    let default = (exports.len() == 1).then_some(0);
    let _ = session::Session::new(&mut d, exports, default).run();
    d.output
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(budget_blocks: usize) -> BlockCache {
        BlockCache { block: 4, budget: budget_blocks * 4, blocks: HashMap::new(), order: VecDeque::new() }
    }

    #[test]
    fn the_cache_keeps_the_most_recently_used_blocks_within_its_budget() {
        let mut c = cache(2);
        c.insert(1, Arc::new(vec![1; 4]));
        c.insert(2, Arc::new(vec![2; 4]));
        assert_eq!(c.lookup(1).as_deref(), Some(&vec![1; 4]));
        // 2 is now the least recently used: it goes.
        c.insert(3, Arc::new(vec![3; 4]));
        assert!(c.lookup(2).is_none());
        assert!(c.lookup(1).is_some() && c.lookup(3).is_some());
        // A block decoded twice (two connections missed at once) is held once.
        c.insert(3, Arc::new(vec![9; 4]));
        assert_eq!((c.blocks.len(), c.order.len()), (2, 2));
        assert_eq!(c.lookup(3).as_deref(), Some(&vec![9; 4]));
        // A budget under one block caches nothing.
        let mut none = cache(0);
        none.insert(1, Arc::new(vec![1; 4]));
        assert!(none.lookup(1).is_none());
    }
}
