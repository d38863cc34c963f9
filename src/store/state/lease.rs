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

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::store::backend::{Backend, ObjectInfo};
use crate::store::error::{Result, StoreError};
use crate::store::model::time::Moment;

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
use crate::store::model::layout::{CLAIMS, claim_key, lease_key};

/// The most a lease or claim object may hold: they are a few hundred
/// bytes, and one planted in the store must not make us fetch more.
const MAX_LEASE_OBJECT: u64 = 1 << 20;

fn io(backend: &dyn Backend, key: &str, action: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
    StoreError::io(backend.describe(key), action)
}

/// Writes a whole small object, only if its key is free.
pub(crate) fn put_new(backend: &dyn Backend, key: &str, bytes: &[u8]) -> std::io::Result<()> {
    let mut w = backend.create(key)?;
    w.write(bytes)?;
    w.commit()
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

/// What a maintenance claim holds: whose it is.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ClaimRecord {
    lease: String,
    op: String,
    host: String,
    pid: u32,
}

/// The outcome of trying to claim maintenance.
enum Claim {
    /// This lease holds maintenance.
    Won,
    /// Someone else does: who, for the message.
    Held(String),
}

/// The claims there are, by number.
fn list_claims(backend: &dyn Backend) -> Result<Vec<u64>> {
    let listed = match backend.list(CLAIMS) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        other => other.map_err(io(backend, CLAIMS, "list maintenance claims"))?,
    };
    let mut numbers: Vec<u64> = listed
        .iter()
        .filter_map(|o| o.key.strip_prefix(CLAIMS)?.strip_prefix('/')?.strip_suffix(".claim")?.parse().ok())
        .collect();
    numbers.sort_unstable();
    Ok(numbers)
}

/// Who holds claim `n`, if its holder may still be at work: its lease is
/// listed, fresh, and not held by a process known to be gone. A claim that
/// does not parse names nobody (it can only have been written by hand).
fn live_holder(backend: &dyn Backend, me: &Lease, n: u64) -> Result<Option<String>> {
    let key = claim_key(n);
    let record: ClaimRecord = match crate::store::backend::read_small(backend, &key, MAX_LEASE_OBJECT) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(_) => return Ok(None),
        },
        // Gone, or too large to be one of ours: it names nobody.
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidData) => {
            return Ok(None);
        }
        Err(e) => return Err(io(backend, &key, "read maintenance claim")(e)),
    };
    if record.lease == me.inner.id {
        return Ok(None);
    }
    // Only the holder's own folder: listing every lease would leave a
    // window for its refresh to hide it.
    let Some(holder) = lease_info(backend, &record.lease)? else { return Ok(None) };
    let now = me.server_now();
    let alive = holder.record.mode == LeaseMode::Maintenance
        && holder.fresh(now, &me.inner.settings)
        && holder.holder_may_run();
    Ok(alive.then(|| format!("{} (pid {} on {})", record.op, record.pid, record.host)))
}

/// Claims maintenance for `lease` (see the module documentation): the
/// storage's put-if-absent decides between racers, never a clock.
fn claim_maintenance(lease: &Lease) -> Result<Claim> {
    let backend = &*lease.inner.backend;
    let mine = {
        let st = lease.inner.state();
        ClaimRecord {
            lease: lease.inner.id.clone(),
            op: st.record.op.clone(),
            host: st.record.host.clone(),
            pid: st.record.pid,
        }
    };
    let bytes = serde_json::to_vec(&mine).unwrap_or_default();
    // Each lost race means another claim was made meanwhile: look again,
    // a bounded number of times (a live winner makes the next look "busy").
    for _ in 0..64 {
        let claims = list_claims(backend)?;
        let top = claims.last().copied();
        if let Some(n) = top
            && let Some(holder) = live_holder(backend, lease, n)?
        {
            return Ok(Claim::Held(holder));
        }
        // A claim number at the top of u64 can only have been planted.
        let Some(next) = top.map_or(Some(0), |n| n.checked_add(1)) else {
            return Err(StoreError::UnsupportedStore {
                path: backend.describe(CLAIMS),
                reason: format!("maintenance claim {} is the largest number there is: remove it", claim_key(u64::MAX)),
            });
        };
        let key = claim_key(next);
        match put_new(backend, &key, &bytes) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io(backend, &key, "claim maintenance")(e)),
        }
        // A racer whose listing predates a clean-up can recreate a number
        // far below the top: whoever is not highest yields.
        let after = list_claims(backend)?;
        if let Some(&higher) = after.iter().rev().find(|&&n| n > next) {
            let _ = backend.delete(&key);
            if let Some(holder) = live_holder(backend, lease, higher)? {
                return Ok(Claim::Held(holder));
            }
            continue;
        }
        for old in after.into_iter().filter(|&n| n.saturating_add(2) <= next) {
            let _ = backend.delete(&claim_key(old));
        }
        return Ok(Claim::Won);
    }
    // A lost race ends in a live holder at the next look; 64 in a row
    // without one is claims being made and removed under us: say so,
    // rather than wait on it forever.
    Err(StoreError::StoreBusy {
        path: backend.describe(CLAIMS),
        holder: "nobody live, yet 64 maintenance claims in a row were lost: look at locks/maintenance/".into(),
    })
}

/// One lease as others see it.
#[derive(Debug, Clone)]
pub(crate) struct LeaseInfo {
    pub id: String,
    pub record: LeaseRecord,
    /// The newest lease object's time.
    pub modified: SystemTime,
}

/// This boot of this machine and this process's pid namespace; empty where
/// that cannot be told (then no lease is judged by its pid).
pub(crate) fn machine_id() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let ns = std::fs::read_link("/proc/self/ns/pid").map(|p| p.display().to_string()).unwrap_or_default();
        if boot.trim().is_empty() || ns.is_empty() { String::new() } else { format!("{} {ns}", boot.trim()) }
    })
    .clone()
}

impl LeaseInfo {
    /// Whether the holder may still be running: false only for a holder on
    /// this machine (same boot, same pid namespace) whose process is gone,
    /// which is over for certain however fresh its lease looks.
    pub(crate) fn holder_may_run(&self) -> bool {
        let mine = machine_id();
        if mine.is_empty() || self.record.machine != mine {
            return true;
        }
        #[cfg(unix)]
        {
            let Ok(pid) = libc::pid_t::try_from(self.record.pid) else { return true };
            if pid <= 0 {
                return true;
            }
            // SAFETY: kill(2) with signal 0 only checks that the process exists.
            let r = unsafe { libc::kill(pid, 0) };
            r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
        }
        #[cfg(not(unix))]
        {
            true
        }
    }

    /// Whether the lease is younger than `ttl + margin` at `now`, with the
    /// longer of the holder's ttl and ours.
    pub(crate) fn fresh(&self, now: SystemTime, settings: &LeaseSettings) -> bool {
        let age = now.duration_since(self.modified).unwrap_or_default();
        // The holder refreshes by its own ttl, which may be longer than ours
        // (up to a day: a lease that claims more cannot hold maintenance
        // for longer than that).
        let ttl = settings.ttl.max(Duration::from_secs(self.record.ttl_secs.min(86_400)));
        age <= ttl.saturating_add(settings.margin)
    }
}

/// Every lease in the store.
#[derive(Debug, Clone, Default)]
pub(crate) struct LeaseTable {
    pub leases: Vec<LeaseInfo>,
}

impl LeaseTable {
    /// Lists `locks/` and reads each lease's newest record and its fence.
    pub(crate) fn read(backend: &dyn Backend) -> Result<LeaseTable> {
        let listed = match backend.list("locks") {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            other => other.map_err(io(backend, "locks", "list leases"))?,
        };
        let mut by_id: BTreeMap<String, (u64, ObjectInfo)> = BTreeMap::new();
        for o in listed {
            let Some(rest) = o.key.strip_prefix("locks/") else { continue };
            let Some((id, name)) = rest.split_once('/') else { continue };
            let Some(seq) = name.strip_suffix(".lease").and_then(|s| s.parse::<u64>().ok()) else { continue };
            if by_id.get(id).is_none_or(|(s, _)| *s < seq) {
                by_id.insert(id.to_string(), (seq, o));
            }
        }
        let mut leases = Vec::new();
        for (id, (_, info)) in by_id {
            // A refresh creates `seq + 1` before it deletes `seq`: an object
            // gone since the listing means a newer one exists, unless the
            // lease ended. Look again in its own folder before leaving it out.
            let found = match read_record(backend, &info)? {
                Read::Record(record) => Some((record, info.modified)),
                Read::Gone => lease_info(backend, &id)?.map(|l| (l.record, l.modified)),
                Read::Unreadable => None,
            };
            if let Some((record, modified)) = found {
                leases.push(LeaseInfo { id, record, modified });
            }
        }
        Ok(LeaseTable { leases })
    }
}

/// What reading a lease object found.
enum Read {
    /// Its record.
    Record(LeaseRecord),
    /// Gone: refreshed or released since it was listed.
    Gone,
    /// There, but not a lease this vhdkit reads (written by hand, or by a
    /// newer vhdkit): it names nobody, as before, and is never retried.
    Unreadable,
}

fn read_record(backend: &dyn Backend, info: &ObjectInfo) -> Result<Read> {
    match crate::store::backend::read_small(backend, &info.key, MAX_LEASE_OBJECT) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).map_or(Read::Unreadable, Read::Record)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Read::Gone),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Ok(Read::Unreadable),
        Err(e) => Err(io(backend, &info.key, "read lease")(e)),
    }
}

/// Whether `id` can be a lease id (32 lower-case hex digits, as `take`
/// makes them): an id read from a claim becomes part of a key.
fn lease_id_ok(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Lease `id` as it stands: its newest object's record and time, read from
/// a listing of its own folder, tried again while refreshes race the read
/// (a few times: each retry means its holder refreshed in between). `None`
/// only when its folder is empty: the lease has ended.
pub(crate) fn lease_info(backend: &dyn Backend, id: &str) -> Result<Option<LeaseInfo>> {
    if !lease_id_ok(id) {
        return Ok(None);
    }
    let folder = crate::store::model::layout::lease_folder(id);
    for _ in 0..8 {
        let listed = match backend.list(&folder) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            other => other.map_err(io(backend, &folder, "list lease"))?,
        };
        let newest = listed
            .into_iter()
            .filter_map(|o| {
                let seq = o.key.rsplit('/').next()?.strip_suffix(".lease")?.parse::<u64>().ok()?;
                Some((seq, o))
            })
            .max_by_key(|(seq, _)| *seq);
        let Some((_, info)) = newest else { return Ok(None) };
        match read_record(backend, &info)? {
            Read::Record(record) => return Ok(Some(LeaseInfo { id: id.to_string(), record, modified: info.modified })),
            Read::Unreadable => return Ok(None),
            Read::Gone => {}
        }
    }
    Err(StoreError::io(backend.describe(&folder), "read lease")(std::io::Error::other(
        "the lease changed under every one of 8 reads",
    )))
}

/// Fences a stale lease: tombstones every id it may commit that is not
/// committed yet, so nothing it creates from now on counts. Ids already
/// committed are left alone (the holder died after its commit).
pub(crate) fn fence(backend: &dyn Backend, lease: &LeaseInfo) -> Result<()> {
    for id in &lease.record.commits {
        let mut committed = false;
        // An id that is no id (a hand-written lease) names nothing to fence.
        let (Ok(backup), Ok(point)) = (id.parse::<crate::store::model::id::BackupId>(), id.parse::<crate::store::model::id::PointId>()) else {
            continue;
        };
        for k in [crate::store::model::layout::manifest_key(&backup, 0), crate::store::model::layout::point_key(&point)] {
            committed |= crate::store::backend::exists(backend, &k).map_err(io(backend, &k, "check commit"))?;
        }
        if committed {
            continue;
        }
        let key = tombstone_key(id);
        let why = format!("fenced: lease {} went stale before committing", lease.id);
        match put_new(backend, &key, why.as_bytes()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(backend, &key, "fence lease")(e)),
        }
    }
    Ok(())
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
mod tests {
    use std::sync::atomic::Ordering::SeqCst;

    use super::*;
    use crate::store::backend::MemoryBackend;

    fn settings() -> LeaseSettings {
        LeaseSettings {
            ttl: Duration::from_secs(60),
            margin: Duration::from_secs(60),
            ..LeaseSettings::simulated(Duration::ZERO, Duration::ZERO)
        }
    }

    #[test]
    fn maintenance_excludes_maintenance_and_nothing_else() {
        let b: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let vacuum = Lease::acquire(b.clone(), settings(), LeaseMode::Maintenance, "vacuum", false).unwrap();
        let backup = Lease::acquire(b.clone(), settings(), LeaseMode::Backup, "backup", false).unwrap();
        let read = Lease::acquire(b.clone(), settings(), LeaseMode::Read, "verify", false).unwrap();
        let err = Lease::acquire(b.clone(), settings(), LeaseMode::Maintenance, "prune", false).unwrap_err();
        assert!(matches!(&err, StoreError::StoreBusy { holder, .. } if holder.starts_with("vacuum")), "{err}");
        drop(vacuum);
        let prune = Lease::acquire(b.clone(), settings(), LeaseMode::Maintenance, "prune", false).unwrap();
        let table = LeaseTable::read(&*b).unwrap();
        assert_eq!(table.leases.len(), 3);
        drop((prune, backup, read));
        assert!(LeaseTable::read(&*b).unwrap().leases.is_empty(), "leases are gone when their holders are");
        // Only claims stay (a claim whose lease is gone has ended).
        let left = b.list("locks").unwrap();
        assert!(left.iter().all(|o| o.key.starts_with("locks/maintenance/")), "{left:?}");
    }

    /// Another process's view of the storage: its clock off by `skew`
    /// seconds, and (while `races` lasts) every lease object refreshed away
    /// just before it is read (its holder writes `seq + 1` and deletes
    /// `seq`): the window between a listing and a read.
    #[derive(Debug)]
    struct View {
        inner: MemoryBackend,
        skew: i64,
        races: std::sync::atomic::AtomicUsize,
    }

    impl View {
        fn skewed(inner: MemoryBackend, skew: i64) -> View {
            View { inner, skew, races: std::sync::atomic::AtomicUsize::new(0) }
        }
    }

    impl Backend for View {
        fn create(&self, key: &str) -> std::io::Result<Box<dyn crate::store::backend::ObjectWriter>> {
            self.inner.create(key)
        }
        fn delete(&self, key: &str) -> std::io::Result<()> {
            self.inner.delete(key)
        }
        fn describe(&self, key: &str) -> std::path::PathBuf {
            self.inner.describe(key)
        }
        fn read_at(&self, key: &str, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            self.inner.read_at(key, buf, offset)
        }
        fn read_all(&self, key: &str) -> std::io::Result<Vec<u8>> {
            let seq = key.strip_suffix(".lease").and_then(|k| k.rsplit('/').next()).and_then(|s| s.parse::<u64>().ok());
            let racing = self.races.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok();
            if let (Some(seq), true) = (seq, racing) {
                let bytes = self.inner.read_all(key)?;
                let next = key.replace(&format!("/{seq}.lease"), &format!("/{}.lease", seq + 1));
                put_new(&self.inner, &next, &bytes)?;
                self.inner.delete(key)?;
                return Err(std::io::Error::new(std::io::ErrorKind::NotFound, key.to_string()));
            }
            self.inner.read_all(key)
        }
        fn stat(&self, key: &str) -> std::io::Result<ObjectInfo> {
            self.inner.stat(key)
        }
        fn list(&self, prefix: &str) -> std::io::Result<Vec<ObjectInfo>> {
            self.inner.list(prefix)
        }
        fn now(&self) -> std::io::Result<SystemTime> {
            let now = self.inner.now()?;
            let by = Duration::from_secs(self.skew.unsigned_abs());
            Ok(if self.skew >= 0 { now + by } else { now - by })
        }
    }

    /// Racers that start in the same second of a storage clock that ticks
    /// in whole seconds, on hosts whose clocks disagree by minutes: in
    /// every round exactly one holds maintenance while the others try.
    #[test]
    fn racers_in_the_same_second_never_both_hold_maintenance() {
        let mem = MemoryBackend::with_logical_clock(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000));
        let racers = 4;
        let skews = [-240i64, -1, 0, 170];
        for round in 0..200 {
            let barrier = std::sync::Barrier::new(racers);
            let won = std::sync::atomic::AtomicUsize::new(0);
            std::thread::scope(|scope| {
                for skew in skews.iter().take(racers) {
                    let (mem, barrier, won) = (mem.clone(), &barrier, &won);
                    scope.spawn(move || {
                        let b: Arc<dyn Backend> = Arc::new(View::skewed(mem, *skew));
                        barrier.wait();
                        // Judged as production judges: by the storage's
                        // time learnt from each holder's own lease object.
                        let local = LeaseSettings { clock: LeaseClock::Local, ..settings() };
                        let got = Lease::acquire(b, local, LeaseMode::Maintenance, "vacuum", false);
                        match &got {
                            Ok(_) => {
                                won.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                            Err(StoreError::StoreBusy { .. }) => {}
                            Err(e) => panic!("round {round}: {e}"),
                        }
                        // Everyone has tried before anyone lets go.
                        barrier.wait();
                        drop(got);
                    });
                }
            });
            assert_eq!(won.into_inner(), 1, "round {round}: maintenance is held by exactly one racer");
        }
        // Old claims are cleaned up as new ones are made.
        assert!(list_claims(&mem).unwrap().len() <= 2, "{:?}", list_claims(&mem).unwrap());
    }

    /// A claim whose holder let go, went stale, or died on this machine no
    /// longer holds maintenance; a fresh one does, whatever the clocks say.
    #[test]
    fn ended_claims_free_maintenance_and_live_ones_hold_it() {
        let mem = MemoryBackend::with_logical_clock(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000));
        let ahead: Arc<dyn Backend> = Arc::new(View::skewed(mem.clone(), 50));
        let behind: Arc<dyn Backend> = Arc::new(View::skewed(mem.clone(), -50));
        let m = LeaseMode::Maintenance;
        // Released: the next one wins at once.
        drop(Lease::acquire(ahead.clone(), settings(), m, "prune", false).unwrap());
        let first = Lease::acquire(behind.clone(), settings(), m, "vacuum", false).unwrap();
        // Held and fresh by the storage's clock, though the newcomer's clock
        // is 100 s ahead of the holder's (skew beyond the margin would be
        // judged stale: that is what the margin is for).
        let err = Lease::acquire(ahead.clone(), settings(), m, "merge", false).unwrap_err();
        assert!(matches!(&err, StoreError::StoreBusy { holder, .. } if holder.starts_with("vacuum")), "{err}");
        // Stale: past ttl + margin (120 s) and the skew, nobody refreshed it.
        mem.advance(Duration::from_secs(400));
        let second = Lease::acquire(ahead.clone(), settings(), m, "merge", false).unwrap();
        // The stale holder cannot go on (its own clock says so).
        assert!(matches!(first.check(), Err(StoreError::LeaseLost(_))));
        drop(first);
        let err = Lease::acquire(behind.clone(), settings(), m, "vacuum", false).unwrap_err();
        assert!(matches!(&err, StoreError::StoreBusy { holder, .. } if holder.starts_with("merge")), "{err}");
        drop(second);
        // A claim written by hand that does not parse holds nothing.
        let top = list_claims(&mem).unwrap().last().copied().unwrap();
        put_new(&mem, &claim_key(top + 1), b"not a claim").unwrap();
        drop(Lease::acquire(behind, settings(), m, "vacuum", false).unwrap());
    }

    #[test]
    fn a_lease_refreshed_between_listing_and_reading_is_still_seen() {
        let mem = MemoryBackend::new();
        let holder: Arc<dyn Backend> = Arc::new(mem.clone());
        let vacuum = Lease::acquire(holder.clone(), settings(), LeaseMode::Maintenance, "vacuum", false).unwrap();
        let racing: Arc<dyn Backend> =
            Arc::new(View { inner: mem.clone(), skew: 0, races: std::sync::atomic::AtomicUsize::new(3) });
        let table = LeaseTable::read(&*racing).unwrap();
        assert!(table.leases.iter().any(|l| l.id == vacuum.id()), "a refreshed lease vanished from the table");
        let err = Lease::acquire(racing, settings(), LeaseMode::Maintenance, "prune", false).unwrap_err();
        assert!(matches!(&err, StoreError::StoreBusy { holder, .. } if holder.starts_with("vacuum")), "{err}");
    }

    /// Objects under `locks/` that no vhdkit wrote (or a newer one did)
    /// never stop maintenance, never steer a listing outside the store,
    /// and never panic.
    #[test]
    fn hostile_leases_and_claims_are_harmless() {
        let mem = MemoryBackend::new();
        let b: Arc<dyn Backend> = Arc::new(mem.clone());
        let m = LeaseMode::Maintenance;
        put_new(&mem, &format!("locks/{}/0.lease", "ab".repeat(16)), b"not a lease").unwrap();
        assert!(LeaseTable::read(&mem).unwrap().leases.is_empty());
        for hostile in
            [r#"{"lease":"../../..","op":"x","host":"h","pid":1}"#, r#"{"lease":"","op":"x","host":"h","pid":1}"#]
        {
            let top = list_claims(&mem).unwrap().last().map_or(0, |n| n + 1);
            put_new(&mem, &claim_key(top), hostile.as_bytes()).unwrap();
            drop(Lease::acquire(b.clone(), settings(), m, "vacuum", false).unwrap());
        }
        // Too large to be a claim or a lease: names nobody, and is not read.
        let top = list_claims(&mem).unwrap().last().map_or(0, |n| n + 1);
        put_new(&mem, &claim_key(top), &vec![b' '; 2 << 20]).unwrap();
        put_new(&mem, &format!("locks/{}/0.lease", "cd".repeat(16)), &vec![b' '; 2 << 20]).unwrap();
        assert!(LeaseTable::read(&mem).unwrap().leases.is_empty());
        drop(Lease::acquire(b.clone(), settings(), m, "vacuum", false).unwrap());
        put_new(&mem, &claim_key(u64::MAX), br#"{"lease":"x","op":"x","host":"h","pid":1}"#).unwrap();
        let err = Lease::acquire(b.clone(), settings(), m, "vacuum", false).unwrap_err();
        assert!(matches!(err, StoreError::UnsupportedStore { .. }), "{err}");
    }

    /// A lease nobody refreshed goes stale by the storage's clock; fencing
    /// tombstones what it has not committed yet, and its holder learns
    /// after its upload that the commit does not count.
    #[test]
    fn stale_leases_are_fenced_and_their_late_commits_do_not_count() {
        let mem = MemoryBackend::with_logical_clock(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000));
        let b: Arc<dyn Backend> = Arc::new(mem.clone());
        let mode = LeaseMode::Backup;
        let paused =
            Lease::acquire_committing(b.clone(), settings(), mode, "backup", false, vec!["late".into()]).unwrap();
        let done =
            Lease::acquire_committing(b.clone(), settings(), mode, "backup", false, vec!["done".into()]).unwrap();
        put_new(&*b, "manifests/done.manifest", b"m").unwrap();
        mem.advance(Duration::from_secs(200));
        let observer = Lease::acquire(b.clone(), settings(), LeaseMode::Maintenance, "vacuum", false).unwrap();
        let now = observer.server_now();
        let table = LeaseTable::read(&*b).unwrap();
        for l in &table.leases {
            if l.id == paused.id() || l.id == done.id() {
                assert!(!l.fresh(now, &settings()));
                fence(&*b, l).unwrap();
            }
        }
        assert!(crate::store::backend::exists(&*b, "dropped/late").unwrap());
        assert!(!crate::store::backend::exists(&*b, "dropped/done").unwrap(), "a committed id is not tombstoned");
        put_new(&*b, "manifests/late.manifest", b"m").unwrap();
        assert!(matches!(paused.confirm_commit("late"), Err(StoreError::LeaseLost(_))));
        assert!(done.confirm_commit("done").is_ok());
    }
}
