//! The store's settings, fixed at init: chunk size, compression, pack size,
//! encryption.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::store::model::checked_json::Checksummed;
use crate::store::format::record::Compression;
use crate::store::crypto::keyobj::Argon2Params;
use crate::store::crypto::{Keys, StoreKey};
use crate::store::model::object_lock::ObjectLock;
use crate::store::error::{Result, StoreError};
use crate::store::model::time::Moment;

/// The format name in every config.
pub const FORMAT: &str = "vhdkit-store";

/// The store format version this crate writes. docs/store-format.md
/// specifies it; a change that an older reader would misread bumps it.
/// Version 2 writes nothing in place: merges add a manifest generation and
/// the job log is one object per job.
pub const STORE_FORMAT_VERSION: u32 = 2;

/// The oldest version this crate reads (and writes as version 2 does).
pub const OLDEST_READABLE_VERSION: u32 = 1;

/// The version of an encrypted store: version 2's layout with sealed
/// records and objects, which a reader of version 2 must not take for
/// plain ones. A plain store stays version 2.
pub const ENCRYPTED_STORE_VERSION: u32 = 4;

/// Encrypted stores as one earlier build wrote them (commit 8f8a734):
/// plain tombstones and key objects without a MAC, which this crate would
/// take for forgeries (bringing pruned backups back, and refusing to
/// remove or keep locked the store's own keys). Refused by name.
const ENCRYPTION_PREVIEW_VERSION: u32 = 3;

/// The store's settings, as its `config` file holds them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StoreConfig {
    /// Always [`FORMAT`].
    pub format: String,
    /// The format version, [`STORE_FORMAT_VERSION`].
    pub version: u32,
    /// A random id, fixed at init.
    pub store_id: String,
    /// Bytes per chunk: a power of two from 64 KiB to 4 MiB.
    pub chunk_size: u32,
    /// How new chunks are compressed.
    pub compression: Compression,
    /// The zstd level (1 to 22) when compressing.
    pub zstd_level: i32,
    /// Target bytes per pack.
    pub pack_size: u64,
    /// When the store was created.
    pub created: Moment,
    /// Object Lock: how long every object backups need stays immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<ObjectLock>,
    /// Encryption at rest, when the store has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionConfig>,
    /// The storage replaced an existing object on a conditional create when
    /// `store init` probed it, and the store was made anyway
    /// ([`InitOptions::single_writer`]): nothing the store promises that
    /// rests on put-if-absent (nothing overwritten, maintenance excluding
    /// maintenance, fencing) holds here, and one writer at a time is a
    /// convention its users keep. Absent (false) in every other store.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub single_writer: bool,
    /// In an encrypted store: the keyed BLAKE3 (the config key, derived
    /// from the master key) of the compact JSON with this field and
    /// `checksum` empty. It proves at open that the key is this store's
    /// and that the settings are as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// BLAKE3 of the compact JSON with this field empty.
    pub checksum: String,
}

/// What an encrypted store's config says of its encryption (nothing
/// secret: the keys are in key objects).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionConfig {
    /// The AEAD, [`crate::store::crypto::CIPHER`].
    pub cipher: String,
    /// How chunks are named: `"blake3-keyed"`.
    pub chunk_ids: String,
}

/// Settings for a new store.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct InitOptions {
    /// Bytes per chunk: a power of two from 64 KiB to 4 MiB (default 512 KiB).
    pub chunk_size: u32,
    /// How new chunks are compressed (default none).
    pub compression: Compression,
    /// zstd level, 1 to 22 (default 3).
    pub zstd_level: i32,
    /// Target bytes per pack (default 64 MiB; at most 4 GiB).
    pub pack_size: u64,
    /// Keep every object backups need immutable (S3 Object Lock) for this
    /// long; the bucket must have Object Lock enabled (default: none).
    pub object_lock: Option<ObjectLock>,
    /// Encrypt the store with a new random master key, wrapped by this
    /// key (default: none, a plain store). More keys can be added later.
    pub encryption: Option<Encryption>,
    /// Make the store even on storage that ignores conditional writes
    /// (`If-None-Match: *`), which init probes for and otherwise refuses:
    /// the config records it, and every open warns that exclusion between
    /// writers is by convention only (default: false).
    pub single_writer: bool,
    /// Create a store folder's missing parent folders (default: false, so
    /// an unmounted share's mount point does not quietly become a store on
    /// the local disk).
    pub create_parents: bool,
}

/// How a new store is encrypted.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Encryption {
    /// The first key: a passphrase or a key file.
    pub key: StoreKey,
    /// Argon2id's cost for a passphrase (default: about a second here).
    pub argon2: Argon2Params,
}

impl Encryption {
    /// Encryption under `key`, with default Argon2id costs.
    pub fn new(key: StoreKey) -> Encryption {
        Encryption { key, argon2: Argon2Params::default() }
    }
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunk_size: 512 * 1024,
            compression: Compression::None,
            zstd_level: 3,
            pack_size: 64 << 20,
            object_lock: None,
            encryption: None,
            single_writer: false,
            create_parents: false,
        }
    }
}

/// Why settings are out of range, if they are.
fn check(chunk_size: u32, zstd_level: i32, pack_size: u64) -> std::result::Result<(), String> {
    if !chunk_size.is_power_of_two() || !(64 * 1024..=4 << 20).contains(&chunk_size) {
        return Err(format!("chunk size {chunk_size} is not a power of two from 64 KiB to 4 MiB"));
    }
    if !(1..=22).contains(&zstd_level) {
        return Err(format!("zstd level {zstd_level} is not 1..=22"));
    }
    if pack_size < u64::from(chunk_size) || pack_size > 4 << 30 {
        return Err(format!("pack size {pack_size} is not between a chunk and 4 GiB"));
    }
    Ok(())
}

impl Checksummed for StoreConfig {
    fn checksum_mut(&mut self) -> &mut String {
        &mut self.checksum
    }
}

impl StoreConfig {
    /// A new config from `options`, checked; an encrypted store's is
    /// MACed with `keys`.
    pub fn new(options: &InitOptions, store_id: String, created: Moment, keys: Option<&Keys>) -> Result<StoreConfig> {
        check(options.chunk_size, options.zstd_level, options.pack_size).map_err(StoreError::Invalid)?;
        if let Some(lock) = options.object_lock
            && !(1..=36_500).contains(&lock.days)
        {
            return Err(StoreError::Invalid(format!("{} days of object lock is not 1 to 36,500", lock.days)));
        }
        let encryption =
            keys.map(|_| EncryptionConfig { cipher: crate::store::crypto::CIPHER.into(), chunk_ids: "blake3-keyed".into() });
        let mut config = StoreConfig {
            format: FORMAT.into(),
            version: if encryption.is_some() { ENCRYPTED_STORE_VERSION } else { STORE_FORMAT_VERSION },
            store_id,
            chunk_size: options.chunk_size,
            compression: options.compression,
            zstd_level: options.zstd_level,
            pack_size: options.pack_size,
            created,
            object_lock: options.object_lock,
            encryption,
            single_writer: options.single_writer,
            mac: None,
            checksum: String::new(),
        };
        if let Some(keys) = keys {
            config.mac = Some(config.compute_mac(keys));
        }
        config.checksum = config.compute_checksum();
        Ok(config)
    }

    /// The MAC an encrypted store's config should carry under `keys`.
    fn compute_mac(&self, keys: &Keys) -> String {
        let mut unsealed = self.clone();
        unsealed.checksum = String::new();
        unsealed.mac = Some(String::new());
        keys.config_mac(&serde_json::to_vec(&unsealed).unwrap_or_default())
    }

    /// Checks an encrypted store's MAC under `keys` (the master key some
    /// key object gave): false if the config was altered, or the key is
    /// not this store's.
    pub(crate) fn mac_holds(&self, keys: &Keys) -> bool {
        let expected = self.compute_mac(keys);
        self.mac.as_deref().is_some_and(|m| crate::store::crypto::same_text(m, &expected))
    }

    /// Whether the store is encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.encryption.is_some()
    }

    /// Encodes the config as the `config` file.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_pretty()
    }

    /// Decodes and checks a `config` file read from `path`: the same checks
    /// as [`StoreConfig::new`], plus format, version and checksum.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<StoreConfig> {
        let config: StoreConfig = serde_json::from_slice(bytes)
            .map_err(|e| StoreError::NotAStore { path: path.to_path_buf(), reason: format!("bad config: {e}") })?;
        if config.format != FORMAT {
            let reason = format!("format {:?} is not {FORMAT:?}", config.format);
            return Err(StoreError::NotAStore { path: path.to_path_buf(), reason });
        }
        if config.version == ENCRYPTION_PREVIEW_VERSION {
            let reason = "store format version 3, the encryption preview of vhdkit commit 8f8a734, whose \
                          tombstones and key objects this vhdkit would take for forgeries: read it with that \
                          build (or back it up anew into a version 4 store)"
                .to_string();
            return Err(StoreError::UnsupportedStore { path: path.to_path_buf(), reason });
        }
        if !(OLDEST_READABLE_VERSION..=ENCRYPTED_STORE_VERSION).contains(&config.version) {
            let reason = format!(
                "store format version {} (this vhdkit reads {OLDEST_READABLE_VERSION} to {ENCRYPTED_STORE_VERSION})",
                config.version
            );
            return Err(StoreError::UnsupportedStore { path: path.to_path_buf(), reason });
        }
        if config.checksum != config.compute_checksum() {
            return Err(StoreError::corrupt(path, "config", 0, "checksum mismatch: the file was changed or damaged"));
        }
        check(config.chunk_size, config.zstd_level, config.pack_size)
            .map_err(|r| StoreError::UnsupportedStore { path: path.to_path_buf(), reason: r })?;
        // Version 4 exactly when encrypted, with a cipher this crate has.
        match (&config.encryption, config.version == ENCRYPTED_STORE_VERSION) {
            (None, false) => {}
            (Some(e), true)
                if e.cipher == crate::store::crypto::CIPHER && e.chunk_ids == "blake3-keyed" && config.mac.is_some() => {}
            (Some(e), true) => {
                let reason = format!("encryption {} with {} chunk ids", e.cipher, e.chunk_ids);
                return Err(StoreError::UnsupportedStore { path: path.to_path_buf(), reason });
            }
            _ => {
                let reason = format!("version {} does not fit its encryption settings", config.version);
                return Err(StoreError::corrupt(path, "config", 0, reason));
            }
        }
        Ok(config)
    }
}
