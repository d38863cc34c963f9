//! The store's vocabulary: leaf types with no I/O.
//!
//! Holds the ids (backups, restore points, chunks, packs), UTC time, the
//! key namespace with each folder's policy ([`layout`]: the one place a key
//! is spelled) and the checksummed-JSON rule that config files and restore
//! points share.
//!
//! May import: the standard library and serialisation crates only; nothing
//! else of the store, so every other layer can build on it.

pub mod checked_json;
pub mod id;
pub mod layout;
pub mod limits;
pub mod malformed;
pub mod object_lock;
pub mod time;
