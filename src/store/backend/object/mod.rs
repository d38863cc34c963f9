//! A store in an object store bucket: S3 and compatible (feature `s3`),
//! Azure Blob (`azure`), Google Cloud Storage (`gcp`), through the
//! `object_store` crate.
//!
//! `object_store` is asynchronous; this backend drives it from the store's
//! synchronous calls on a private tokio runtime (two worker threads). A
//! call hands its future to that runtime and waits on a channel for the
//! result, so it never enters a caller's runtime: calling from inside
//! another tokio runtime does not deadlock, though it blocks that worker
//! thread for the call (use `spawn_blocking` there, as for any blocking I/O).
//!
//! Objects are created only if absent: small ones with a conditional put
//! (`If-None-Match: *`); packs and other large objects as multipart uploads
//! of 8 MiB parts (bounded memory), completed after a check that the key is
//! still free. `object_store` 0.14 completes multipart uploads without a
//! condition; a pack's key holds 128 random bits, so no two writers can
//! meet there, and the check guards the rest. Transient failures (5xx,
//! 429, timeouts, resets) are retried with backoff by `object_store`'s
//! retry layer; the rest become `io::Error`s naming the key.
//!
//! May import: the rest of `backend` and `model`; `writer.rs` imports
//! this file.

mod writer;

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::store::backend::{Backend, Counters, ObjectInfo, ObjectWriter, Traffic};
#[cfg(feature = "s3")]
use crate::store::model::object_lock::LockMode;
#[cfg(feature = "s3")]
use crate::store::model::time::Moment;
use writer::Writer;

/// Bytes per multipart part, and the size below which an object is one put.
pub(super) const PART: usize = 8 << 20;

/// A store under a prefix of a bucket.
#[derive(Clone)]
pub struct ObjectBackend {
    store: Arc<dyn ObjectStore>,
    /// The same store as S3, for the Object Lock requests it signs.
    #[cfg(feature = "s3")]
    s3: Option<Arc<object_store::aws::AmazonS3>>,
    prefix: String,
    url: String,
    runtime: Arc<tokio::runtime::Runtime>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for ObjectBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectBackend").field("url", &self.url).finish()
    }
}

pub(super) fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// An `object_store` error as an `io::Error` of the right kind.
pub(super) fn io_error(e: object_store::Error) -> io::Error {
    use object_store::Error as E;
    let kind = match &e {
        E::NotFound { .. } => io::ErrorKind::NotFound,
        E::AlreadyExists { .. } | E::Precondition { .. } => io::ErrorKind::AlreadyExists,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => io::ErrorKind::PermissionDenied,
        E::NotSupported { .. } | E::NotImplemented { .. } => io::ErrorKind::Unsupported,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e.to_string())
}

impl ObjectBackend {
    /// A backend over `store` under `prefix` (`""`: the bucket's root);
    /// `url` names it in messages.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, url: &str) -> io::Result<ObjectBackend> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vhdkit-object-store")
            .enable_all()
            .build()?;
        Ok(ObjectBackend {
            store,
            #[cfg(feature = "s3")]
            s3: None,
            prefix: prefix.trim_matches('/').to_string(),
            url: url.trim_end_matches('/').to_string(),
            runtime: Arc::new(runtime),
            counters: Arc::new(Counters::default()),
        })
    }

    /// An S3 (or compatible) bucket from `s3://BUCKET/PREFIX`, with
    /// credentials, region and endpoint from the standard environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION` or
    /// `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP=true`).
    #[cfg(feature = "s3")]
    pub fn s3(url: &str) -> io::Result<ObjectBackend> {
        ObjectBackend::s3_with(url, &[])
    }

    /// As [`ObjectBackend::s3`], with settings that override the
    /// environment's: `object_store`'s S3 keys (`aws_endpoint`,
    /// `aws_access_key_id`, `aws_secret_access_key`, `aws_region`,
    /// `aws_allow_http`, ...), for embedders that keep credentials
    /// elsewhere than in the process environment.
    #[cfg(feature = "s3")]
    pub fn s3_with(url: &str, settings: &[(&str, &str)]) -> io::Result<ObjectBackend> {
        use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
        let rest = url.strip_prefix("s3://").ok_or_else(|| other(format!("{url} is not an s3:// URL")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        tls_crypto();
        let mut builder = AmazonS3Builder::from_env();
        // object_store reads AWS_ENDPOINT; the AWS tools' name is AWS_ENDPOINT_URL.
        if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
            builder = builder.with_endpoint(endpoint);
        }
        if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none() {
            builder = builder.with_region("us-east-1");
        }
        for (key, value) in settings {
            let key: AmazonS3ConfigKey = key.parse().map_err(|_| other(format!("{key} is not an S3 setting")))?;
            builder = builder.with_config(key, *value);
        }
        let store = builder
            .with_bucket_name(bucket)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_retry(retry_config())
            .build()
            .map_err(io_error)?;
        let store = Arc::new(store);
        let mut backend = ObjectBackend::new(store.clone(), prefix, url)?;
        backend.s3 = Some(store);
        Ok(backend)
    }

    /// An Azure Blob container from `az://CONTAINER/PREFIX`, configured
    /// from the `AZURE_*` environment.
    #[cfg(feature = "azure")]
    pub fn azure(url: &str) -> io::Result<ObjectBackend> {
        use object_store::azure::MicrosoftAzureBuilder;
        let rest = url.strip_prefix("az://").ok_or_else(|| other(format!("{url} is not an az:// URL")))?;
        let (container, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        tls_crypto();
        let store = MicrosoftAzureBuilder::from_env()
            .with_container_name(container)
            .with_retry(retry_config())
            .build()
            .map_err(io_error)?;
        ObjectBackend::new(Arc::new(store), prefix, url)
    }

    /// A Google Cloud Storage bucket from `gs://BUCKET/PREFIX`, configured
    /// from the `GOOGLE_*` environment.
    #[cfg(feature = "gcp")]
    pub fn gcs(url: &str) -> io::Result<ObjectBackend> {
        use object_store::gcp::GoogleCloudStorageBuilder;
        let rest = url.strip_prefix("gs://").ok_or_else(|| other(format!("{url} is not a gs:// URL")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        tls_crypto();
        let store = GoogleCloudStorageBuilder::from_env()
            .with_bucket_name(bucket)
            .with_retry(retry_config())
            .build()
            .map_err(io_error)?;
        ObjectBackend::new(Arc::new(store), prefix, url)
    }

    /// Counts a request, and names it on stderr when `VHDKIT_TRACE_REQUESTS`
    /// is set (to see what an operation costs).
    fn request(&self, op: &str, key: &str) {
        self.counters.request();
        static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if *TRACE.get_or_init(|| std::env::var_os("VHDKIT_TRACE_REQUESTS").is_some()) {
            eprintln!("vhdkit: {op} {}", self.describe(key).display());
        }
    }

    /// The object path of a key, taken as it is: `ObjectPath::from` would
    /// percent-encode characters such as the `~` of a manifest generation,
    /// and listings would then name keys the store does not know.
    fn path(&self, key: &str) -> ObjectPath {
        let full = if self.prefix.is_empty() { key.to_string() } else { format!("{}/{key}", self.prefix) };
        ObjectPath::parse(&full).unwrap_or_else(|_| ObjectPath::from(full.as_str()))
    }

    /// The store key of an object path.
    fn key_of(&self, path: &ObjectPath) -> Option<String> {
        let p = path.as_ref();
        if self.prefix.is_empty() {
            return Some(p.to_string());
        }
        p.strip_prefix(&self.prefix)?.strip_prefix('/').map(str::to_string)
    }

    /// Runs `fut` on the private runtime and waits for it.
    fn block<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> io::Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| other("the object store runtime stopped"))
    }
}

#[cfg(feature = "s3")]
use object_store::signer::Method as http_method;

/// The `io::ErrorKind` of an HTTP status.
#[cfg(feature = "s3")]
fn status_kind(status: u16) -> io::ErrorKind {
    match status {
        404 => io::ErrorKind::NotFound,
        401 | 403 => io::ErrorKind::PermissionDenied,
        400 | 405 | 501 => io::ErrorKind::Unsupported,
        _ => io::ErrorKind::Other,
    }
}

#[cfg(feature = "s3")]
impl ObjectBackend {
    /// Sends one S3 request object_store has no call for, presigned by
    /// object_store with the store's credentials (`headers` are signed
    /// too), with retries of transient failures. Returns the status, the
    /// headers and the body.
    fn s3_request(
        &self,
        method: http_method,
        key: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> io::Result<(u16, object_store::signer::HeaderMap, String)> {
        use object_store::signer::{HeaderName, HeaderValue, SignedUrlOptions, Signer};
        let s3 = self.s3.clone().ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "not an S3 store"))?;
        let path = if key.is_empty() { ObjectPath::default() } else { self.path(key) };
        let mut options = SignedUrlOptions::new().with_query(query.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut header_map = object_store::signer::HeaderMap::new();
        for (k, v) in headers {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(other)?;
            let value = HeaderValue::from_str(v).map_err(other)?;
            options = options.with_signed_header(name.clone(), value.clone());
            header_map.insert(name, value);
        }
        let op = format!("{method} ?{}", query.iter().map(|(k, _)| *k).collect::<Vec<_>>().join("&"));
        let mut delay = Duration::from_millis(100);
        for attempt in 0.. {
            self.request(&op, key);
            let (s3, path, options, method, header_map, body) =
                (s3.clone(), path.clone(), options.clone(), method.clone(), header_map.clone(), body.clone());
            let result = self.block(async move {
                let url = s3
                    .signed_url_opts(method.clone(), &path, Duration::from_secs(300), &options)
                    .await
                    .map_err(io_error)?;
                // A bucket-level request is signed for "/bucket/"; its
                // query may carry a blank subresource (`object-lock=`).
                tls_crypto();
                let client = reqwest::Client::new();
                let response = client
                    .request(method, url.as_str())
                    .headers(header_map)
                    .body(body)
                    .timeout(Duration::from_secs(60))
                    .send()
                    .await
                    .map_err(other)?;
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                let text = response.text().await.unwrap_or_default();
                Ok::<_, io::Error>((status, headers, text))
            })?;
            let transient = match &result {
                Ok((status, _, _)) => *status >= 500 || *status == 429,
                Err(_) => true,
            };
            if !transient || attempt >= 8 {
                return result;
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(10));
        }
        unreachable!("the loop returns")
    }
}

/// Makes ring rustls's process-wide crypto provider unless the embedding
/// program chose one first. The HTTP clients (object_store's and the Object
/// Lock requests') take TLS from that default: vhdkit builds rustls with ring
/// only, the crypto library its encryption already uses, so without this a
/// client would have no provider and panic when built.
fn tls_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means a provider is installed already: the embedder's, kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Retries with backoff: transient failures (5xx, 429, timeouts,
/// connection resets) up to 10 times within 3 minutes.
fn retry_config() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 10,
        retry_timeout: Duration::from_secs(180),
        backoff: object_store::BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            base: 2.0,
        },
    }
}

impl Backend for ObjectBackend {
    /// Sixteen: at 20-50 ms a request, two in flight (a core count) read
    /// a 2 TB disk in most of a day; sixteen ranged GETs of a few MiB keep
    /// a gigabit link busy.
    fn read_concurrency(&self) -> usize {
        16
    }

    fn describe(&self, key: &str) -> PathBuf {
        if key.is_empty() { PathBuf::from(&self.url) } else { PathBuf::from(format!("{}/{key}", self.url)) }
    }

    fn read_at(&self, key: &str, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset.checked_add(buf.len() as u64).ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let (store, path) = (self.store.clone(), self.path(key));
        self.request("GET range", key);
        let got = self.block(async move { store.get_range(&path, offset..end).await })?;
        let short = || io::Error::new(io::ErrorKind::UnexpectedEof, format!("{key} ends before byte {end}"));
        match got {
            Ok(b) if b.len() == buf.len() => {
                buf.copy_from_slice(&b);
                Ok(())
            }
            Ok(_) => Err(short()),
            Err(e @ object_store::Error::NotFound { .. }) => Err(io_error(e)),
            // A range past the end is refused by the server; tell that
            // apart from other failures by the object's size.
            Err(e) => match self.stat(key) {
                Ok(info) if info.size < end => Err(short()),
                _ => Err(io_error(e)),
            },
        }
    }

    fn read_all(&self, key: &str) -> io::Result<Vec<u8>> {
        let (store, path) = (self.store.clone(), self.path(key));
        self.request("GET", key);
        let bytes = self.block(async move { store.get(&path).await?.bytes().await })?.map_err(io_error)?;
        Ok(bytes.to_vec())
    }

    fn stat(&self, key: &str) -> io::Result<ObjectInfo> {
        let (store, path) = (self.store.clone(), self.path(key));
        self.request("HEAD", key);
        let meta = self.block(async move { store.head(&path).await })?.map_err(io_error)?;
        Ok(ObjectInfo { key: key.to_string(), size: meta.size, modified: meta.last_modified.into() })
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<ObjectInfo>> {
        let folder = prefix.trim_end_matches('/');
        let path = self.path(folder);
        let store = self.store.clone();
        self.request("LIST", prefix);
        let metas =
            self.block(async move { store.list(Some(&path)).try_collect::<Vec<_>>().await })?.map_err(io_error)?;
        // A listing comes in pages of at most 1,000 keys, a request each.
        for _ in 1..metas.len().div_ceil(1000) {
            self.counters.request();
        }
        let mut out: Vec<ObjectInfo> = metas
            .into_iter()
            .filter_map(|m| {
                let key = self.key_of(&m.location)?;
                Some(ObjectInfo { key, size: m.size, modified: SystemTime::from(m.last_modified) })
            })
            .filter(|o| folder.is_empty() || o.key.starts_with(&format!("{folder}/")))
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn create(&self, key: &str) -> io::Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(Writer::new(self.clone(), key)))
    }

    fn traffic(&self) -> Traffic {
        self.counters.snapshot()
    }

    #[cfg(feature = "s3")]
    fn lock_support(&self) -> io::Result<()> {
        let (status, _, body) = self.s3_request(http_method::GET, "", &[("object-lock", "")], &[], Vec::new())?;
        let enabled = status == 200 && body.contains("<ObjectLockEnabled>Enabled</ObjectLockEnabled>");
        if enabled {
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("the bucket of {} does not have S3 Object Lock enabled (HTTP {status})", self.url),
        ))
    }

    #[cfg(feature = "s3")]
    fn retain(&self, key: &str, mode: LockMode, until: SystemTime) -> io::Result<()> {
        use base64::Engine as _;
        use md5::Digest as _;
        let date = Moment::from(until).rfc3339();
        let date = format!("{}Z", date.get(..19).unwrap_or(&date));
        let body = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{}</Mode><RetainUntilDate>{date}</RetainUntilDate></Retention>",
            mode.s3_name()
        );
        let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(body.as_bytes()));
        let headers = [("content-md5", md5.as_str())];
        let (status, _, text) =
            self.s3_request(http_method::PUT, key, &[("retention", "")], &headers, body.into_bytes())?;
        if status == 200 || status == 204 {
            return Ok(());
        }
        Err(io::Error::new(
            status_kind(status),
            format!("set the retention of {}: HTTP {status}: {text}", self.describe(key).display()),
        ))
    }

    #[cfg(feature = "s3")]
    fn retained_until(&self, key: &str) -> io::Result<Option<SystemTime>> {
        let (status, headers, _) = self.s3_request(http_method::HEAD, key, &[], &[], Vec::new())?;
        if status != 200 {
            return Err(io::Error::new(
                status_kind(status),
                format!("HEAD {}: HTTP {status}", self.describe(key).display()),
            ));
        }
        Ok(headers
            .get("x-amz-object-lock-retain-until-date")
            .and_then(|v| v.to_str().ok())
            .and_then(Moment::parse)
            .map(SystemTime::from))
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        let (store, path) = (self.store.clone(), self.path(key));
        self.request("DELETE", key);
        match self.block(async move { store.delete(&path).await })? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(io_error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With rustls built for ring alone, the HTTP clients must still have a
    /// crypto provider: building an S3 backend and an Object Lock request's
    /// client does not panic, and an https:// request opens with a TLS
    /// ClientHello (record type 22, version 3.x) on the wire.
    #[cfg(feature = "s3")]
    #[test]
    fn https_requests_speak_tls_through_ring() {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let endpoint = format!("https://127.0.0.1:{port}");
        let settings = [
            ("aws_endpoint", endpoint.as_str()),
            ("aws_access_key_id", "id"),
            ("aws_secret_access_key", "secret"),
            ("aws_region", "us-east-1"),
        ];
        ObjectBackend::s3_with("s3://bucket/prefix", &settings).unwrap();
        // Accepts for 20 s at most, so a client that never connects fails
        // the test rather than hanging it.
        listener.set_nonblocking(true).unwrap();
        let server = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let mut conn = loop {
                match listener.accept() {
                    Ok((conn, _)) => break conn,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(e) => panic!("no TLS client connected: {e}"),
                }
            };
            conn.set_nonblocking(false).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut record = [0u8; 5];
            conn.read_exact(&mut record).unwrap();
            record
        });
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let result = runtime.block_on(async {
            reqwest::Client::new().get(format!("{endpoint}/bucket")).timeout(Duration::from_secs(10)).send().await
        });
        let record = server.join().unwrap();
        assert_eq!((record[0], record[1]), (22, 3), "not a TLS handshake record: {record:?}");
        assert!(result.is_err(), "the server closed without answering");
    }

    #[test]
    fn keys_map_under_the_prefix_and_back() {
        let mem: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let b = ObjectBackend::new(mem, "/stores/one/", "memory://bucket/stores/one").unwrap();
        for key in ["packs/ab/x.pack", "manifests/20261202T074423.163505Z-83e95686~1.manifest"] {
            let mut w = b.create(key).unwrap();
            w.write(b"hello").unwrap();
            w.commit().unwrap();
        }
        assert_eq!(b.list("packs").unwrap().iter().map(|o| o.key.as_str()).collect::<Vec<_>>(), ["packs/ab/x.pack"]);
        // A listing names keys exactly as they were written.
        let listed = b.list("manifests").unwrap();
        assert_eq!(listed[0].key, "manifests/20261202T074423.163505Z-83e95686~1.manifest");
        assert_eq!(b.read_all(&listed[0].key).unwrap(), b"hello");
        assert_eq!(b.describe("config").display().to_string(), "memory://bucket/stores/one/config");
        let mut again = b.create("packs/ab/x.pack").unwrap();
        again.write(b"other").unwrap();
        assert_eq!(again.commit().unwrap_err().kind(), io::ErrorKind::AlreadyExists);
    }

    /// Large objects go up in parts and are refused, like small ones, when
    /// the key is taken; a dropped writer leaves nothing.
    #[test]
    fn multipart_objects_are_created_only_if_absent() {
        let mem: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let b = ObjectBackend::new(mem, "", "memory://bucket").unwrap();
        let big: Vec<u8> = (0..PART * 2 + 123).map(|i| (i % 251) as u8).collect();
        let mut w = b.create("packs/big.pack").unwrap();
        for piece in big.chunks(1 << 20) {
            w.write(piece).unwrap();
        }
        w.commit().unwrap();
        assert_eq!(b.read_all("packs/big.pack").unwrap(), big);
        let mut tail = vec![0u8; 100];
        b.read_at("packs/big.pack", &mut tail, (big.len() - 100) as u64).unwrap();
        assert_eq!(tail, big[big.len() - 100..]);
        assert_eq!(
            b.read_at("packs/big.pack", &mut tail, big.len() as u64).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let mut w = b.create("packs/big.pack").unwrap();
        w.write(&big).unwrap();
        assert_eq!(w.commit().unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        {
            let mut w = b.create("packs/dropped.pack").unwrap();
            w.write(&big).unwrap();
        }
        assert_eq!(b.stat("packs/dropped.pack").unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
