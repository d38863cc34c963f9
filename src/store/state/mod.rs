//! What is committed in a store and who is using it.
//!
//! Holds the global chunk index (and fetching a chunk through it), backup
//! chains, the catalog of backups and restore points, leases (who holds the
//! store, and the maintenance claims), condemnation records and the
//! keyring of an encrypted store. Each reads the objects of its folder
//! through `format` and answers questions about the whole store.
//!
//! May import: `model`, `crypto`, `backend`, `format` and the store's
//! error type. Never `ops`; one state module may use another below it
//! (catalog and chain read manifests; everything may take a lease).

pub mod backup_reader;
pub mod catalog;
pub mod chain;
pub mod condemned;
pub mod fetch;
pub mod handle;
pub mod index;
pub mod keyring;
pub mod lease;
pub mod chunk_source;
pub mod readplan;
pub mod tombstone;
