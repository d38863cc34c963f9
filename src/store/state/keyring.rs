//! An encrypted store's key objects (`keys/<id>.key`): unlocking the store
//! at open, and adding, listing and removing wrappings of its master key.
//!
//! Adding and removing take a maintenance lease, so two of them cannot
//! both remove "the other" key and leave none. A key object is created
//! whole like every object; removing one deletes it (under Object Lock it
//! stays until its retention ends, and the delete is refused).

use std::sync::Arc;

use serde::Serialize;

use crate::store::state::handle::Handle;
use crate::store::backend::{Backend, list_keys, read_small};
use crate::store::format::config::StoreConfig;
use crate::store::crypto::keyobj::{Argon2Params, KeyKind, KeyObject, MAX_KEY_OBJECT};
use crate::store::crypto::{Crypt, Keys, StoreKey};
use crate::store::error::{Result, StoreError};
use crate::store::state::lease::LeaseMode;
use crate::store::model::time::Moment;
use crate::store::state::lease::host_name;

/// The folder of key objects.
pub(crate) const KEYS: &str = "keys";

fn key_of(id: &str) -> String {
    crate::store::model::layout::key_object_key_of(id)
}

fn id_of(key: &str) -> Option<&str> {
    key.strip_prefix("keys/")?.strip_suffix(".key")
}

/// One key object, as `key list` shows it (nothing secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct KeySummary {
    /// The key object's id.
    pub id: String,
    /// A passphrase or a key file.
    pub kind: KeyKind,
    /// When it was added.
    pub created: Moment,
    /// The machine it was added on.
    pub host: String,
    /// Argon2id's cost, for a passphrase.
    pub argon2: Option<Argon2Params>,
    /// Whether it is the key this store was opened with.
    pub in_use: bool,
    /// Whether a holder of the store's key made it (its MAC holds); `None`
    /// when the store was opened without its key. One that is not was
    /// planted by someone who can write to the storage: it opens nothing
    /// and counts for nothing.
    pub authentic: Option<bool>,
}

/// Reads every key object; those that do not decode are returned as
/// problems beside them.
fn read_all(backend: &dyn Backend) -> Result<(Vec<KeyObject>, Vec<String>)> {
    let mut found = Vec::new();
    let mut problems = Vec::new();
    let keys = match list_keys(backend, KEYS) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        other => other.map_err(StoreError::io(backend.describe(KEYS), "list"))?,
    };
    for key in keys {
        let Some(id) = id_of(&key) else { continue };
        let path = backend.describe(&key);
        let bytes = match read_small(backend, &key, MAX_KEY_OBJECT as u64) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                problems.push(format!("{}: too large for a key object: {e}", path.display()));
                continue;
            }
            other => other.map_err(StoreError::io(&path, "read key object"))?,
        };
        match KeyObject::decode(&bytes, id) {
            Ok(k) => found.push(k),
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
    }
    Ok((found, problems))
}

/// Most key objects of the given kind one open tries: a key object
/// anyone can plant costs one key derivation to try.
pub(crate) const MAX_TRIES: usize = 16;

/// Opens an encrypted store's master key with `key`: the first key object
/// it unwraps (the one named `hint` first, then the cheapest to try, at
/// most [`MAX_TRIES`]), whose master key also proves the config's MAC.
/// Nothing is written. Returns the keys and the id of the key object that
/// opened.
pub(crate) fn unlock(
    backend: &dyn Backend,
    config: &StoreConfig,
    key: &StoreKey,
    hint: Option<&str>,
) -> Result<(Arc<Keys>, String)> {
    let path = backend.describe("");
    let (mut objects, problems) = read_all(backend)?;
    if objects.is_empty() {
        let mut reason = "the store is encrypted and has no usable key object".to_string();
        if !problems.is_empty() {
            reason = format!("{reason} ({})", problems.join("; "));
        }
        return Err(StoreError::corrupt(backend.describe(KEYS), "key objects", 0, reason));
    }
    objects.retain(|k| k.kind == key.kind());
    objects.sort_by_key(|k| {
        (!hint.is_some_and(|h| !h.is_empty() && k.id.starts_with(h)), k.cost(), k.created, k.id.clone())
    });
    let mut tried = 0;
    for k in objects.iter().take(MAX_TRIES) {
        tried += 1;
        let master = k
            .unwrap(&config.store_id, key)
            .map_err(|r| StoreError::corrupt(backend.describe(&key_of(&k.id)), "key object", 0, r))?;
        let Some(master) = master else { continue };
        let keys = Keys::from_master(*master);
        if !config.mac_holds(&keys) {
            // The key object is sound and this store's (its wrapping binds
            // the store id), so the config is what changed.
            return Err(StoreError::corrupt(
                backend.describe("config"),
                "config",
                0,
                "its MAC does not hold under the store's key: the settings were altered",
            ));
        }
        return Ok((Arc::new(keys), k.id.clone()));
    }
    if objects.len() > MAX_TRIES {
        return Err(StoreError::Invalid(format!(
            "{}: {} key objects of this kind and none of the {MAX_TRIES} tried opens: name the key object to try \
             (OpenOptions::key_id, --key-id)",
            path.display(),
            objects.len()
        )));
    }
    if !problems.is_empty() {
        // The key may be one of the damaged objects: say which they are.
        let reason = format!("no sound key object opens with the key given; damaged: {}", problems.join("; "));
        return Err(StoreError::corrupt(backend.describe(KEYS), "key objects", 0, reason));
    }
    Err(StoreError::WrongKey { path, kind: key.kind(), tried })
}

/// The keys of the key objects a holder of `keys` made (their MAC holds).
pub(crate) fn authentic_keys(backend: &dyn Backend, keys: &Keys) -> Result<Vec<String>> {
    let (objects, _) = read_all(backend)?;
    Ok(objects.iter().filter(|k| k.authentic(keys)).map(|k| key_of(&k.id)).collect())
}

/// [`Store::is_encrypted`](crate::store::Store::is_encrypted).
pub(crate) fn is_encrypted(store: &Handle) -> bool {
    store.config.is_encrypted()
}

/// [`Store::keys`](crate::store::Store::keys).
pub(crate) fn keys(store: &Handle) -> Result<Vec<KeySummary>> {
    require_encrypted(store)?;
    let (mut objects, _) = read_all(store.backend())?;
    objects.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    let keys = store.crypt.keys();
    Ok(objects
        .into_iter()
        .map(|k| KeySummary {
            in_use: store.key_id.as_deref() == Some(k.id.as_str()),
            authentic: keys.map(|keys| k.authentic(keys)),
            argon2: match k.kdf {
                crate::store::crypto::keyobj::Kdf::Argon2id { memory_kib, iterations, parallelism, .. } => {
                    Some(Argon2Params { memory_kib, iterations, parallelism })
                }
                crate::store::crypto::keyobj::Kdf::Blake3 { .. } => None,
            },
            id: k.id,
            kind: k.kind,
            created: k.created,
            host: k.host,
        })
        .collect())
}

/// What verify says of `keys/`: objects that are no key object (too
/// large, undecodable), and key objects the store's key did not make
/// (planted beside the real ones). Nothing for a plain store.
pub(crate) fn key_problems(store: &Handle) -> Result<Vec<String>> {
    let Some(keys) = store.crypt.keys() else { return Ok(Vec::new()) };
    let backend = store.backend();
    let (objects, mut problems) = read_all(backend)?;
    for k in objects.iter().filter(|k| !k.authentic(keys)) {
        problems.push(format!(
            "{}: a key object not made with the store's key (planted?)",
            backend.describe(&key_of(&k.id)).display()
        ));
    }
    Ok(problems)
}

/// [`Store::add_key`](crate::store::Store::add_key).
pub(crate) fn add_key(store: &Handle, key: &StoreKey, argon2: &Argon2Params) -> Result<String> {
    let keys = require_keys(store)?;
    let lease = store.lease(LeaseMode::Maintenance, "key add", false)?;
    let object = KeyObject::wrap(keys.master(), &store.config.store_id, key, argon2, Moment::now(), host_name())
        .map_err(StoreError::Invalid)?;
    lease.check()?;
    write_key_object(store.backend(), &object)?;
    store.log_job("key add", &serde_json::json!({ "id": object.id, "kind": object.kind }));
    drop(lease);
    Ok(object.id)
}

/// [`Store::remove_key`](crate::store::Store::remove_key).
pub(crate) fn remove_key(store: &Handle, spec: &str) -> Result<String> {
    let keys = require_keys(store)?;
    let lease = store.lease(LeaseMode::Maintenance, "key remove", false)?;
    let (objects, _) = read_all(store.backend())?;
    let matches: Vec<&KeyObject> = objects.iter().filter(|k| !spec.is_empty() && k.id.starts_with(spec)).collect();
    let id = match matches.as_slice() {
        [] => return Err(StoreError::Invalid(format!("no key {spec:?} in the store"))),
        [one] => one.id.clone(),
        many => {
            return Err(StoreError::Ambiguous {
                spec: spec.to_string(),
                candidates: many.iter().map(|k| k.id.clone()).collect(),
            });
        }
    };
    // Only the store's own key objects count: a planted one opens nothing.
    let others = objects.iter().filter(|k| k.id != id && k.authentic(keys)).count();
    if others == 0 {
        return Err(StoreError::Invalid(format!(
            "key {id} is the store's only key: add another first, or the store can never be opened again"
        )));
    }
    lease.check()?;
    let key = key_of(&id);
    store.backend().delete(&key).map_err(StoreError::io(store.backend().describe(&key), "delete key object"))?;
    store.log_job("key remove", &serde_json::json!({ "id": id }));
    drop(lease);
    Ok(id)
}

fn require_encrypted(store: &Handle) -> Result<()> {
    if !is_encrypted(store) {
        return Err(StoreError::Invalid(format!("{} is not encrypted: it has no keys", store.path().display())));
    }
    Ok(())
}

pub(crate) fn require_keys(store: &Handle) -> Result<&Keys> {
    require_encrypted(store)?;
    match &store.crypt {
        Crypt::Sealed(keys) => Ok(keys),
        _ => Err(StoreError::KeyRequired { path: store.path() }),
    }
}

/// Creates a key object (only if its id is free, like every object).
pub(crate) fn write_key_object(backend: &dyn Backend, object: &KeyObject) -> Result<()> {
    let key = key_of(&object.id);
    let path = backend.describe(&key);
    let mut w = backend.create(&key).map_err(StoreError::io(&path, "create key object"))?;
    w.write(&object.encode()).map_err(StoreError::io(&path, "write key object"))?;
    w.commit().map_err(StoreError::io(&path, "commit key object"))
}
