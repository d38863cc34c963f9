//! The store's operations, one module each: making and opening a store,
//! backup, restore (and reading a backup at any offset), verify (and of
//! the file systems inside a backup), merge,
//! prune, vacuum, reindex, stats and the job log.
//!
//! Each is a function over a [`Handle`](crate::store::state::handle::Handle)
//! that [`Store`](crate::store::Store)'s method of the same name calls, and
//! each takes the lease it needs itself. What two operations share lives a
//! layer down: the merge fold is `state::chain::write_merged` (merge, prune
//! and a backup over the chain cap use it), fetching a chunk is
//! `state::fetch`, an attachment's size bound is `format::point`'s.
//!
//! May import: every layer below (`model`, `crypto`, the store's error,
//! `backend`, `format`, `state`) and the rest of the crate (disks, exports,
//! progress, cancellation). Never another operation, nor `store/mod.rs`.

pub mod backup;
pub mod fs_check;
pub mod log;
pub mod merge;
pub mod open;
pub mod prune;
pub mod reindex;
pub mod restore;
pub mod stats;
pub mod vacuum;
pub mod verify;
