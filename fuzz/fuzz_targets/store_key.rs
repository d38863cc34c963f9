#![no_main]
//! Key objects: decoding (with the Kdf parameters' bounds, so a hostile
//! object cannot make an open allocate without bound) and unwrapping.
use libfuzzer_sys::fuzz_target;
use vhdkit::store::StoreKey;
use vhdkit::store::crypto::keyobj::{Kdf, KeyObject};

fuzz_target!(|data: &[u8]| {
    // Read under the name the object gives itself, so decoding goes past
    // the name check.
    let id = serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_string))
        .unwrap_or_default();
    let Ok(k) = KeyObject::decode(data, &id) else { return };
    let key = match &k.kdf {
        Kdf::Blake3 { .. } => StoreKey::key_file_bytes(vec![7; 32]).expect("32 bytes"),
        // Argon2id within bounds still costs up to seconds: only cheap ones.
        Kdf::Argon2id { memory_kib, iterations, .. } if *memory_kib <= 1024 && *iterations <= 2 => {
            StoreKey::passphrase("fuzz")
        }
        Kdf::Argon2id { .. } => return,
    };
    let _ = k.unwrap("store", &key);
    let _ = KeyObject::decode(&k.encode(), &k.id).expect("an object decoded re-encodes");
});
