//! The store's settings, fixed at init: chunk size, compression, pack size.

use serde::{Deserialize, Serialize};

use super::chunk::Compression;
use super::error::{Result, StoreError};

/// The format name in every config.
pub const FORMAT: &str = "vhdkit-store";
/// The store format version this crate writes and reads.
pub const VERSION: u32 = 1;

/// The store's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreConfig {
    pub format: String,
    pub version: u32,
    pub store_id: String,
    /// Bytes per chunk: a power of two from 64 KiB to 4 MiB.
    pub chunk_size: u32,
    pub compression: Compression,
    pub zstd_level: i32,
    /// Target bytes per pack.
    pub pack_size: u64,
    pub created: String,
    pub checksum: String,
}

/// Settings for a new store.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub chunk_size: u32,
    pub compression: Compression,
    pub zstd_level: i32,
    pub pack_size: u64,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions { chunk_size: 512 * 1024, compression: Compression::None, zstd_level: 3, pack_size: 64 << 20 }
    }
}

impl StoreConfig {
    /// A new config from `options`, checked.
    pub fn new(options: &InitOptions, store_id: String, created: String) -> Result<StoreConfig> {
        let c = options.chunk_size;
        if !c.is_power_of_two() || !(64 * 1024..=4 << 20).contains(&c) {
            return Err(StoreError::Invalid(format!("chunk size {c} is not a power of two from 64 KiB to 4 MiB")));
        }
        if !(1..=22).contains(&options.zstd_level) {
            return Err(StoreError::Invalid(format!("zstd level {} is not 1..=22", options.zstd_level)));
        }
        if options.pack_size < u64::from(c) || options.pack_size > 4 << 30 {
            return Err(StoreError::Invalid(format!(
                "pack size {} is not between a chunk and 4 GiB",
                options.pack_size
            )));
        }
        let mut config = StoreConfig {
            format: FORMAT.into(),
            version: VERSION,
            store_id,
            chunk_size: c,
            compression: options.compression,
            zstd_level: options.zstd_level,
            pack_size: options.pack_size,
            created,
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

    /// Decodes and checks a `config` file.
    pub fn decode(bytes: &[u8]) -> std::result::Result<StoreConfig, String> {
        let config: StoreConfig = serde_json::from_slice(bytes).map_err(|e| format!("not a store config: {e}"))?;
        if config.format != FORMAT {
            return Err(format!("format {:?} is not {FORMAT:?}", config.format));
        }
        if config.version != VERSION {
            return Err(format!("store format version {} (this vhdkit reads {VERSION})", config.version));
        }
        if config.checksum != config.compute_checksum() {
            return Err("config checksum mismatch: the file was changed or damaged".into());
        }
        let c = config.chunk_size;
        if !c.is_power_of_two() || !(64 * 1024..=4 << 20).contains(&c) || config.pack_size < u64::from(c) {
            return Err(format!("chunk size {c} or pack size {} out of range", config.pack_size));
        }
        Ok(config)
    }
}
