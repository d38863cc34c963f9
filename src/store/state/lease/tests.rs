//! The lease protocol's tests: exclusion, staleness, fencing, claims
//! under skewed clocks and lost races.

use std::sync::atomic::Ordering::SeqCst;

use super::*;
use crate::store::backend::{MemoryBackend, ObjectInfo, put_new};
use crate::store::model::layout::claim_key;
use crate::store::state::lease::claim::list_claims;
use crate::store::state::tombstone::fence;

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
