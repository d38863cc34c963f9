//! Making a store and opening one: the location (a folder or a URL), the
//! put-if-absent probe, the config, and the keys of an encrypted store.
//! What comes back is the [`Handle`] every other operation works through.

use std::path::Path;
use std::sync::Arc;

use crate::store::backend::location::{OpenOptions, url_of};
use crate::store::backend::{self, Backend, LocalDir};
use crate::store::crypto;
use crate::store::error::{Result, StoreError};
use crate::store::format::config::{InitOptions, StoreConfig};
use crate::store::model;
use crate::store::model::id::PackId;
use crate::store::model::limits::ReadSettings;
use crate::store::model::time::Moment;
use crate::store::state;
use crate::store::state::handle::Handle;
use crate::store::state::lease::host_name;

/// Creates a store at `location` with `options` fixed for its
/// lifetime. A folder must not exist or be empty, and its parent must
/// exist unless `options.create_parents`; a URL (`s3://BUCKET/PREFIX`,
/// see [`SCHEMES`]) must name an existing bucket with nothing under the
/// prefix (buckets are never created here). A refused init leaves
/// nothing behind: no folder it made, no object it wrote.
pub(crate) fn init(location: &Path, options: &InitOptions) -> Result<Handle> {
    let path = location;
    if let Some(url) = url_of(path) {
        let backend = backend::location::remote(url)?;
        let present = backend.list("").map_err(StoreError::io(path, "list"))?;
        if let Some(o) = present.first() {
            return Err(StoreError::Invalid(format!("{url} is not empty: it holds {}", o.key)));
        }
        return init_backend(backend, options);
    }
    let existed = path.exists();
    if existed {
        let empty = std::fs::read_dir(path).map_err(StoreError::io(path, "read folder"))?.next().is_none();
        if !empty {
            return Err(StoreError::Invalid(format!("{} exists and is not empty", path.display())));
        }
    } else if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
        && !options.create_parents
    {
        return Err(StoreError::Invalid(format!(
            "{} does not exist (an unmounted share?): create it first, or ask for missing parents \
             (--parents, InitOptions::create_parents)",
            parent.display()
        )));
    }
    let made = (|| {
        for dir in model::layout::Folder::ALL.map(model::layout::Folder::name) {
            std::fs::create_dir_all(path.join(dir)).map_err(StoreError::io(path.join(dir), "create folder"))?;
        }
        init_backend(Arc::new(LocalDir::new(path)), options)
    })();
    // Only what this call made, and only while it is empty: another
    // init racing this one for the same folder may have made a store
    // there (its config is there), and that is never touched.
    if made.is_err() && !path.join(model::layout::CONFIG).exists() {
        for dir in model::layout::Folder::ALL.map(model::layout::Folder::name) {
            let _ = std::fs::remove_dir(path.join(dir));
        }
        if !existed {
            let _ = std::fs::remove_dir(path);
        }
    }
    made
}

/// Creates a store over any backend. An encrypted store's key object
/// is written before its config, so a store whose config exists can
/// always be opened. The storage is first probed for put-if-absent
/// (see [`probe_conditional_writes`]): storage that replaces an
/// existing object is refused unless `options.single_writer`. Settings
/// out of range are refused before anything is written.
pub(crate) fn init_backend(backend: Arc<dyn Backend>, options: &InitOptions) -> Result<Handle> {
    let store_id = PackId::new_random().to_hex();
    // Settings first, so a bad one writes nothing (not even the probe).
    StoreConfig::new(options, store_id.clone(), Moment::now(), None)?;
    let honoured = probe_conditional_writes(&*backend)?;
    if !honoured && !options.single_writer {
        return Err(StoreError::UnsupportedStore {
            path: backend.describe(""),
            reason: "this storage replaced an existing object when asked to create it only if absent \
                     (If-None-Match: *), so nothing would stop two writers from overwriting each other or \
                     running maintenance at once; use storage that honours conditional writes, or accept \
                     one writer at a time with --single-writer (InitOptions::single_writer)"
                .into(),
        });
    }
    let mut options = options.clone();
    options.single_writer = !honoured;
    let options = &options;
    let keys = options.encryption.as_ref().map(|_| Arc::new(crypto::Keys::generate()));
    let config = StoreConfig::new(options, store_id, Moment::now(), keys.as_deref())?;
    let backend = match config.object_lock {
        Some(lock) => {
            backend.lock_support().map_err(|e| StoreError::UnsupportedStore {
                path: backend.describe(""),
                reason: format!("--object-lock needs a bucket with S3 Object Lock enabled: {e}"),
            })?;
            Arc::new(backend::LockingBackend::new(backend, lock)) as Arc<dyn Backend>
        }
        None => backend,
    };
    let mut key_id = None;
    if let (Some(keys), Some(e)) = (&keys, &options.encryption) {
        let object = crypto::keyobj::KeyObject::wrap(
            keys.master(),
            &config.store_id,
            &e.key,
            &e.argon2,
            Moment::now(),
            host_name(),
        )
        .map_err(StoreError::Invalid)?;
        state::keyring::write_key_object(&*backend, &object)?;
        key_id = Some(object.id);
    }
    let path = backend.describe(model::layout::CONFIG);
    let written = backend.create(model::layout::CONFIG).and_then(|mut w| {
        w.write(&config.encode())?;
        w.commit()
    });
    if let Err(e) = written {
        // A key object without a config opens nothing: take it back,
        // unless the config is there and ours after all (a write that
        // succeeded but whose answer was lost).
        let ours = backend
            .read_all(model::layout::CONFIG)
            .ok()
            .and_then(|bytes| StoreConfig::decode(&bytes, &path).ok())
            .is_some_and(|c| c.store_id == config.store_id);
        if let (Some(id), false) = (&key_id, ours) {
            let _ = backend.delete(&model::layout::key_object_key_of(id));
        }
        return Err(if e.kind() == std::io::ErrorKind::AlreadyExists {
            StoreError::Invalid(format!("{} already holds a store", backend.describe("").display()))
        } else {
            StoreError::io(&path, "write config")(e)
        });
    }
    let crypt = keys.map_or(crypto::Crypt::Plain, crypto::Crypt::Sealed);
    let store = Handle::new(backend, config, crypt, key_id);
    store.log_job("init", &serde_json::json!({ "config": store.config }));
    Ok(store)
}

/// Opens the store at `location` as `options` say: a remote store's
/// index files, manifests and restore points are read through a local
/// cache (see [`CachedBackend`]) unless `options.no_cache`. An
/// encrypted store needs `options.key` (one Argon2id run per passphrase
/// key object tried, about a second each by default), unless
/// `options.without_key`; a key given for a plain store is refused.
pub(crate) fn open_with(location: &Path, options: &OpenOptions) -> Result<Handle> {
    let path = location;
    if let Some(url) = url_of(path) {
        let (backend, config) = read_config(backend::location::remote(url)?)?;
        let backend = backend::location::cached(backend, &config.store_id, options);
        return unlock(backend, config, options);
    }
    if !path.join("config").is_file() {
        let reason = if path.exists() { "it has no config file" } else { "the folder does not exist" };
        return Err(StoreError::NotAStore { path: path.to_path_buf(), reason: reason.into() });
    }
    open_backend_with(Arc::new(LocalDir::new(path)), options)
}

/// Opens a store over any backend as `options` say (its key).
pub(crate) fn open_backend_with(backend: Arc<dyn Backend>, options: &OpenOptions) -> Result<Handle> {
    let (backend, config) = read_config(backend)?;
    unlock(backend, config, options)
}

/// Unlocks an encrypted store with the key `options` give (or opens it
/// keyless, if they say so); checks that a plain store was given none.
fn unlock(backend: Arc<dyn Backend>, config: StoreConfig, options: &OpenOptions) -> Result<Handle> {
    let mut store = unlock_keys(backend, config, options)?;
    store.read_only_asked = options.read_only;
    if options.connections.is_some() || options.read_ahead.is_some() {
        store.reads = ReadSettings::new(
            options.connections.unwrap_or(store.reads.connections),
            options.read_ahead.unwrap_or(store.reads.read_ahead),
        );
    }
    Ok(store)
}

fn unlock_keys(backend: Arc<dyn Backend>, config: StoreConfig, options: &OpenOptions) -> Result<Handle> {
    let path = backend.describe("");
    if options.key.is_some() && options.without_key {
        return Err(StoreError::Invalid("a key and `without_key` together: give one or the other".into()));
    }
    match (config.is_encrypted(), &options.key, options.without_key) {
        (false, None, _) => Ok(Handle::new(backend, config, crypto::Crypt::Plain, None)),
        (false, Some(_), _) => Err(StoreError::NotEncrypted { path }),
        (true, _, true) => Ok(Handle::new(backend, config, crypto::Crypt::Locked, None)),
        (true, None, false) => Err(StoreError::KeyRequired { path }),
        (true, Some(key), false) => {
            let (keys, id) = state::keyring::unlock(&*backend, &config, key, options.key_id.as_deref())?;
            Ok(Handle::new(backend, config, crypto::Crypt::Sealed(keys), Some(id)))
        }
    }
}

/// Reads and checks the config; the backend comes back wrapped for
/// Object Lock when the store has it.
fn read_config(backend: Arc<dyn Backend>) -> Result<(Arc<dyn Backend>, StoreConfig)> {
    let bytes = backend.read_all("config").map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            StoreError::NotAStore { path: backend.describe(""), reason: "it has no config object".into() }
        } else {
            StoreError::io(backend.describe("config"), "read config")(e)
        }
    })?;
    let config = StoreConfig::decode(&bytes, &backend.describe("config"))?;
    let backend = match config.object_lock {
        Some(lock) => Arc::new(backend::LockingBackend::new(backend, lock)) as Arc<dyn Backend>,
        None => backend,
    };
    Ok((backend, config))
}

/// Whether `backend` honours put-if-absent: creates a probe object under
/// `locks/`, asks to create it again only if absent, and deletes it. The
/// second create must fail with `AlreadyExists`; storage that accepts it
/// (some S3 servers ignore `If-None-Match: *`) replaced an object, and
/// every guarantee the store rests on put-if-absent would be void there.
/// Two requests and a delete, once, at init; [`Store::open`] trusts what
/// the config recorded.
pub fn probe_conditional_writes(backend: &dyn Backend) -> Result<bool> {
    let key = model::layout::probe_key(&PackId::new_random().to_hex());
    backend::put_new(backend, &key, b"first")
        .map_err(StoreError::io(backend.describe(&key), "probe conditional writes"))?;
    let second = backend::put_new(backend, &key, b"second");
    let _ = backend.delete(&key);
    match second {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(true),
        Ok(()) => Ok(false),
        Err(e) => Err(StoreError::io(backend.describe(&key), "probe conditional writes")(e)),
    }
}
