//! Stores: create, open, list, and the maintenance operations.

use std::ffi::{c_char, c_void};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::args;
use super::callbacks::{cancel_token, progress_sink, vhdkit_cancel, vhdkit_progress_fn};
use super::error::{Fail, VHDKIT_CORRUPT, VHDKIT_INVALID_INPUT, call, vhdkit_error, vhdkit_status};
use super::handles::Table;
use crate::store::{
    Argon2Params, Compression, Encryption, InitOptions, LockMode, MergeOptions, Moment, ObjectLock, OpenOptions,
    PruneOptions, Retention, Store, StoreKey, VacuumOptions, VerifyOptions,
};

/// An open store. Usable from several threads at once, as a Rust `Store`
/// is: backups, restores, readers and verify run side by side.
pub struct vhdkit_store {
    _opaque: [u8; 0],
}

pub(crate) static STORES: Table<Store> = Table::new("vhdkit_store");

/// A store key from JSON: a key file's path or a passphrase.
fn store_key(key_file: &Option<PathBuf>, passphrase: &Option<String>) -> Result<Option<StoreKey>, Fail> {
    match (key_file, passphrase) {
        (Some(_), Some(_)) => Err(Fail::argument("give key_file or passphrase, not both")),
        (Some(path), None) => {
            StoreKey::read_key_file(path).map(Some).map_err(|e| io_fail(format!("key file {}", path.display()), e))
        }
        (None, Some(p)) if p.is_empty() => Err(Fail::argument("the passphrase is empty")),
        (None, Some(p)) => Ok(Some(StoreKey::passphrase(p.clone()))),
        (None, None) => Ok(None),
    }
}

/// An OS failure outside the crate's own errors (reading a key file).
fn io_fail(what: String, e: std::io::Error) -> Fail {
    let status = match e.kind() {
        std::io::ErrorKind::NotFound => super::error::VHDKIT_NOT_FOUND,
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => VHDKIT_INVALID_INPUT,
        _ => super::error::VHDKIT_IO,
    };
    Fail { status, message: format!("{what}: {e}"), os_code: e.raw_os_error().unwrap_or(0) }
}

/// `vhdkit_store_init`'s options.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct InitJson {
    chunk_size: Option<u32>,
    /// `none` or `zstd`.
    compression: Option<String>,
    zstd_level: Option<i32>,
    pack_size: Option<u64>,
    single_writer: bool,
    create_parents: bool,
    /// Days of S3 Object Lock, and its mode (`governance` or `compliance`).
    object_lock_days: Option<u32>,
    object_lock_mode: Option<LockMode>,
    /// Encrypt under this key file or passphrase.
    key_file: Option<PathBuf>,
    passphrase: Option<String>,
    /// Argon2id memory (KiB) and passes for a passphrase.
    argon2_memory_kib: Option<u32>,
    argon2_iterations: Option<u32>,
}

/// Creates a store at `location` (a folder, or a URL such as
/// `s3://bucket/prefix`) and opens it. Options, a JSON object or null:
/// `chunk_size`, `compression` (`none`, `zstd`), `zstd_level`, `pack_size`,
/// `single_writer`, `create_parents`, `object_lock_days` with
/// `object_lock_mode` (`governance`, `compliance`), and to encrypt,
/// `key_file` or `passphrase` (with `argon2_memory_kib`, `argon2_iterations`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_store_init(
    location: *const c_char,
    options_json: *const c_char,
    out: *mut *mut vhdkit_store,
    err: *mut *mut vhdkit_error,
) -> vhdkit_status {
    call(err, || {
        args::out(out, "out")?;
        let location = args::text(location, "location")?;
        let o: InitJson = args::options(options_json, "options")?;
        let mut init = InitOptions::default();
        if let Some(n) = o.chunk_size {
            init.chunk_size = n;
        }
        init.compression = match o.compression.as_deref() {
            None | Some("none") => Compression::None,
            Some("zstd") => Compression::Zstd,
            Some(other) => return Err(Fail::argument(format!("compression {other:?} is not none or zstd"))),
        };
        if let Some(n) = o.zstd_level {
            init.zstd_level = n;
        }
        if let Some(n) = o.pack_size {
            init.pack_size = n;
        }
        init.single_writer = o.single_writer;
        init.create_parents = o.create_parents;
        init.object_lock = match (o.object_lock_days, o.object_lock_mode) {
            (Some(days), mode) => Some(ObjectLock { days, mode: mode.unwrap_or(LockMode::Governance) }),
            (None, Some(_)) => return Err(Fail::argument("object_lock_mode needs object_lock_days")),
            (None, None) => None,
        };
        if let Some(key) = store_key(&o.key_file, &o.passphrase)? {
            let mut argon2 = Argon2Params::default();
            if let Some(m) = o.argon2_memory_kib {
                argon2.memory_kib = m;
            }
            if let Some(i) = o.argon2_iterations {
                argon2.iterations = i;
            }
            let mut encryption = Encryption::new(key);
            encryption.argon2 = argon2;
            init.encryption = Some(encryption);
        }
        let store = Store::init(location, &init)?;
        args::put(out, STORES.insert(store));
        Ok(())
    })
}

/// `vhdkit_store_open`'s options.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct OpenJson {
    key_file: Option<PathBuf>,
    passphrase: Option<String>,
    key_id: Option<String>,
    without_key: bool,
    read_only: bool,
    cache_dir: Option<PathBuf>,
    no_cache: bool,
    connections: Option<usize>,
    read_ahead: Option<u64>,
}

/// Opens the store at `location` (a folder or a URL). Options, a JSON
/// object or null: `key_file` or `passphrase` (an encrypted store's key),
/// `key_id`, `without_key`, `read_only`, `cache_dir`, `no_cache`,
/// `connections`, `read_ahead`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_store_open(
    location: *const c_char,
    options_json: *const c_char,
    out: *mut *mut vhdkit_store,
    err: *mut *mut vhdkit_error,
) -> vhdkit_status {
    call(err, || {
        args::out(out, "out")?;
        let location = args::text(location, "location")?;
        let o: OpenJson = args::options(options_json, "options")?;
        let open = OpenOptions {
            key: store_key(&o.key_file, &o.passphrase)?,
            key_id: o.key_id,
            without_key: o.without_key,
            read_only: o.read_only,
            cache_dir: o.cache_dir,
            no_cache: o.no_cache,
            connections: o.connections,
            read_ahead: o.read_ahead,
        };
        let store = Store::open_with(location, &open)?;
        args::put(out, STORES.insert(store));
        Ok(())
    })
}

/// Frees a store (null is ignored). Calls running on it finish first.
#[unsafe(no_mangle)]
pub extern "C" fn vhdkit_store_free(store: *mut vhdkit_store) {
    STORES.remove(store);
}

/// Which listing [`listing`] gives.
#[derive(Clone, Copy)]
enum Listing {
    Backups,
    Points,
    Stats,
    Log,
    Config,
    Warnings,
}

fn listing(
    store: *const vhdkit_store,
    json: *mut *mut c_char,
    err: *mut *mut vhdkit_error,
    what: Listing,
) -> vhdkit_status {
    call(err, || {
        args::out(json, "json")?;
        let store = STORES.get(store)?;
        match what {
            Listing::Backups => args::put_json(json, &store.list()?),
            Listing::Points => args::put_json(json, &store.points()?),
            Listing::Stats => args::put_json(json, &store.stats()?),
            Listing::Log => args::put_json(json, &store.job_log()?),
            Listing::Config => args::put_json(json, store.config()),
            Listing::Warnings => args::put_json(json, &store.warnings()),
        }
    })
}

/// Every backup, oldest first, as a JSON array.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_store_list(
    store: *const vhdkit_store,
    json: *mut *mut c_char,
    err: *mut *mut vhdkit_error,
) -> vhdkit_status {
    listing(store, json, err, Listing::Backups)
}

/// Every restore point, oldest first, as a JSON array.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_store_points(
    store: *const vhdkit_store,
    json: *mut *mut c_char,
    err: *mut *mut vhdkit_error,
) -> vhdkit_status {
    listing(store, json, err, Listing::Points)
}

/// Counts and sizes of the store, as a JSON object.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_store_stats(
    store: *const vhdkit_store,
    json: *mut *mut c_char,
    err: *mut *mut vhdkit_error,
) -> vhdkit_status {
    listing(store, json, err, Listing::Stats)
}

/// The job log (one object per operation, oldest first), as a JSON array.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_store_log(
    store: *const vhdkit_store,
    json: *mut *mut c_char,
    err: *mut *mut vhdkit_error,
) -> vhdkit_status {
    listing(store, json, err, Listing::Log)
}

/// The store's fixed settings (chunk size, compression, encryption), as JSON.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_store_config(
    store: *const vhdkit_store,
    json: *mut *mut c_char,
    err: *mut *mut vhdkit_error,
) -> vhdkit_status {
    listing(store, json, err, Listing::Config)
}

/// What opening the store found worth a warning (a single-writer store, a
/// store found read-only), as a JSON array of strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_store_warnings(
    store: *const vhdkit_store,
    json: *mut *mut c_char,
    err: *mut *mut vhdkit_error,
) -> vhdkit_status {
    listing(store, json, err, Listing::Warnings)
}

/// `vhdkit_store_verify`'s options.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct VerifyJson {
    only: Option<String>,
    sample: Option<f64>,
    seed: Option<u64>,
    /// RFC 3339: check only packs written since.
    since: Option<String>,
}

/// Checks every record of the store (or what the options select: `only`, a
/// backup; `sample`, a fraction of packs with `seed`; `since`, an RFC 3339
/// time). The report is filled whenever the check ran; damage found makes
/// the call return `VHDKIT_CORRUPT` with the report naming it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_store_verify(
    store: *const vhdkit_store,
    options_json: *const c_char,
    cancel: *const vhdkit_cancel,
    progress: vhdkit_progress_fn,
    progress_user: *mut c_void,
    report_json: *mut *mut c_char,
    err: *mut *mut vhdkit_error,
) -> vhdkit_status {
    args::clear_json(report_json);
    call(err, || {
        let store = STORES.get(store)?;
        let o: VerifyJson = args::options(options_json, "options")?;
        let since = match o.since {
            Some(s) => Some(Moment::parse(&s).ok_or_else(|| Fail::argument(format!("since {s:?} is not RFC 3339")))?),
            None => None,
        };
        let mut options = VerifyOptions { only: o.only, sample: o.sample, seed: o.seed, since, ..Default::default() };
        options.cancel = cancel_token(cancel)?;
        options.progress = progress_sink(progress, progress_user);
        let report = store.verify(&options)?;
        args::put_json(report_json, &report)?;
        if !report.ok {
            return Err(Fail::new(
                VHDKIT_CORRUPT,
                format!(
                    "verify found {} damaged chunk(s) in {} backup(s)",
                    report.damaged_chunks.len(),
                    report.damaged_backups.len()
                ),
            ));
        }
        Ok(())
    })
}

/// `vhdkit_store_prune`'s options.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct PruneJson {
    keep_last: usize,
    keep_daily: usize,
    keep_weekly: usize,
    keep_monthly: usize,
    dry_run: bool,
    wait: bool,
}

/// Drops the backups of `name` the retention rules do not keep (options:
/// `keep_last`, `keep_daily`, `keep_weekly`, `keep_monthly`, `dry_run`,
/// `wait`); report as JSON.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_store_prune(
    store: *const vhdkit_store,
    name: *const c_char,
    options_json: *const c_char,
    report_json: *mut *mut c_char,
    err: *mut *mut vhdkit_error,
) -> vhdkit_status {
    args::clear_json(report_json);
    call(err, || {
        let store = STORES.get(store)?;
        let name = args::text(name, "name")?;
        let o: PruneJson = args::options(options_json, "options")?;
        let policy = Retention {
            keep_last: o.keep_last,
            keep_daily: o.keep_daily,
            keep_weekly: o.keep_weekly,
            keep_monthly: o.keep_monthly,
        };
        let mut options = PruneOptions::new(policy);
        options.dry_run = o.dry_run;
        options.wait = o.wait;
        args::put_json(report_json, &store.prune(name, &options)?)
    })
}

/// `vhdkit_store_merge`'s options.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct MergeJson {
    disk: Option<String>,
    wait: bool,
}

/// Merges backup `spec` with its parents into a full backup (metadata
/// only); options `disk` (a point's disk label) and `wait`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_store_merge(
    store: *const vhdkit_store,
    spec: *const c_char,
    options_json: *const c_char,
    report_json: *mut *mut c_char,
    err: *mut *mut vhdkit_error,
) -> vhdkit_status {
    args::clear_json(report_json);
    call(err, || {
        let store = STORES.get(store)?;
        let spec = args::text(spec, "spec")?;
        let o: MergeJson = args::options(options_json, "options")?;
        let options = MergeOptions { disk: o.disk, wait: o.wait };
        args::put_json(report_json, &store.merge(spec, &options)?)
    })
}

/// `vhdkit_store_vacuum`'s options.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct VacuumJson {
    threshold: Option<f64>,
    wait: bool,
    grace_seconds: Option<u64>,
    keep_unfinished_seconds: Option<u64>,
}

/// Reclaims space: condemns packs nothing refers to and deletes those
/// condemned a grace period ago (options: `threshold`, `wait`,
/// `grace_seconds`, `keep_unfinished_seconds`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_store_vacuum(
    store: *const vhdkit_store,
    options_json: *const c_char,
    cancel: *const vhdkit_cancel,
    progress: vhdkit_progress_fn,
    progress_user: *mut c_void,
    report_json: *mut *mut c_char,
    err: *mut *mut vhdkit_error,
) -> vhdkit_status {
    args::clear_json(report_json);
    call(err, || {
        let store = STORES.get(store)?;
        let o: VacuumJson = args::options(options_json, "options")?;
        let mut options = VacuumOptions::default();
        if let Some(t) = o.threshold {
            options.threshold = t;
        }
        options.wait = o.wait;
        if let Some(s) = o.grace_seconds {
            options.grace = Duration::from_secs(s);
        }
        if let Some(s) = o.keep_unfinished_seconds {
            options.keep_unfinished = Duration::from_secs(s);
        }
        options.cancel = cancel_token(cancel)?;
        options.progress = progress_sink(progress, progress_user);
        args::put_json(report_json, &store.vacuum(&options)?)
    })
}
