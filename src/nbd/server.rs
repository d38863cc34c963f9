//! The server: listening on TCP or a Unix socket, a thread per connection
//! up to a bound, and the exports it offers.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
#[cfg(unix)]
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::cancel::CancelToken;
use crate::nbd::export::Export;
use crate::nbd::session;

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
