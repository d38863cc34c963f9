//! Key objects: the store's master key wrapped by one passphrase or key
//! file. Pure encoding, decoding, wrapping and unwrapping; `keyring` reads
//! and writes them.
//!
//! `keys/<id>.key` is JSON (see docs/store-format.md, "Key objects"):
//! `format` = `"vhdkit-key"`, `version` = 1, `id` (32 hex), `created`,
//! `kind` (`"passphrase"` or `"key_file"`), `kdf`, `cipher` =
//! `"aes-256-gcm"`, `nonce` (12 bytes, hex) and `wrapped` (the master key's
//! 32 ciphertext bytes and the 16-byte tag, hex). The wrapping key is
//! Argon2id of the passphrase (`kdf` = `{"algorithm": "argon2id",
//! "version": 19, "memory_kib", "iterations", "parallelism", "salt"}`) or
//! `blake3::derive_key` of the salt and the key file's bytes (`kdf` =
//! `{"algorithm": "blake3", "salt"}`); the associated data binds the
//! store's id and the key object's id, so a key object copied from another
//! store, or under another name, does not open.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::store::model::malformed::Malformed as Error;
use crate::store::model::id::parse_hex;
use crate::store::model::time::Moment;
use crate::store::crypto::{StoreKey, random_bytes};

/// The format name in every key object.
pub const FORMAT: &str = "vhdkit-key";
const CONTEXT_KEY_FILE: &str = "vhdkit store 2026-12-04 key file wrapping key";
/// The largest key object read.
pub const MAX_KEY_OBJECT: usize = 64 * 1024;

/// What wraps a key object's master key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// A passphrase, stretched with Argon2id.
    Passphrase,
    /// A key file's bytes.
    KeyFile,
}

/// Argon2id's cost: what each open of the store pays for a passphrase,
/// and what an attacker pays per guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Argon2Params {
    /// Memory in KiB (default 256 MiB).
    pub memory_kib: u32,
    /// Passes over the memory (default 5).
    pub iterations: u32,
    /// Lanes (default 1; computed one after another).
    pub parallelism: u32,
}

impl Default for Argon2Params {
    /// About one second on a 2-core EPYC (measured: 1.0 s).
    fn default() -> Self {
        Argon2Params { memory_kib: 256 * 1024, iterations: 5, parallelism: 1 }
    }
}

/// Largest Argon2id memory a key object may ask for: a hostile store must
/// not make an open allocate without bound (1 GiB, four times the default).
pub const MAX_MEMORY_KIB: u32 = 1024 * 1024;
/// Most Argon2id passes a key object may ask for: with the most memory,
/// about 13 s here.
pub const MAX_ITERATIONS: u32 = 16;
/// Most Argon2id lanes a key object may ask for.
pub const MAX_PARALLELISM: u32 = 4;

impl Argon2Params {
    /// Cheap parameters, for tests: never for real passphrases.
    pub fn insecure_for_tests() -> Argon2Params {
        Argon2Params { memory_kib: 64, iterations: 1, parallelism: 1 }
    }

    /// Why these parameters are out of range, if they are.
    pub fn check(&self) -> Result<(), String> {
        let Argon2Params { memory_kib, iterations, parallelism } = *self;
        if !(1..=MAX_PARALLELISM).contains(&parallelism) {
            return Err(format!("Argon2id parallelism {parallelism} is not 1 to {MAX_PARALLELISM}"));
        }
        if !(8 * parallelism..=MAX_MEMORY_KIB).contains(&memory_kib) {
            return Err(format!("Argon2id memory {memory_kib} KiB is not {} KiB to 1 GiB", 8 * parallelism));
        }
        if !(1..=MAX_ITERATIONS).contains(&iterations) {
            return Err(format!("Argon2id iterations {iterations} is not 1 to {MAX_ITERATIONS}"));
        }
        Ok(())
    }
}

/// How the wrapping key is derived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "algorithm", rename_all = "snake_case")]
pub enum Kdf {
    /// Argon2id (version 19) of the passphrase with this salt.
    Argon2id {
        /// Always 19 (0x13).
        version: u32,
        /// Memory in KiB.
        memory_kib: u32,
        /// Passes.
        iterations: u32,
        /// Lanes.
        parallelism: u32,
        /// 32 bytes, hex.
        salt: String,
    },
    /// `blake3::derive_key` of the salt followed by the key file's bytes.
    Blake3 {
        /// 32 bytes, hex.
        salt: String,
    },
}

/// A key object, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyObject {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always 1.
    pub version: u32,
    /// The key object's id (32 hex), also its name.
    pub id: String,
    /// When it was added.
    pub created: Moment,
    /// What wraps it.
    pub kind: KeyKind,
    /// How the wrapping key is derived.
    pub kdf: Kdf,
    /// Always `aes-256-gcm`.
    pub cipher: String,
    /// The wrapping's nonce (12 bytes, hex).
    pub nonce: String,
    /// The wrapped master key and its tag (48 bytes, hex).
    pub wrapped: String,
    /// The machine it was added on, for `key list`.
    #[serde(default)]
    pub host: String,
    /// The keyed BLAKE3 (a key derived from the master key) of the compact
    /// JSON of this object with `mac` empty: made only by a key holder.
    #[serde(default)]
    pub mac: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the wrapping is bound to.
fn associated_data(store_id: &str, key_id: &str) -> Vec<u8> {
    format!("vhdkit key v1\0{store_id}\0{key_id}").into_bytes()
}

/// The wrapping key for `secret` under `kdf`.
fn wrapping_key(kdf: &Kdf, secret: &[u8]) -> Result<Zeroizing<[u8; 32]>, String> {
    let mut out = Zeroizing::new([0u8; 32]);
    match kdf {
        Kdf::Argon2id { version, memory_kib, iterations, parallelism, salt } => {
            if *version != 0x13 {
                return Err(format!("Argon2 version {version}"));
            }
            let p = Argon2Params { memory_kib: *memory_kib, iterations: *iterations, parallelism: *parallelism };
            p.check()?;
            let salt = parse_hex::<32>(salt).ok_or("the salt is not 32 bytes of hex")?;
            let params = argon2::Params::new(p.memory_kib, p.iterations, p.parallelism, Some(32))
                .map_err(|e| format!("Argon2id parameters: {e}"))?;
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password_into(secret, &salt, &mut *out)
                .map_err(|e| format!("Argon2id: {e}"))?;
        }
        Kdf::Blake3 { salt } => {
            let salt = parse_hex::<32>(salt).ok_or("the salt is not 32 bytes of hex")?;
            let mut material = Zeroizing::new(Vec::with_capacity(32 + secret.len()));
            material.extend_from_slice(&salt);
            material.extend_from_slice(secret);
            *out = blake3::derive_key(CONTEXT_KEY_FILE, &material);
        }
    }
    Ok(out)
}

fn cipher(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("AES-256-GCM takes a 32-byte key"))
}

impl KeyObject {
    /// Wraps `master` for store `store_id` under `key`, as a new key object.
    pub fn wrap(
        master: &[u8; 32],
        store_id: &str,
        key: &StoreKey,
        argon2: &Argon2Params,
        created: Moment,
        host: String,
    ) -> Result<KeyObject, String> {
        let id = hex(&random_bytes::<16>());
        let salt = hex(&random_bytes::<32>());
        let kdf = match key.kind() {
            KeyKind::Passphrase => {
                argon2.check()?;
                Kdf::Argon2id {
                    version: 0x13,
                    memory_kib: argon2.memory_kib,
                    iterations: argon2.iterations,
                    parallelism: argon2.parallelism,
                    salt,
                }
            }
            KeyKind::KeyFile => Kdf::Blake3 { salt },
        };
        let wrapping = wrapping_key(&kdf, key.secret())?;
        let nonce: [u8; 12] = random_bytes();
        let mut buf = *master;
        let tag = cipher(&wrapping)
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated_data(store_id, &id)),
                &mut buf,
            )
            .map_err(|_| "sealing the master key failed".to_string())?;
        let mut wrapped = buf.to_vec();
        buf.zeroize();
        wrapped.extend_from_slice(tag.as_ref());
        let mut object = KeyObject {
            format: FORMAT.into(),
            version: 1,
            id,
            created,
            kind: key.kind(),
            kdf,
            cipher: crate::store::crypto::CIPHER.into(),
            nonce: hex(&nonce),
            wrapped: hex(&wrapped),
            host,
            mac: String::new(),
        };
        object.mac = object.compute_mac(&crate::store::crypto::Keys::from_master(*master));
        Ok(object)
    }

    fn compute_mac(&self, keys: &crate::store::crypto::Keys) -> String {
        let mut unsigned = self.clone();
        unsigned.mac = String::new();
        keys.key_object_mac(&serde_json::to_vec(&unsigned).unwrap_or_default())
    }

    /// Whether a holder of `keys`' master key made this object (its MAC
    /// holds): a key object anyone could plant does not count as one of
    /// the store's keys for removal, listing or retention.
    pub fn authentic(&self, keys: &crate::store::crypto::Keys) -> bool {
        crate::store::crypto::same_text(&self.mac, &self.compute_mac(keys))
    }

    /// What trying this object costs (memory times passes; a key file
    /// costs nothing): the cheapest are tried first, so objects planted
    /// with the highest costs are tried last.
    pub fn cost(&self) -> u64 {
        match &self.kdf {
            Kdf::Argon2id { memory_kib, iterations, .. } => u64::from(*memory_kib) * u64::from(*iterations),
            Kdf::Blake3 { .. } => 0,
        }
    }

    /// The master key, if `key` opens this object of store `store_id`:
    /// `Ok(None)` when it does not (a wrong passphrase, another key file,
    /// or an object altered or not this store's: the tag tells them apart
    /// from none of these).
    pub fn unwrap(&self, store_id: &str, key: &StoreKey) -> Result<Option<Zeroizing<[u8; 32]>>, String> {
        if key.kind() != self.kind {
            return Ok(None);
        }
        let wrapping = wrapping_key(&self.kdf, key.secret())?;
        let nonce = parse_hex::<12>(&self.nonce).ok_or("the nonce is not 12 bytes of hex")?;
        let mut wrapped =
            Zeroizing::new(parse_hex::<48>(&self.wrapped).ok_or("the wrapped key is not 48 bytes of hex")?);
        let opened = cipher(&wrapping).open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(associated_data(store_id, &self.id)),
            &mut wrapped[..],
        );
        Ok(opened.ok().map(|master| {
            let mut out = Zeroizing::new([0u8; 32]);
            out.copy_from_slice(master);
            out
        }))
    }

    /// Encodes the object as stored.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// Decodes and checks a key object read as `keys/<expected_id>.key`:
    /// format, version, id, cipher, lengths and the KDF's parameters (so a
    /// hostile object cannot make an open allocate without bound).
    pub fn decode(bytes: &[u8], expected_id: &str) -> Result<KeyObject, Error> {
        if bytes.len() > MAX_KEY_OBJECT {
            return Err(bad(0, format!("{} bytes is too large for a key object", bytes.len())));
        }
        let k: KeyObject = serde_json::from_slice(bytes).map_err(|e| bad(0, format!("not a key object: {e}")))?;
        if k.format != FORMAT || k.version != 1 {
            return Err(bad(
                0,
                format!("format {:?} version {} (this vhdkit reads {FORMAT:?} 1)", k.format, k.version),
            ));
        }
        if k.id != expected_id || parse_hex::<16>(&k.id).is_none() {
            return Err(bad(0, format!("the key object {expected_id} says it is {:?}", k.id)));
        }
        if k.cipher != crate::store::crypto::CIPHER {
            return Err(bad(0, format!("cipher {:?}", k.cipher)));
        }
        if parse_hex::<12>(&k.nonce).is_none() || parse_hex::<48>(&k.wrapped).is_none() {
            return Err(bad(0, "nonce or wrapped key of the wrong length"));
        }
        match (&k.kdf, k.kind) {
            (Kdf::Argon2id { version, memory_kib, iterations, parallelism, salt }, KeyKind::Passphrase) => {
                if *version != 0x13 || parse_hex::<32>(salt).is_none() {
                    return Err(bad(0, "Argon2id version or salt"));
                }
                Argon2Params { memory_kib: *memory_kib, iterations: *iterations, parallelism: *parallelism }
                    .check()
                    .map_err(|r| bad(0, r))?;
            }
            (Kdf::Blake3 { salt }, KeyKind::KeyFile) if parse_hex::<32>(salt).is_some() => {}
            _ => return Err(bad(0, "the key derivation does not fit the key's kind")),
        }
        Ok(k)
    }
}

/// A field of the key object at `offset` is wrong.
fn bad(offset: u64, reason: impl Into<String>) -> Error {
    Error::at("key object", offset, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrap(key: &StoreKey) -> KeyObject {
        KeyObject::wrap(&[42; 32], "store1", key, &Argon2Params::insecure_for_tests(), Moment::now(), "h".into())
            .unwrap()
    }

    #[test]
    fn the_right_passphrase_or_key_file_unwraps_and_nothing_else_does() {
        let pass = StoreKey::passphrase("correct horse");
        let k = wrap(&pass);
        let decoded = KeyObject::decode(&k.encode(), &k.id).unwrap();
        assert_eq!(decoded, k);
        assert_eq!(*k.unwrap("store1", &pass).unwrap().unwrap(), [42; 32]);
        // Made by the master key's holder; a changed field breaks the MAC.
        let keys = crate::store::crypto::Keys::from_master([42; 32]);
        assert!(k.authentic(&keys) && !k.authentic(&crate::store::crypto::Keys::from_master([43; 32])));
        let mut changed = k.clone();
        changed.host = "elsewhere".into();
        assert!(!changed.authentic(&keys));
        assert!(k.unwrap("store1", &StoreKey::passphrase("correct horsE")).unwrap().is_none());
        assert!(k.unwrap("store2", &pass).unwrap().is_none(), "another store's id");
        let file = StoreKey::key_file_bytes(vec![7; 32]).unwrap();
        assert!(k.unwrap("store1", &file).unwrap().is_none(), "a key file against a passphrase");
        let kf = wrap(&file);
        assert_eq!(*kf.unwrap("store1", &file).unwrap().unwrap(), [42; 32]);
        assert!(kf.unwrap("store1", &StoreKey::key_file_bytes(vec![8; 32]).unwrap()).unwrap().is_none());
        // Renamed: the id is bound.
        let mut moved = k.clone();
        moved.id = "00".repeat(16);
        assert!(moved.unwrap("store1", &pass).unwrap().is_none());
    }

    #[test]
    fn hostile_parameters_are_refused_before_any_work() {
        let k = wrap(&StoreKey::passphrase("p"));
        let with = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v: serde_json::Value = serde_json::from_slice(&k.encode()).unwrap();
            f(&mut v);
            KeyObject::decode(v.to_string().as_bytes(), &k.id)
        };
        assert!(with(&|_| {}).is_ok());
        assert!(with(&|v| v["kdf"]["memory_kib"] = (1u64 << 40).into()).is_err(), "a terabyte of memory");
        assert!(with(&|v| v["kdf"]["memory_kib"] = (MAX_MEMORY_KIB + 1).into()).is_err());
        assert!(with(&|v| v["kdf"]["iterations"] = (MAX_ITERATIONS + 1).into()).is_err());
        assert!(with(&|v| v["kdf"]["parallelism"] = (MAX_PARALLELISM + 1).into()).is_err());
        assert!(with(&|v| v["kdf"]["parallelism"] = 0.into()).is_err());
        assert!(with(&|v| v["kdf"]["salt"] = "zz".into()).is_err());
        assert!(with(&|v| v["kind"] = "key_file".into()).is_err(), "kind and kdf disagree");
        assert!(with(&|v| v["wrapped"] = "00".into()).is_err());
        assert!(with(&|v| v["cipher"] = "rot13".into()).is_err());
        assert!(KeyObject::decode(&vec![b' '; MAX_KEY_OBJECT + 1], &k.id).is_err());
        assert!(KeyObject::decode(&k.encode(), &"11".repeat(16)).is_err(), "read under another name");
    }
}
