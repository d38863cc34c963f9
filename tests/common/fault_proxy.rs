//! An HTTP proxy between a store and an S3 server that fails requests on
//! purpose: transient faults (503 Slow Down, 500, 429, a connection closed
//! before any reply, a slow reply) for a chosen share of requests, and
//! permanent ones (403) for requests a rule picks. One connection per
//! request (every reply says `Connection: close`), a thread each.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does to requests.
pub struct Faults {
    /// Share of requests, 0 to 1, that meet a transient fault.
    pub transient: f64,
    /// Requests ("METHOD /path?query") refused with 403 Forbidden.
    pub permanent: Box<dyn Fn(&str) -> bool + Send + Sync>,
    /// Drop `If-None-Match` and `If-Match` from every request, as S3
    /// servers that ignore conditional writes do (Garage 2.5): a create
    /// "only if absent" then replaces an existing object.
    pub ignore_conditions: bool,
    /// Added before every request is passed on, as a distant endpoint's
    /// round trip would.
    pub delay: Duration,
}

impl Faults {
    /// No faults: every request passes.
    pub fn none() -> Faults {
        Faults { transient: 0.0, permanent: Box::new(|_| false), ignore_conditions: false, delay: Duration::ZERO }
    }
}

/// A running proxy.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Requests seen, and how many met a fault.
    pub seen: Arc<AtomicU64>,
    pub faulted: Arc<AtomicU64>,
}

struct Rng(Mutex<u64>);

impl Rng {
    fn next(&self) -> u64 {
        let mut s = self.0.lock().unwrap();
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }
    fn chance(&self, p: f64) -> bool {
        (self.next() % 1_000_000) as f64 / 1_000_000.0 < p
    }
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`http://HOST:PORT`) with `faults`,
    /// its randomness fixed by `seed`.
    pub fn start(upstream: &str, faults: Faults, seed: u64) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.trim_start_matches("http://").to_string();
        let (seen, faulted) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let shared = Arc::new((faults, Rng(Mutex::new(seed | 1)), upstream, seen.clone(), faulted.clone()));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let (faults, rng, upstream, seen, faulted) = &*shared;
                    let _ = serve(conn, faults, rng, upstream, seen, faulted);
                });
            }
        });
        FaultProxy { endpoint, seen, faulted }
    }
}

/// One request: its first line, its head (with `Connection: close` put
/// in) and its body.
type Request = (String, Vec<u8>, Vec<u8>);

fn read_request(r: &mut BufReader<TcpStream>, ignore_conditions: bool) -> std::io::Result<Option<Request>> {
    let mut head = Vec::new();
    let mut first = String::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if first.is_empty() {
            first = line.trim_end().to_string();
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("connection:")
            || (ignore_conditions && (lower.starts_with("if-none-match:") || lower.starts_with("if-match:")))
        {
            continue;
        }
        if line == "\r\n" {
            head.extend_from_slice(b"Connection: close\r\n\r\n");
            break;
        }
        head.extend_from_slice(line.as_bytes());
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body)?;
    Ok(Some((first, head, body)))
}

fn reply(conn: &mut TcpStream, status: &str, code: &str) -> std::io::Result<()> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected</Message></Error>"
    );
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn serve(
    conn: TcpStream,
    faults: &Faults,
    rng: &Rng,
    upstream: &str,
    seen: &AtomicU64,
    faulted: &AtomicU64,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    let Some((first, head, body)) = read_request(&mut reader, faults.ignore_conditions)? else { return Ok(()) };
    seen.fetch_add(1, Ordering::Relaxed);
    let target = first.rsplit_once(' ').map_or(first.as_str(), |(t, _)| t);
    if (faults.permanent)(target) {
        faulted.fetch_add(1, Ordering::Relaxed);
        return reply(&mut conn, "403 Forbidden", "AccessDenied");
    }
    if rng.chance(faults.transient) {
        faulted.fetch_add(1, Ordering::Relaxed);
        match rng.next() % 5 {
            0 => return reply(&mut conn, "503 Slow Down", "SlowDown"),
            1 => return reply(&mut conn, "500 Internal Server Error", "InternalError"),
            2 => return reply(&mut conn, "429 Too Many Requests", "TooManyRequests"),
            // Closed before any reply.
            3 => return conn.shutdown(std::net::Shutdown::Both),
            // Slow, but within the client's timeout.
            _ => std::thread::sleep(Duration::from_millis(300)),
        }
    }
    std::thread::sleep(faults.delay);
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(&head)?;
    up.write_all(&body)?;
    let mut response = Vec::new();
    up.read_to_end(&mut response)?;
    conn.write_all(&response)
}
