//! Encryption at rest.
//!
//! An encrypted store has one random 256-bit master key, kept only
//! wrapped in key objects (`keys/<id>.key`, see [`keyobj`]): by a key
//! derived with Argon2id from a passphrase, or by a key file. Several
//! wrappings may exist at once, so a passphrase changes without rewriting
//! data. From the master key come, by `blake3::derive_key` with contexts of
//! ours, four keys with one purpose each:
//! - chunk ids: the keyed BLAKE3 of a chunk's bytes, so a chunk's name says
//!   nothing about its bytes to whoever lacks the key (dedup still works
//!   within the store);
//! - records: each chunk record is sealed alone (see `chunk`);
//! - envelopes: index files, manifests, restore points, job-log entries,
//!   vacuum's records and each pack's index are sealed as a whole (see
//!   [`envelope`]);
//! - the config's MAC, which proves at open that the key is this store's
//!   and that its settings are as written.
//!
//! Everything goes through one construction, AES-256-GCM under a one-use
//! subkey ([`aead`]). What an attacker holding the storage can and cannot
//! learn or do is in docs/store-format.md ("Encrypted stores").
//!
//! May import: `model` only. Its errors are its own ([`SealError`],
//! `model::malformed::Malformed` for bytes that do not open).

pub(crate) mod aead;
pub mod envelope;
pub mod keyobj;

use std::fmt;
use std::sync::Arc;

use zeroize::{Zeroize, Zeroizing};

use crate::store::model::id::ChunkId;
use crate::store::model::malformed::Malformed;

/// Contexts for `blake3::derive_key`: one per purpose, fixed forever.
const CONTEXT_CHUNK_ID: &str = "vhdkit store 2026-12-04 chunk id";
const CONTEXT_RECORD: &str = "vhdkit store 2026-12-04 chunk record";
const CONTEXT_ENVELOPE: &str = "vhdkit store 2026-12-04 sealed object";
const CONTEXT_CONFIG: &str = "vhdkit store 2026-12-04 config mac";
const CONTEXT_KEYRING: &str = "vhdkit store 2026-12-04 key objects";

/// The cipher's name in the config.
pub const CIPHER: &str = "aes-256-gcm";

/// Whether two strings (MACs in hex) are equal, compared without an early
/// exit.
pub(crate) fn same_text(a: &str, b: &str) -> bool {
    same_bytes(a.as_bytes(), b.as_bytes())
}

/// Whether two secrets or MACs are equal, compared without an early exit
/// (only their lengths may show).
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Random bytes from the operating system's CSPRNG.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // Failing to get randomness leaves no safe way on: a zero salt or key
    // must never be used.
    getrandom::fill(&mut out).expect("the operating system's random number generator failed");
    out
}

/// A store's master key and the keys derived from it; wiped on drop.
pub struct Keys {
    master: [u8; 32],
    chunk_id: [u8; 32],
    record: [u8; 32],
    envelope: [u8; 32],
    config: [u8; 32],
    keyring: [u8; 32],
}

impl Keys {
    /// The keys of master key `master`.
    pub(crate) fn from_master(master: [u8; 32]) -> Keys {
        Keys {
            chunk_id: blake3::derive_key(CONTEXT_CHUNK_ID, &master),
            record: blake3::derive_key(CONTEXT_RECORD, &master),
            envelope: blake3::derive_key(CONTEXT_ENVELOPE, &master),
            config: blake3::derive_key(CONTEXT_CONFIG, &master),
            keyring: blake3::derive_key(CONTEXT_KEYRING, &master),
            master,
        }
    }

    /// A new random master key.
    pub(crate) fn generate() -> Keys {
        Keys::from_master(random_bytes())
    }

    /// Keys from fixed bytes, for tests and fuzz targets.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn for_tests(seed: u8) -> Keys {
        Keys::from_master([seed; 32])
    }

    pub(crate) fn master(&self) -> &[u8; 32] {
        &self.master
    }

    pub(crate) fn record_key(&self) -> &[u8; 32] {
        &self.record
    }

    pub(crate) fn envelope_key(&self) -> &[u8; 32] {
        &self.envelope
    }

    /// The config's MAC over `bytes` (lower-case hex).
    pub(crate) fn config_mac(&self, bytes: &[u8]) -> String {
        blake3::keyed_hash(&self.config, bytes).to_hex().to_string()
    }

    /// A key object's MAC over `bytes` (lower-case hex): only a holder of
    /// the master key makes one, so key objects planted by someone who can
    /// merely write to the storage are told apart.
    pub(crate) fn key_object_mac(&self, bytes: &[u8]) -> String {
        blake3::keyed_hash(&self.keyring, bytes).to_hex().to_string()
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        self.master.zeroize();
        self.chunk_id.zeroize();
        self.record.zeroize();
        self.envelope.zeroize();
        self.config.zeroize();
        self.keyring.zeroize();
    }
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keys(..)")
    }
}

/// How a store's chunks and objects are sealed.
#[derive(Clone, Debug)]
pub enum Crypt {
    /// Not at all: a store without encryption. Chunk ids are plain BLAKE3.
    Plain,
    /// With these keys.
    Sealed(Arc<Keys>),
    /// An encrypted store opened without its key: structure can be checked,
    /// nothing can be read or written.
    Locked,
}

impl Crypt {
    /// The keys, when the store is encrypted and was opened with its key.
    pub(crate) fn keys(&self) -> Option<&Keys> {
        match self {
            Crypt::Sealed(k) => Some(k),
            _ => None,
        }
    }

    /// The id of a chunk of `bytes`: BLAKE3, keyed in an encrypted store.
    pub fn chunk_id(&self, bytes: &[u8]) -> ChunkId {
        match self {
            Crypt::Sealed(keys) => ChunkId(*blake3::keyed_hash(&keys.chunk_id, bytes).as_bytes()),
            Crypt::Plain | Crypt::Locked => ChunkId::of(bytes),
        }
    }
}

/// A secret that opens an encrypted store: a passphrase (stretched with
/// Argon2id) or the contents of a key file (at least 32 bytes, used as a
/// key: make one with [`StoreKey::generate_key_file`]). Its bytes are wiped
/// when it is dropped, and `Debug` does not show them.
///
/// ```no_run
/// use vhdkit::store::{Encryption, InitOptions, OpenOptions, Store, StoreKey};
///
/// # fn main() -> vhdkit::store::Result<()> {
/// // A new store under a passphrase (Argon2id: about a second per open).
/// let mut init = InitOptions::default();
/// init.encryption = Some(Encryption::new(StoreKey::passphrase("correct horse battery staple")));
/// let store = Store::init("backups", &init)?;
/// // A key file as a second way in, for an unattended job.
/// let file = StoreKey::generate_key_file("backups.key".as_ref()).expect("a new key file");
/// store.add_key(&file, &Default::default())?;
/// drop(store);
///
/// let mut open = OpenOptions::default();
/// open.key = Some(StoreKey::read_key_file("backups.key".as_ref()).expect("the key file"));
/// let store = Store::open_with("backups", &open)?; // a wrong key fails here
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct StoreKey {
    kind: keyobj::KeyKind,
    secret: Zeroizing<Vec<u8>>,
}

/// The fewest bytes a key file may hold: it is used as a key, unstretched.
pub const MIN_KEY_FILE: usize = 32;
/// The most bytes a key file may hold.
pub const MAX_KEY_FILE: usize = 1 << 20;

impl StoreKey {
    /// A passphrase.
    pub fn passphrase(passphrase: impl Into<String>) -> StoreKey {
        StoreKey { kind: keyobj::KeyKind::Passphrase, secret: Zeroizing::new(passphrase.into().into_bytes()) }
    }

    /// A key file's contents (at least [`MIN_KEY_FILE`] bytes).
    pub fn key_file_bytes(bytes: Vec<u8>) -> std::io::Result<StoreKey> {
        let bytes = Zeroizing::new(bytes);
        if !(MIN_KEY_FILE..=MAX_KEY_FILE).contains(&bytes.len()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("a key file holds {MIN_KEY_FILE} bytes to 1 MiB, this one {}", bytes.len()),
            ));
        }
        Ok(StoreKey { kind: keyobj::KeyKind::KeyFile, secret: bytes })
    }

    /// Reads a key file.
    pub fn read_key_file(path: &std::path::Path) -> std::io::Result<StoreKey> {
        let bytes = std::fs::read(path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("key file {}: {e}", path.display())))?;
        StoreKey::key_file_bytes(bytes)
            .map_err(|e| std::io::Error::new(e.kind(), format!("key file {}: {e}", path.display())))
    }

    /// Writes a new key file of 32 random bytes at `path` (which must not
    /// exist), readable by its owner only, and returns its key.
    pub fn generate_key_file(path: &std::path::Path) -> std::io::Result<StoreKey> {
        use std::io::Write;
        let bytes: [u8; 32] = random_bytes();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(path)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        StoreKey::key_file_bytes(bytes.to_vec())
    }

    /// Whether `other` is the same key (for a passphrase typed twice);
    /// compared without an early exit.
    pub fn same_as(&self, other: &StoreKey) -> bool {
        self.kind == other.kind && same_bytes(&self.secret, &other.secret)
    }

    /// Whether this is a passphrase (else a key file).
    pub fn is_passphrase(&self) -> bool {
        self.kind == keyobj::KeyKind::Passphrase
    }

    pub(crate) fn kind(&self) -> keyobj::KeyKind {
        self.kind
    }

    pub(crate) fn secret(&self) -> &[u8] {
        &self.secret
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreKey({:?}, ..)", self.kind)
    }
}

/// A sealed object that does not open: damage or tampering, never an I/O
/// failure. `StoreError::io` turns it into `StoreError::Corrupt`.
#[derive(Debug)]
pub(crate) struct SealError {
    /// Byte offset in the object as stored.
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for SealError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sealed object at byte {}: {}", self.offset, self.reason)
    }
}

impl std::error::Error for SealError {}

/// `e`, met opening a sealed object, as the I/O error a backend returns.
pub(crate) fn seal_error(e: Malformed) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, SealError { offset: e.offset, reason: e.reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_chunk_ids_differ_from_plain_ones_and_between_stores() {
        let bytes = b"the same sector in two stores";
        let plain = Crypt::Plain.chunk_id(bytes);
        let a = Crypt::Sealed(Arc::new(Keys::for_tests(1))).chunk_id(bytes);
        let b = Crypt::Sealed(Arc::new(Keys::for_tests(2))).chunk_id(bytes);
        assert_eq!(plain, ChunkId(*blake3::hash(bytes).as_bytes()));
        assert!(a != plain && b != plain && a != b);
        // Deterministic within a store, so dedup works.
        assert_eq!(a, Crypt::Sealed(Arc::new(Keys::for_tests(1))).chunk_id(bytes));
    }

    #[test]
    fn each_purpose_has_its_own_key() {
        let k = Keys::for_tests(3);
        let all = [k.master, k.chunk_id, k.record, k.envelope, k.config, k.keyring];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn key_files_must_hold_enough_bytes_and_debug_hides_secrets() {
        assert!(StoreKey::key_file_bytes(vec![1; 31]).is_err());
        assert!(StoreKey::key_file_bytes(vec![1; 32]).is_ok());
        let k = StoreKey::passphrase("hunter2");
        assert!(!format!("{k:?}").contains("hunter2"));
    }
}
