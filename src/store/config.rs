//! The store's settings, fixed at init: chunk size, compression, pack size.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::chunk::Compression;
use super::error::{Result, StoreError};
use super::time::Moment;

/// The format name in every config.
pub const FORMAT: &str = "vhdkit-store";

/// The store format version this crate writes. docs/store-format.md
/// specifies it; a change that an older reader would misread bumps it.
/// Version 2 writes nothing in place: merges add a manifest generation and
/// the job log is one object per job.
pub const STORE_FORMAT_VERSION: u32 = 2;

/// The oldest version this crate reads (and writes as version 2 does).
pub const OLDEST_READABLE_VERSION: u32 = 1;

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
    /// BLAKE3 of the compact JSON with this field empty.
    pub checksum: String,
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
}

/// Object Lock settings: every pack, index file, manifest, restore point
/// and the config are written with a retain-until date `days` ahead, and
/// vacuum keeps extending it for what live backups need; nothing is
/// deleted while retained, by us or (in `Compliance` mode) by anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectLock {
    /// Days of retention from a write or an extension (1 to 36,500).
    pub days: u32,
    /// The lock's mode.
    pub mode: LockMode,
}

/// S3 Object Lock modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockMode {
    /// Users with `s3:BypassGovernanceRetention` may still delete.
    Governance,
    /// Nobody can delete or shorten it, not even the account's root user.
    Compliance,
}

impl LockMode {
    /// The name S3 uses.
    pub fn s3_name(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }
}

impl ObjectLock {
    /// The retention an object written or extended at `now` gets.
    pub fn until(&self, now: std::time::SystemTime) -> std::time::SystemTime {
        now + std::time::Duration::from_secs(u64::from(self.days) * 86_400)
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

impl StoreConfig {
    /// A new config from `options`, checked.
    pub fn new(options: &InitOptions, store_id: String, created: Moment) -> Result<StoreConfig> {
        check(options.chunk_size, options.zstd_level, options.pack_size).map_err(StoreError::Invalid)?;
        if let Some(lock) = options.object_lock
            && !(1..=36_500).contains(&lock.days)
        {
            return Err(StoreError::Invalid(format!("{} days of object lock is not 1 to 36,500", lock.days)));
        }
        let mut config = StoreConfig {
            format: FORMAT.into(),
            version: STORE_FORMAT_VERSION,
            store_id,
            chunk_size: options.chunk_size,
            compression: options.compression,
            zstd_level: options.zstd_level,
            pack_size: options.pack_size,
            created,
            object_lock: options.object_lock,
            checksum: String::new(),
        };
        config.checksum = config.compute_checksum();
        Ok(config)
    }

    fn compute_checksum(&self) -> String {
        let mut unsealed = self.clone();
        unsealed.checksum = String::new();
        let json = serde_json::to_vec(&unsealed).unwrap_or_default();
        blake3::hash(&json).to_hex().to_string()
    }

    /// Encodes the config as the `config` file.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
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
        if !(OLDEST_READABLE_VERSION..=STORE_FORMAT_VERSION).contains(&config.version) {
            let reason = format!(
                "store format version {} (this vhdkit reads {OLDEST_READABLE_VERSION} to {STORE_FORMAT_VERSION})",
                config.version
            );
            return Err(StoreError::UnsupportedStore { path: path.to_path_buf(), reason });
        }
        if config.checksum != config.compute_checksum() {
            return Err(StoreError::corrupt(path, "config", 0, "checksum mismatch: the file was changed or damaged"));
        }
        check(config.chunk_size, config.zstd_level, config.pack_size)
            .map_err(|r| StoreError::UnsupportedStore { path: path.to_path_buf(), reason: r })?;
        Ok(config)
    }
}
