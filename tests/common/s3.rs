//! A local S3 server for the tests: the one `VHDKIT_S3_ENDPOINT` names
//! (`.ci/run` starts moto and sets it), or else a moto server this process
//! starts on a free loopback port and that stops when the process ends. With
//! `VHDKIT_REQUIRE_S3=1` a missing server fails the test instead of skipping.
//!
//! Settings are passed to the store explicitly ([`S3::settings`]) and to
//! child processes through their environment ([`S3::env`]), never by
//! changing this process's environment.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vhdkit::store::{Backend, ObjectBackend};

/// A reachable S3 server and the bucket the tests use.
#[derive(Debug)]
pub struct S3 {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// A bucket that exists.
    pub bucket: String,
    /// A prefix unique to this test process.
    run: String,
}

/// The server, started or found once per process; `None` (after saying
/// so) when there is none and none is required.
pub fn s3() -> Option<&'static S3> {
    static SERVER: OnceLock<Option<S3>> = OnceLock::new();
    SERVER.get_or_init(find_or_start).as_ref()
}

fn required() -> bool {
    std::env::var("VHDKIT_REQUIRE_S3").as_deref() == Ok("1")
}

fn find_or_start() -> Option<S3> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let run = format!("run-{}-{}", now.as_secs(), std::process::id());
    let bucket = std::env::var("VHDKIT_S3_BUCKET").unwrap_or_else(|_| "vhdkit-test".into());
    if let Ok(endpoint) = std::env::var("VHDKIT_S3_ENDPOINT") {
        let s3 = S3 { endpoint: endpoint.trim_end_matches('/').to_string(), bucket, run };
        create_bucket(&s3.endpoint, &s3.bucket, false).unwrap_or_else(|e| panic!("S3 at {}: {e}", s3.endpoint));
        return Some(s3);
    }
    let have_moto =
        Command::new("moto_server").arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if !have_moto {
        assert!(
            !required(),
            "VHDKIT_REQUIRE_S3=1 but no VHDKIT_S3_ENDPOINT and no moto_server (pip install 'moto[server]')"
        );
        eprintln!("SKIPPED: no S3 server (set VHDKIT_S3_ENDPOINT, or pip install 'moto[server]')");
        return None;
    }
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap();
    // A watchdog shell stops the server when this process is gone.
    let script = format!(
        "moto_server -H 127.0.0.1 -p {port} >/dev/null 2>&1 & m=$!; \
         while kill -0 {me} 2>/dev/null; do sleep 1; done; kill $m",
        me = std::process::id()
    );
    // The watchdog outlives every test; a thread reaps it if it ends first.
    let mut watchdog =
        Command::new("sh").args(["-c", &script]).stdin(Stdio::null()).spawn().expect("start moto_server");
    std::thread::spawn(move || watchdog.wait());
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    create_bucket(&endpoint, &bucket, false).unwrap_or_else(|e| panic!("S3 at {endpoint}: {e}"));
    Some(S3 { endpoint, bucket, run })
}

/// Sends one plain HTTP request (moto takes unsigned requests) and returns
/// the status and body.
pub fn http(
    endpoint: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let host = endpoint.trim_start_matches("http://");
    let mut s = TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// Creates `bucket` (with Object Lock when `lock`), if it is not there.
pub fn create_bucket(endpoint: &str, bucket: &str, lock: bool) -> Result<(), String> {
    let headers: &[(&str, &str)] = if lock { &[("x-amz-bucket-object-lock-enabled", "true")] } else { &[] };
    match http(endpoint, "PUT", &format!("/{bucket}"), headers, b"") {
        Ok((200, _)) => Ok(()),
        Ok((409, body)) if body.contains("BucketAlreadyOwnedByYou") || body.contains("BucketAlreadyExists") => Ok(()),
        Ok((status, body)) => Err(format!("create bucket {bucket}: HTTP {status}: {body}")),
        Err(e) => Err(format!("create bucket {bucket}: {e}")),
    }
}

impl S3 {
    /// A fresh store URL for `name`, unique to this process.
    pub fn url(&self, name: &str) -> String {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        format!("s3://{}/{}/{name}-{}", self.bucket, self.run, SEQ.fetch_add(1, Ordering::Relaxed))
    }

    /// A fresh store URL for `name` in `bucket`.
    pub fn url_in(&self, bucket: &str, name: &str) -> String {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        format!("s3://{bucket}/{}/{name}-{}", self.run, SEQ.fetch_add(1, Ordering::Relaxed))
    }

    /// Every version and delete marker under `prefix` of `bucket`: (key,
    /// version id).
    pub fn versions(&self, bucket: &str, prefix: &str) -> Vec<(String, String)> {
        let (status, body) =
            http(&self.endpoint, "GET", &format!("/{bucket}?versions&prefix={prefix}"), &[], b"").unwrap();
        assert_eq!(status, 200, "list versions: {body}");
        let mut out = Vec::new();
        for tag in ["Version", "DeleteMarker"] {
            for block in body.split(&format!("<{tag}>")).skip(1) {
                let field = |name: &str| {
                    block
                        .split(&format!("<{name}>"))
                        .nth(1)
                        .and_then(|r| r.split(&format!("</{name}>")).next())
                        .unwrap_or_default()
                        .to_string()
                };
                out.push((field("Key"), field("VersionId")));
            }
        }
        out
    }

    /// The settings that reach this server.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("aws_endpoint", self.endpoint.clone()),
            ("aws_access_key_id", "test".into()),
            ("aws_secret_access_key", "test".into()),
            ("aws_region", "us-east-1".into()),
            ("aws_allow_http", "true".into()),
        ]
    }

    /// A backend for `url` on this server, through `endpoint` (this server's
    /// or a proxy's).
    pub fn backend_via(&self, url: &str, endpoint: &str) -> ObjectBackend {
        let mut settings = self.settings();
        settings[0].1 = endpoint.to_string();
        let pairs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
        ObjectBackend::s3_with(url, &pairs).unwrap()
    }

    /// A backend for `url` on this server.
    pub fn backend(&self, url: &str) -> std::sync::Arc<dyn Backend> {
        std::sync::Arc::new(self.backend_via(url, &self.endpoint))
    }

    /// Sets the standard AWS environment for a child process.
    pub fn env<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ALLOW_HTTP", "true")
    }
}
