//! Leases: who is using the store, and for what, without a lock the
//! storage would have to provide.
//!
//! A lease is a small object `locks/<lease id>/<seq>.lease` that its holder
//! refreshes by creating the next one (`seq + 1`) and deleting the previous.
//! Every store operation holds one: backups (mode `backup`), restores and
//! verify (`read`), merge, prune, vacuum and reindex (`maintenance`). Only
//! maintenance excludes maintenance; backups and reads never wait.
//!
//! Time is the storage's: a lease's age is the storage clock's now minus
//! its newest object's modification time, so clients need not agree on the
//! time. A holder learns the storage's time from its own lease objects.
//!
//! A lease older than `ttl + margin` is **stale**: its holder is dead, or
//! paused (a laptop in standby, a stopped VM) and may resume at any time.
//! A holder therefore names, when it takes its lease, the objects whose
//! creation would be its commit (a backup's manifest id, a restore point's
//! id). Whoever needs a stale lease to be over (vacuum, before deleting)
//! **fences** it: for each such id that is not committed yet, it creates
//! the tombstone `dropped/<id>` (create-if-absent). A tombstoned id is not
//! committed whatever its holder uploads later, and the holder, which looks
//! for the tombstone after its upload, reports its backup as failed. So a
//! paused holder can resume and write, but what it writes never counts.
//!
//! A holder also refuses to go on (commit, delete) once its own last
//! refresh is older than `ttl` by its wall clock or its monotonic clock.
//!
//! **Who holds maintenance** is never decided by comparing times: storage
//! clocks tick in whole seconds (S3's `Last-Modified`) and hosts' clocks
//! disagree, so two runs started in the same second could each believe it
//! came first. Instead the storage arbitrates. Maintenance claims are
//! numbered objects `locks/maintenance/<n>.claim`, created put-if-absent,
//! each naming the lease of its holder. A newcomer takes its lease, lists
//! the claims and reads the highest, `n`: if that claim's lease is alive
//! (present, fresh, and not a holder known dead on this machine) the store
//! is busy; otherwise the newcomer creates claim `n + 1`. Of any number of
//! racers that saw the same `n`, exactly one can create `n + 1`; the others
//! get `AlreadyExists` and look again. A winner then lists once more and
//! yields if a higher claim exists (a racer whose listing was older than a
//! clean-up of old claims could have recreated a number long past). Claims
//! are never deleted by their holder (an ended claim is one whose lease is
//! gone); a winner deletes claims two or more below its own.
//!
//! May import: `model`, the store's error and `backend`; its parts
//! (`claim.rs`, `host.rs`, `table.rs`) import this file, which declares them and
//! never imports them back but for what it re-exports.

mod claim;
mod host;
mod table;

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::store::backend::{Backend, put_new};
use crate::store::error::{Result, StoreError};
use crate::store::model::time::Moment;

use claim::{Claim, claim_maintenance};
pub(crate) use host::machine_id;
pub(crate) use table::{LeaseInfo, LeaseTable, lease_info};

/// What a lease is held for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseMode {
    /// A backup: writes packs, index files and manifests.
    Backup,
    /// A restore or verify: reads only.
    Read,
    /// Merge, prune, vacuum, reindex: one at a time.
    Maintenance,
}

/// Which clock a holder judges its own lease's age by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LeaseClock {
    /// This machine's wall and monotonic clocks, the slower of the two (the
    /// default: costs nothing).
    #[default]
    Local,
    /// The storage's clock ([`Backend::now`]), asked at every check: for
    /// stores whose clock is simulated.
    Storage,
}

/// How long leases live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseSettings {
    /// A holder refreshes its lease well within this (every quarter), and
    /// stops committing or deleting once its last refresh is older.
    pub ttl: Duration,
    /// Others treat a lease as stale only once it is older than
    /// `ttl + margin`: room for clocks that run at different rates.
    pub margin: Duration,
    /// Refresh from a background thread (off only for deterministic
    /// schedules, where refreshes happen at the holder's checks).
    pub background: bool,
    /// The clock a holder judges its own age by.
    pub clock: LeaseClock,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            ttl: Duration::from_secs(300),
            margin: Duration::from_secs(300),
            background: true,
            clock: LeaseClock::Local,
        }
    }
}

impl LeaseSettings {
    /// Settings for a simulated store: `ttl` and `margin` on the storage's
    /// clock, refreshed only at the holder's checks (no thread).
    pub fn simulated(ttl: Duration, margin: Duration) -> LeaseSettings {
        LeaseSettings { ttl, margin, background: false, clock: LeaseClock::Storage }
    }
}

/// What a lease object holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeaseRecord {
    pub lease: String,
    pub mode: LeaseMode,
    pub op: String,
    pub host: String,
    pub pid: u32,
    /// This boot of this machine and the process id namespace the pid is
    /// in: a lease whose holder shares it, and whose pid is gone, is over.
    #[serde(default)]
    pub machine: String,
    pub seq: u64,
    pub ttl_secs: u64,
    /// The storage's time when the lease was taken.
    pub first: Moment,
    /// Ids whose commit object (manifest or restore point) this holder may
    /// create: what fencing tombstones.
    #[serde(default)]
    pub commits: Vec<String>,
}

pub(crate) use crate::store::model::layout::tombstone_key;
use crate::store::model::layout::lease_key;

/// The most a lease or claim object may hold: they are a few hundred
/// bytes, and one planted in the store must not make us fetch more.
pub(crate) const MAX_LEASE_OBJECT: u64 = 1 << 20;

pub(crate) fn io(backend: &dyn Backend, key: &str, action: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
    StoreError::io(backend.describe(key), action)
}

struct HolderState {
    seq: u64,
    record: LeaseRecord,
    /// The storage's time at the last refresh, and our clocks then.
    server_at_refresh: SystemTime,
    wall_at_refresh: SystemTime,
    mono_at_refresh: Instant,
    /// Why the lease can no longer be used, once it cannot.
    lost: Option<String>,
}

struct Inner {
    backend: Arc<dyn Backend>,
    id: String,
    settings: LeaseSettings,
    state: Mutex<HolderState>,
    stop: (Mutex<bool>, Condvar),
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, HolderState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the next lease object, then removes the previous one.
    fn refresh(&self) -> Result<()> {
        let backend = &*self.backend;
        let (seq, record) = {
            let st = self.state();
            if let Some(why) = &st.lost {
                return Err(StoreError::LeaseLost(why.clone()));
            }
            let mut record = st.record.clone();
            record.seq = st.seq + 1;
            (st.seq, record)
        };
        let key = lease_key(&self.id, seq + 1);
        let bytes = serde_json::to_vec(&record).unwrap_or_default();
        put_new(backend, &key, &bytes).map_err(io(backend, &key, "refresh lease"))?;
        let info = backend.stat(&key).map_err(io(backend, &key, "refresh lease"))?;
        {
            let mut st = self.state();
            st.seq = seq + 1;
            st.record = record;
            st.server_at_refresh = info.modified;
            st.wall_at_refresh = SystemTime::now();
            st.mono_at_refresh = Instant::now();
        }
        let old = lease_key(&self.id, seq);
        let _ = backend.delete(&old);
        Ok(())
    }

    /// How long since the last refresh: by the slower of our two clocks
    /// (the monotonic one does not count a suspended machine's sleep), or
    /// by the storage's.
    fn age(&self) -> Duration {
        let st = self.state();
        match self.settings.clock {
            LeaseClock::Local => {
                let wall = SystemTime::now().duration_since(st.wall_at_refresh).unwrap_or_default();
                wall.max(st.mono_at_refresh.elapsed())
            }
            LeaseClock::Storage => {
                let now = self.backend.now().unwrap_or(st.server_at_refresh);
                now.duration_since(st.server_at_refresh).unwrap_or_default()
            }
        }
    }
}

/// A lease this process holds. Dropping it ends the lease.
pub(crate) struct Lease {
    inner: Arc<Inner>,
    refresher: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("id", &self.inner.id).finish()
    }
}

impl Lease {
    /// Takes a lease for `op` in `mode`. A maintenance lease conflicts with
    /// another fresh maintenance lease taken earlier: then `StoreBusy`, or
    /// with `wait`, waiting for it to end (a stale holder is not waited for).
    pub(crate) fn acquire(
        backend: Arc<dyn Backend>,
        settings: LeaseSettings,
        mode: LeaseMode,
        op: &str,
        wait: bool,
    ) -> Result<Lease> {
        Lease::acquire_committing(backend, settings, mode, op, wait, Vec::new())
    }

    /// [`Lease::acquire`] for a holder that will commit `commits` (backup
    /// or restore point ids): a fencer tombstones those.
    pub(crate) fn acquire_committing(
        backend: Arc<dyn Backend>,
        settings: LeaseSettings,
        mode: LeaseMode,
        op: &str,
        wait: bool,
        commits: Vec<String>,
    ) -> Result<Lease> {
        loop {
            let lease = Lease::take(backend.clone(), settings, mode, op, commits.clone())?;
            if mode != LeaseMode::Maintenance {
                return Ok(lease);
            }
            let holder = match claim_maintenance(&lease)? {
                Claim::Won => return Ok(lease),
                Claim::Held(holder) => holder,
            };
            drop(lease);
            if !wait {
                return Err(StoreError::StoreBusy { path: backend.describe(""), holder });
            }
            std::thread::sleep((settings.ttl / 20).clamp(Duration::from_millis(50), Duration::from_secs(5)));
        }
    }

    fn take(
        backend: Arc<dyn Backend>,
        settings: LeaseSettings,
        mode: LeaseMode,
        op: &str,
        commits: Vec<String>,
    ) -> Result<Lease> {
        let id = crate::format::Guid::new_random().to_string().replace('-', "");
        let now = Moment::from(backend.now().unwrap_or_else(|_| SystemTime::now()));
        let record = LeaseRecord {
            lease: id.clone(),
            mode,
            op: op.to_string(),
            host: host_name(),
            pid: std::process::id(),
            machine: machine_id(),
            seq: 0,
            ttl_secs: settings.ttl.as_secs(),
            first: now,
            commits,
        };
        let key = lease_key(&id, 0);
        let b = &*backend;
        put_new(b, &key, &serde_json::to_vec(&record).unwrap_or_default()).map_err(io(b, &key, "take lease"))?;
        let info = b.stat(&key).map_err(io(b, &key, "take lease"))?;
        let mut record = record;
        // From here on the lease's start is the storage's time.
        record.first = Moment::from(info.modified);
        let state = HolderState {
            seq: 0,
            record,
            server_at_refresh: info.modified,
            wall_at_refresh: SystemTime::now(),
            mono_at_refresh: Instant::now(),
            lost: None,
        };
        let inner = Arc::new(Inner {
            backend,
            id,
            settings,
            state: Mutex::new(state),
            stop: (Mutex::new(false), Condvar::new()),
        });
        let refresher = settings.background.then(|| {
            let inner = inner.clone();
            std::thread::spawn(move || refresh_loop(&inner))
        });
        Ok(Lease { inner, refresher })
    }

    /// The lease's id.
    pub(crate) fn id(&self) -> &str {
        &self.inner.id
    }

    /// The storage's time now, as this holder best knows it.
    pub(crate) fn server_now(&self) -> SystemTime {
        let st = self.inner.state();
        match self.inner.settings.clock {
            LeaseClock::Local => st.server_at_refresh + st.mono_at_refresh.elapsed(),
            LeaseClock::Storage => self.inner.backend.now().unwrap_or(st.server_at_refresh),
        }
    }

    /// The settings the lease was taken with.
    pub(crate) fn settings(&self) -> LeaseSettings {
        self.inner.settings
    }

    /// Fails (`LeaseLost`) once the lease can no longer be trusted; else
    /// refreshes it when half its life has gone. Called between chunks and
    /// before anything is committed or deleted.
    pub(crate) fn check(&self) -> Result<()> {
        if let Some(why) = &self.inner.state().lost {
            return Err(StoreError::LeaseLost(why.clone()));
        }
        let age = self.inner.age();
        let ttl = self.inner.settings.ttl;
        if age > ttl {
            let why = format!(
                "lease {} was last refreshed {} s ago, past its {} s",
                self.inner.id,
                age.as_secs(),
                ttl.as_secs()
            );
            self.inner.state().lost = Some(why.clone());
            return Err(StoreError::LeaseLost(why));
        }
        if age > ttl / 2 {
            self.inner.refresh()?;
        }
        Ok(())
    }

    /// After the holder created the commit object of `id`: fails with
    /// `LeaseLost` if the id was tombstoned (the lease was fenced while
    /// stale), so a commit that does not count is never reported as one.
    pub(crate) fn confirm_commit(&self, id: &str) -> Result<()> {
        let backend = &*self.inner.backend;
        let key = tombstone_key(id);
        match backend.stat(&key) {
            Ok(_) => {
                let why = format!("lease {} went stale and was fenced: {id} does not count", self.inner.id);
                self.inner.state().lost = Some(why.clone());
                Err(StoreError::LeaseLost(why))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(backend, &key, "check tombstone")(e)),
        }
    }
}

fn refresh_loop(inner: &Inner) {
    let every = inner.settings.ttl / 4;
    loop {
        let (m, cv) = &inner.stop;
        let stopped = m.lock().unwrap_or_else(|p| p.into_inner());
        let (stopped, _) = cv.wait_timeout_while(stopped, every, |s| !*s).unwrap_or_else(|p| p.into_inner());
        if *stopped {
            return;
        }
        drop(stopped);
        // A failed refresh is retried at the next tick; `check` notices a
        // lease that has gone too long without one.
        let _ = inner.refresh();
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        {
            let (m, cv) = &self.inner.stop;
            *m.lock().unwrap_or_else(|p| p.into_inner()) = true;
            cv.notify_all();
        }
        if let Some(h) = self.refresher.take() {
            let _ = h.join();
        }
        let backend = &*self.inner.backend;
        let seq = self.inner.state().seq;
        let _ = backend.delete(&lease_key(&self.inner.id, seq));
    }
}

/// This machine's name, for the job log and leases.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests;
