//! The store's operations, one module each: backup, restore (and reading a
//! backup at any offset), verify, merge, prune, vacuum, reindex and stats.
//!
//! Each is reached through a method of [`Store`](crate::store::Handle),
//! which holds the lease the operation needs. What two operations share
//! lives in `state` (prune merges through the merge step that
//! `state::chain`'s callers share), so no operation imports another.
//!
//! May import: every layer below (`model`, `crypto`, `backend`, `format`,
//! `state`, the store's error type) and the rest of the crate (disks,
//! exports, progress, cancellation).

pub mod backup;
pub mod log;
pub mod merge;
pub mod open;
pub mod prune;
pub mod reindex;
pub mod restore;
pub mod stats;
pub mod vacuum;
pub mod verify;
