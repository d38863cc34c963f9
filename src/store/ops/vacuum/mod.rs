//! Vacuum: garbage collection and compaction, beside running backups.
//!
//! Vacuum takes a maintenance lease (two vacuums, or a vacuum and a prune,
//! do not run at once) and never waits for backups or restores, which keep
//! running beside it. It deletes in two phases:
//!
//! 1. **Condemn** ([`condemn`]): mark what every committed backup and
//!    restore point needs, choose one sound copy of each live chunk, copy
//!    the live records of packs with too much dead weight into new packs,
//!    and commit one new index file naming every live chunk's copy. Then
//!    write a condemnation record naming what is now unneeded: dead and
//!    rewritten packs, superseded index files, manifests of unfinished or
//!    dropped jobs, superseded manifest generations, damage markers,
//!    leftovers. Last, record the leases held at that instant. Nothing is
//!    deleted.
//! 2. **Finish** ([`finish`]): for each record older than the grace period
//!    whose every listed lease has ended (or was stale and has been
//!    fenced), mark again, rescue any condemned pack holding a chunk that a
//!    backup committed since needs (no copy of it survives elsewhere),
//!    write an index file for every needed entry that only a condemned
//!    index file held, and only then delete.
//!
//! A run finishes due records, then condemns; with a grace period of zero
//! and no other lease in the way, it finishes its own record in the same
//! run. Cancellation is honoured until deleting starts. The argument that
//! no interleaving with backups loses a committed chunk is in
//! docs/store-format.md ("Deleting on shared storage").
//!
//! May import: the layers below `ops` and its own phases, which import
//! `options.rs`, never this file.

mod condemn;
mod finish;
mod mark;
pub(crate) mod options;
mod retention;

pub use options::{VacuumOptions, VacuumReport};

use std::time::Instant;

use crate::store::error::{Result, StoreError};
use crate::store::state::handle::Handle;
use crate::store::state::lease::LeaseMode;

/// [`Store::vacuum`](crate::store::Store::vacuum).
pub(crate) fn vacuum(store: &Handle, options: &VacuumOptions) -> Result<VacuumReport> {
    store.require_writable()?;
    let started = Instant::now();
    let t0 = store.backend().traffic();
    let lease = store.lease(LeaseMode::Maintenance, "vacuum", options.wait)?;
    let backend = store.backend();
    let total =
        |what| crate::store::backend::total_bytes(backend, "").map_err(StoreError::io(backend.describe(""), what));
    let mut report = VacuumReport { bytes_before: total("measure")?, ..Default::default() };
    crate::store::ops::vacuum::finish::finish(store, &lease, options, &mut report)?;
    let condemned = crate::store::ops::vacuum::condemn::condemn(store, &lease, options, &mut report)?;
    if condemned && options.grace.is_zero() {
        crate::store::ops::vacuum::finish::finish(store, &lease, options, &mut report)?;
    }
    if let Some(lock) = store.config.object_lock {
        crate::store::ops::vacuum::retention::extend_retention(store, &lease, lock, &mut report)?;
    }
    report.bytes_after = total("measure")?;
    report.bytes_reclaimed = report.bytes_before.saturating_sub(report.bytes_after);
    report.seconds = started.elapsed().as_secs_f64();
    report.traffic = store.backend().traffic().since(t0);
    store.log_job("vacuum", &serde_json::to_value(&report).unwrap_or_default());
    Ok(report)
}
