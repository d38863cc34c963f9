//! The safety property of shared storage, under a deterministic scheduler:
//! no interleaving of backups, merges, prunes and vacuums from several
//! processes, some of them paused past their leases, ever leaves a
//! committed backup naming a chunk that is not stored, or restoring to
//! anything but what its backup captured.
//!
//! Each simulated process is a thread running store operations through its
//! own `Store` over one in-memory store whose clock is logical. Every
//! storage call is a scheduling point: a process waits there until every
//! running process waits, and then a seeded generator picks which one goes
//! on. The pipelines run on one thread (`threads = 1`) and leases are
//! refreshed at their holders' checks on the storage's clock, so a seed
//! fixes the whole run. The generator also pauses processes: a paused
//! process is not picked while the clock runs past its lease, so others
//! treat it as stale and fence it, and then it resumes where it stopped.
//!
//! The storage clock ticks in whole seconds, as S3's `Last-Modified` does,
//! and each process sees it through its own skew (up to a minute either
//! way, within the leases' margin), so no decision may rest on two
//! processes' clocks agreeing or on which of two objects made in the same
//! second came first.
//!
//! `VHDKIT_SCHEDULES` sets how many seeds run (default 10,000);
//! `VHDKIT_SCHEDULE_SEED` runs one. A failure prints its seed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vhdkit::VirtualDisk;
use vhdkit::disk::OpenOptions;
use vhdkit::store::{
    Backend, BackupId, BackupOptions, InitOptions, LeaseSettings, MemoryBackend, MergeOptions, ObjectInfo,
    ObjectWriter, PruneOptions, Retention, Store, VacuumOptions,
};

const CHUNK: usize = 64 << 10;
const SLOTS: usize = 6;
/// Each scheduling point is a second of storage time: an operation's
/// storage calls (and the other processes' between them) take minutes.
const TTL: Duration = Duration::from_secs(600);
const MARGIN: Duration = Duration::from_secs(300);

/// A small generator (xorshift), the only source of choices.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Default)]
struct State {
    /// Processes not yet finished.
    live: BTreeSet<usize>,
    /// Processes waiting at a storage call.
    waiting: BTreeSet<usize>,
    /// Who may make its call now.
    turn: Option<usize>,
    /// Paused processes and the picks left until they resume.
    paused: BTreeMap<usize, u32>,
    rng: Option<Rng>,
    steps: u64,
}

/// The scheduler: one process runs at a time, from one storage call to the next.
struct Sched {
    state: Mutex<State>,
    cv: Condvar,
    clock: MemoryBackend,
}

impl Sched {
    /// Called at every storage call of process `me`: wait for a turn.
    fn gate(&self, me: usize) {
        let mut st = self.state.lock().unwrap();
        st.waiting.insert(me);
        if st.turn == Some(me) {
            st.turn = None;
        }
        self.pick(&mut st);
        while st.turn != Some(me) {
            st = self.cv.wait(st).unwrap();
        }
        st.waiting.remove(&me);
    }

    /// Process `me` finished.
    fn done(&self, me: usize) {
        let mut st = self.state.lock().unwrap();
        st.live.remove(&me);
        st.waiting.remove(&me);
        st.paused.remove(&me);
        if st.turn == Some(me) {
            st.turn = None;
        }
        self.pick(&mut st);
    }

    /// Once every live process waits, picks the next one to go.
    fn pick(&self, st: &mut State) {
        if st.turn.is_some() || st.waiting.len() != st.live.len() || st.live.is_empty() {
            return;
        }
        st.steps += 1;
        let rng = st.rng.as_mut().expect("seeded");
        // Each step is a second of storage time.
        self.clock.advance(Duration::from_secs(1));
        // Now and then, pause a process past its lease (while others run).
        if st.live.len() > 1 && rng.below(60) == 0 {
            let victims: Vec<usize> = st.live.iter().copied().filter(|p| !st.paused.contains_key(p)).collect();
            if let Some(&v) = victims.get(rng.below(victims.len() as u64) as usize)
                && victims.len() > 1
            {
                st.paused.insert(v, 100 + rng.below(200) as u32);
            }
        }
        let runnable: Vec<usize> = st.live.iter().copied().filter(|p| !st.paused.contains_key(p)).collect();
        let pick = if runnable.is_empty() {
            // Everyone left is paused: the longest pause ends now.
            let first = *st.paused.keys().next().expect("a paused process");
            st.paused.remove(&first);
            first
        } else {
            runnable[rng.below(runnable.len() as u64) as usize]
        };
        // Paused processes sleep through the others' steps; time runs on,
        // far past their leases.
        let mut resume = Vec::new();
        for (p, left) in st.paused.iter_mut() {
            self.clock.advance(Duration::from_secs(10));
            *left = left.saturating_sub(1);
            if *left == 0 {
                resume.push(*p);
            }
        }
        for p in resume {
            st.paused.remove(&p);
        }
        st.turn = Some(pick);
        self.cv.notify_all();
    }
}

/// A process's view of the shared store: every call waits for its turn.
#[derive(Debug)]
struct Gated {
    inner: MemoryBackend,
    sched: Arc<SchedHandle>,
    me: usize,
    /// This process's clock error, in seconds.
    skew: i64,
}

struct SchedHandle(Sched);

impl std::fmt::Debug for SchedHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sched")
    }
}

struct GatedWriter {
    inner: Box<dyn ObjectWriter>,
    sched: Arc<SchedHandle>,
    me: usize,
}

impl ObjectWriter for GatedWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write(bytes)
    }
    fn position(&self) -> u64 {
        self.inner.position()
    }
    fn commit(self: Box<Self>) -> io::Result<()> {
        self.sched.0.gate(self.me);
        self.inner.commit()
    }
}

impl Backend for Gated {
    fn describe(&self, key: &str) -> PathBuf {
        self.inner.describe(key)
    }
    fn read_at(&self, key: &str, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.sched.0.gate(self.me);
        self.inner.read_at(key, buf, offset)
    }
    fn read_all(&self, key: &str) -> io::Result<Vec<u8>> {
        self.sched.0.gate(self.me);
        self.inner.read_all(key)
    }
    fn stat(&self, key: &str) -> io::Result<ObjectInfo> {
        self.sched.0.gate(self.me);
        self.inner.stat(key)
    }
    fn list(&self, prefix: &str) -> io::Result<Vec<ObjectInfo>> {
        self.sched.0.gate(self.me);
        self.inner.list(prefix)
    }
    fn create(&self, key: &str) -> io::Result<Box<dyn ObjectWriter>> {
        let inner = self.inner.create(key)?;
        Ok(Box::new(GatedWriter { inner, sched: self.sched.clone(), me: self.me }))
    }
    fn delete(&self, key: &str) -> io::Result<()> {
        self.sched.0.gate(self.me);
        self.inner.delete(key)
    }
    fn now(&self) -> io::Result<SystemTime> {
        let now = self.inner.now()?;
        let by = Duration::from_secs(self.skew.unsigned_abs());
        Ok(if self.skew >= 0 { now + by } else { now - by })
    }
}

/// A disk's writes so far: (slot, fill byte).
type Writes = Vec<(usize, u8)>;

/// What one operation is.
#[derive(Debug, Clone)]
enum Op {
    /// Back up disk `disk` after writing `fill` over slot `slot`.
    Backup {
        disk: usize,
        slot: usize,
        fill: u8,
    },
    Merge,
    Prune {
        keep: usize,
    },
    Vacuum {
        grace: u64,
    },
}

fn disk_bytes(versions: &[(usize, u8)], disk: usize) -> Vec<u8> {
    let mut d = vec![0u8; SLOTS * CHUNK];
    for (i, slot) in d.chunks_mut(CHUNK).enumerate() {
        slot.fill((disk * 16 + i) as u8 + 1);
    }
    for &(slot, fill) in versions {
        d[slot * CHUNK..(slot + 1) * CHUNK].fill(fill);
    }
    d
}

/// What happened across seeds: the schedules must reach the interesting
/// cases, or passing would mean little.
#[derive(Debug, Default, Clone, Copy)]
struct Events {
    steps: u64,
    committed: u64,
    lease_lost: u64,
    fenced: u64,
    packs_deleted: u64,
    packs_rescued: u64,
    pending: u64,
}

/// One seed: a few processes, a few operations each, on one store.
fn run(seed: u64) -> Result<Events, String> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mem = MemoryBackend::with_logical_clock(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    // One seed in four runs on an encrypted store: sealing changes no
    // storage operation's order, and must lose nothing either.
    let encrypted = seed % 4 == 3;
    let open = common::tweak(vhdkit::store::OpenOptions::default(), |o| o.key = encrypted.then(common::test_key));
    {
        let mut o = InitOptions::default();
        o.chunk_size = CHUNK as u32;
        o.pack_size = 2 * CHUNK as u64;
        let o = if encrypted { common::encrypted(o) } else { o };
        Store::init_backend(Arc::new(mem.clone()), &o).map_err(|e| e.to_string())?;
    }
    let procs = 2 + rng.below(2) as usize;
    let mut scripts: Vec<Vec<Op>> = Vec::new();
    for _ in 0..procs {
        let mut ops = Vec::new();
        for _ in 0..1 + rng.below(3) {
            ops.push(match rng.below(10) {
                0..=3 => Op::Backup {
                    disk: rng.below(2) as usize,
                    slot: rng.below(SLOTS as u64) as usize,
                    fill: rng.below(3) as u8 + 100,
                },
                4 => Op::Merge,
                5 | 6 => Op::Prune { keep: 1 + rng.below(2) as usize },
                _ => Op::Vacuum { grace: [0, 0, 5][rng.below(3) as usize] },
            });
        }
        scripts.push(ops);
    }
    let sched =
        Arc::new(SchedHandle(Sched { state: Mutex::new(State::default()), cv: Condvar::new(), clock: mem.clone() }));
    {
        let mut st = sched.0.state.lock().unwrap();
        st.live = (0..procs).collect();
        st.rng = Some(rng.clone());
    }
    // What each committed backup must restore to, as its process saw it.
    let captured: Arc<Mutex<BTreeMap<BackupId, Vec<u8>>>> = Arc::default();
    let events: Arc<Mutex<Events>> = Arc::default();
    // Each disk's writes so far (processes share the disks, as several
    // hosts backing up the same VM's disk would not; the bytes a backup
    // captured are what it read).
    let writes: Arc<Mutex<[Writes; 2]>> = Arc::default();
    std::thread::scope(|scope| {
        for (me, ops) in scripts.iter().enumerate() {
            let (sched, mem, captured, writes) = (sched.clone(), mem.clone(), captured.clone(), writes.clone());
            let open = open.clone();
            let events = events.clone();
            scope.spawn(move || {
                // Ids from the seed too: listings (sorted by key) then come
                // in the same order every run.
                vhdkit::format::guid_testing::seed_thread(seed.wrapping_mul(31).wrapping_add(me as u64 + 1));
                let clock = mem.clone();
                // Skews from the seed: -60..=60 s, within the margin.
                let skew = (seed.wrapping_mul(0x2545_F491).wrapping_add(me as u64 * 7919) % 121) as i64 - 60;
                let backend = Arc::new(Gated { inner: mem, sched: sched.clone(), me, skew });
                if let Ok(mut store) = Store::open_backend_with(backend, &open) {
                    store.set_lease_settings(LeaseSettings::simulated(TTL, MARGIN));
                    for op in ops {
                        match op {
                            Op::Backup { disk, slot, fill } => {
                                let bytes = {
                                    let mut w = writes.lock().unwrap();
                                    w[*disk].push((*slot, *fill));
                                    disk_bytes(&w[*disk], *disk)
                                };
                                let source =
                                    OpenOptions::new().open_raw_reader(Box::new(bytes.clone()), &format!("disk{disk}"));
                                let mut o = BackupOptions::new(format!("disk{disk}"));
                                o.created = clock.now().ok().map(vhdkit::store::Moment::from);
                                o.threads = 1;
                                o.max_chain = 3;
                                match store.backup(&source, &o) {
                                    Ok(r) => {
                                        captured.lock().unwrap().insert(r.id, bytes);
                                        events.lock().unwrap().committed += 1;
                                    }
                                    Err(vhdkit::store::StoreError::LeaseLost(_)) => {
                                        events.lock().unwrap().lease_lost += 1
                                    }
                                    Err(_) => {}
                                }
                            }
                            Op::Merge => {
                                let newest = store.list().ok().and_then(|l| l.last().map(|b| b.id.clone()));
                                if let Some(id) = newest {
                                    let _ = store.merge(&id, &MergeOptions::default());
                                }
                            }
                            Op::Prune { keep } => {
                                for name in ["disk0", "disk1"] {
                                    let _ = store.prune(name, &PruneOptions::new(Retention::keep_last(*keep)));
                                }
                            }
                            Op::Vacuum { grace } => {
                                let mut o = VacuumOptions::immediate();
                                o.grace = Duration::from_secs(*grace);
                                if let Ok(v) = store.vacuum(&o) {
                                    let mut e = events.lock().unwrap();
                                    e.fenced += v.leases_fenced;
                                    e.packs_deleted += v.packs_deleted;
                                    e.packs_rescued += v.packs_rescued;
                                    e.pending += v.records_pending;
                                }
                            }
                        }
                    }
                }
                sched.0.done(me);
            });
        }
    });
    let mut events = *events.lock().unwrap();
    events.steps = sched.0.state.lock().unwrap().steps;

    // The property, read without the scheduler. A committed backup must be
    // one that reported success, and restore to what it captured; every
    // chunk it names must be stored and sound.
    let store = Store::open_backend_with(Arc::new(mem.clone()), &open).map_err(|e| e.to_string())?;
    let captured = captured.lock().unwrap();
    let listed = store.list().map_err(|e| format!("listing: {e}"))?;
    for b in &listed {
        let want = captured.get(&b.id).ok_or_else(|| format!("backup {} is committed but its backup failed", b.id))?;
        let reader = store.reader(&b.id).map_err(|e| format!("opening {}: {e}", b.id))?;
        let mut got = vec![0u8; want.len()];
        reader.read_at(&mut got, 0).map_err(|e| format!("reading {}: {e}", b.id))?;
        if got != *want {
            return Err(format!("backup {} restores other bytes than it captured", b.id));
        }
    }
    // And a store that is left alone afterwards cleans up fully.
    let report = store.verify(&Default::default()).map_err(|e| e.to_string())?;
    if !report.ok {
        return Err(format!("verify: {report:?}"));
    }
    Ok(events)
}

#[test]
fn no_interleaving_loses_a_committed_chunk() {
    let seeds: Vec<u64> = match std::env::var("VHDKIT_SCHEDULE_SEED") {
        Ok(s) => vec![s.parse().expect("a seed")],
        Err(_) => {
            let n: u64 = std::env::var("VHDKIT_SCHEDULES").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
            (1..=n).collect()
        }
    };
    let mut all = Events::default();
    // Commits on the encrypted seeds alone: that they run is not enough.
    let mut encrypted_commits = 0;
    for &seed in &seeds {
        match std::panic::catch_unwind(|| run(seed)) {
            Ok(Ok(e)) => {
                if seed % 4 == 3 {
                    encrypted_commits += e.committed;
                }
                all.steps += e.steps;
                all.committed += e.committed;
                all.lease_lost += e.lease_lost;
                all.fenced += e.fenced;
                all.packs_deleted += e.packs_deleted;
                all.packs_rescued += e.packs_rescued;
                all.pending += e.pending;
            }
            Ok(Err(e)) => panic!("seed {seed} (rerun with VHDKIT_SCHEDULE_SEED={seed}): {e}"),
            Err(_) => panic!("seed {seed} panicked (rerun with VHDKIT_SCHEDULE_SEED={seed})"),
        }
    }
    eprintln!("{} schedules: {all:?}", seeds.len());
    if seeds.len() >= 1000 {
        // The schedules reach every case the argument has.
        assert!(all.committed > 0 && all.packs_deleted > 0 && all.pending > 0, "{all:?}");
        assert!(encrypted_commits > 0, "no encrypted schedule committed a backup");
        assert!(all.fenced > 0 && all.lease_lost > 0, "no process was paused past its lease and fenced: {all:?}");
        assert!(all.packs_rescued > 0, "no condemned pack was ever needed again: {all:?}");
    }
}

/// The same seed gives the same schedule.
#[test]
fn a_seed_fixes_the_schedule() {
    let a = run(7).unwrap();
    let b = run(7).unwrap();
    assert_eq!((a.steps, a.committed, a.packs_deleted), (b.steps, b.committed, b.packs_deleted));
}
