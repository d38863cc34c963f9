//! Where a store lives: a local folder, or a URL on object storage
//! (`s3://BUCKET/PREFIX`, and `az://CONTAINER/PREFIX`, `gs://BUCKET/PREFIX`
//! where the `azure` and `gcp` features are built).
//!
//! A location is given as a path; one whose text starts with a known
//! scheme is a URL (write `./s3:/x` for a folder of that name).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::store::backend::{Backend, CachedBackend};
use crate::store::error::{Result, StoreError};

/// The URL schemes a store location may have.
pub const SCHEMES: [&str; 3] = ["s3://", "az://", "gs://"];

/// How [`Store::open_with`](crate::store::Store::open_with) opens a store.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct OpenOptions {
    /// Where to keep the local cache of a remote store's index files,
    /// manifests and restore points (a folder per store is made inside).
    /// `None`: `$XDG_CACHE_HOME/vhdkit`, else `~/.cache/vhdkit`.
    pub cache_dir: Option<PathBuf>,
    /// Read everything from the store itself, keeping no local copy.
    pub no_cache: bool,
    /// The key of an encrypted store: its passphrase or key file. Given
    /// for a plain store, the open is refused.
    pub key: Option<crate::store::crypto::StoreKey>,
    /// The key object to try first (its id or a prefix): an encrypted
    /// store's open tries at most 16 key objects of the key's kind, the
    /// cheapest first, so one with many (or planted) key objects is opened
    /// by naming the right one.
    pub key_id: Option<String>,
    /// Open an encrypted store without its key: then only
    /// [`Store::verify`](crate::store::Store::verify) (what can be checked without
    /// it: structure, sizes, CRCs) and [`Store::keys`](crate::store::Store::keys)
    /// work, and nothing but the verify's own lease is written.
    pub without_key: bool,
    /// Open read-only: restore, verify, list, stats and the log work, and
    /// nothing is written, not even a lease (so a vacuum elsewhere could
    /// delete what a read needs: the read then fails, naming the chunk).
    /// Without it, a store whose storage refuses the lease of a read is
    /// found read-only at that read and goes on the same way.
    pub read_only: bool,
    /// Reads to keep in flight when reading chunks (restore, a backup's
    /// reader, NBD, verify). `None`: what the storage suggests, 16 for
    /// object storage and 4 for a folder. Clamped to 1..=256.
    pub connections: Option<usize>,
    /// Bytes a sequential reader reads ahead of what it was asked for.
    /// `None`: 32 MiB. A reader's memory stays below about twice this
    /// plus 16 MiB of cache.
    pub read_ahead: Option<u64>,
}

/// The URL in `location`, when it is one.
pub fn url_of(location: &Path) -> Option<&str> {
    let text = location.to_str()?;
    SCHEMES.iter().any(|s| text.starts_with(s)).then_some(text)
}

/// The backend for a URL location.
pub(crate) fn remote(url: &str) -> Result<Arc<dyn Backend>> {
    let scheme = url.split("://").next().unwrap_or_default();
    let built: Option<Arc<dyn Backend>> = match scheme {
        #[cfg(feature = "s3")]
        "s3" => Some(Arc::new(connect(url, crate::store::backend::ObjectBackend::s3(url))?)),
        #[cfg(feature = "azure")]
        "az" => Some(Arc::new(connect(url, crate::store::backend::ObjectBackend::azure(url))?)),
        #[cfg(feature = "gcp")]
        "gs" => Some(Arc::new(connect(url, crate::store::backend::ObjectBackend::gcs(url))?)),
        _ => None,
    };
    built.ok_or_else(|| {
        let feature = match scheme {
            "s3" => "s3",
            "az" => "azure",
            _ => "gcp",
        };
        StoreError::UnsupportedStore {
            path: PathBuf::from(url),
            reason: format!("this build cannot reach {scheme}:// storage (cargo feature `{feature}`)"),
        }
    })
}

/// A backend's construction failure as the store's error.
#[cfg(feature = "object-store")]
fn connect<T>(url: &str, made: std::io::Result<T>) -> Result<T> {
    made.map_err(StoreError::io(PathBuf::from(url), "connect to the object store"))
}

/// The default cache folder.
fn default_cache_root() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("vhdkit"));
    }
    std::env::var_os("HOME").filter(|d| !d.is_empty()).map(|h| PathBuf::from(h).join(".cache").join("vhdkit"))
}

/// `backend` behind a local cache for store `store_id`, as `options` say;
/// without a usable cache folder, `backend` itself.
pub(crate) fn cached(backend: Arc<dyn Backend>, store_id: &str, options: &OpenOptions) -> Arc<dyn Backend> {
    if options.no_cache || store_id.is_empty() || !store_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return backend;
    }
    let Some(root) = options.cache_dir.clone().or_else(default_cache_root) else { return backend };
    match CachedBackend::new(backend.clone(), root.join(store_id)) {
        Ok(c) => Arc::new(c),
        Err(_) => backend,
    }
}
