//! A model-based property test of the store: random sequences of backups
//! (full, changed ranges, hash comparison, checkpoint children), merges,
//! prunes and vacuums, checked after every step against an in-memory model
//! of which backups exist and what each captured.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::tweak;
use proptest::prelude::*;
use vhdkit::VirtualDisk;
use vhdkit::disk::OpenOptions;
use vhdkit::export::{ExportOptions, Target, export};
use vhdkit::format::Guid;
use vhdkit::store::{BackupId, BackupOptions, ChangeSource, PruneOptions, Retention, Store, VacuumOptions};

const SIZE: usize = 2 << 20;
const NAMES: [&str; 2] = ["alpha", "beta"];

#[derive(Debug, Clone)]
enum Op {
    /// Change the disk, write it as a new standalone image, back it up
    /// (full when asked, else an incremental by hash comparison).
    Backup {
        disk: usize,
        change: Change,
        full: bool,
    },
    /// Change the disk, write it as a new standalone image with the same
    /// disk id, and back it up with the changed ranges.
    Ranges {
        disk: usize,
        change: Change,
    },
    /// Change the disk as a checkpoint: a differencing child of its current image.
    Checkpoint {
        disk: usize,
        change: Change,
    },
    Merge {
        pick: usize,
    },
    Prune {
        disk: usize,
        keep: usize,
    },
    Vacuum,
}

#[derive(Debug, Clone)]
struct Change {
    at: usize,
    len: usize,
    fill: u8,
}

fn change() -> impl Strategy<Value = Change> {
    (0..SIZE, 1usize..200_000, any::<u8>()).prop_map(|(at, len, fill)| Change { at, len: len.min(SIZE - at), fill })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..2usize, change(), any::<bool>()).prop_map(|(disk, change, full)| Op::Backup { disk, change, full }),
        2 => (0..2usize, change()).prop_map(|(disk, change)| Op::Ranges { disk, change }),
        3 => (0..2usize, change()).prop_map(|(disk, change)| Op::Checkpoint { disk, change }),
        1 => any::<usize>().prop_map(|pick| Op::Merge { pick }),
        1 => (0..2usize, 1usize..4).prop_map(|(disk, keep)| Op::Prune { disk, keep }),
        1 => Just(Op::Vacuum),
    ]
}

/// One disk's live state: its bytes, and the image file that holds them.
struct Source {
    bytes: Vec<u8>,
    image: PathBuf,
    disk_id: Guid,
    version: usize,
}

struct World {
    dir: PathBuf,
    store: Store,
    sources: Vec<Source>,
    /// What the model says the store holds: backup id → (name, bytes).
    backups: BTreeMap<BackupId, (String, Vec<u8>)>,
    /// Whether the newest backup of each disk captured its current image.
    captured_current: Vec<bool>,
}

impl World {
    fn new(dir: &Path) -> World {
        let store = common::init_store(&dir.join("store"), &common::init_options(64 * 1024, 512 * 1024));
        let mut sources = Vec::new();
        for (i, name) in NAMES.iter().enumerate() {
            let mut bytes = vec![0u8; SIZE];
            bytes[i * 1000..i * 1000 + 300_000].iter_mut().enumerate().for_each(|(j, b)| *b = (j % 251) as u8 + 1);
            let disk_id = Guid::new_random();
            let image = dir.join(format!("{name}-0.vhdx"));
            write_image(&bytes, &image, disk_id, None);
            sources.push(Source { bytes, image, disk_id, version: 0 });
        }
        World { dir: dir.to_path_buf(), store, sources, backups: BTreeMap::new(), captured_current: vec![false; 2] }
    }

    fn apply_change(&mut self, disk: usize, c: &Change) -> std::ops::Range<u64> {
        let s = &mut self.sources[disk];
        s.bytes[c.at..c.at + c.len].fill(c.fill);
        s.version += 1;
        c.at as u64..(c.at + c.len) as u64
    }

    fn new_standalone(&mut self, disk: usize) {
        let s = &mut self.sources[disk];
        let image = self.dir.join(format!("{}-{}.vhdx", NAMES[disk], s.version));
        write_image(&s.bytes, &image, s.disk_id, None);
        s.image = image;
    }

    fn backup(&mut self, disk: usize, options: BackupOptions) -> vhdkit::store::BackupReport {
        let d = vhdkit::open(&self.sources[disk].image).unwrap();
        let r = self.store.backup(&d, &options).unwrap();
        self.backups.insert(r.id.clone(), (NAMES[disk].to_string(), self.sources[disk].bytes.clone()));
        self.captured_current[disk] = true;
        r
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Backup { disk, change, full } => {
                self.apply_change(*disk, change);
                self.new_standalone(*disk);
                let r = self.backup(*disk, tweak(BackupOptions::new(NAMES[*disk]), |o| o.full = *full));
                prop_assert!(*full || r.change_source != ChangeSource::Differencing);
            }
            Op::Ranges { disk, change } => {
                let range = self.apply_change(*disk, change);
                self.new_standalone(*disk);
                let had_previous = self.backups.values().any(|(n, _)| n == NAMES[*disk]);
                let options = tweak(BackupOptions::new(NAMES[*disk]), |o| {
                    o.changes = Some(vec![range].into());
                    o.force = !had_previous;
                });
                // Ranges are only right when the previous backup captured the
                // disk just before this change.
                if self.captured_current[*disk] || !had_previous {
                    let r = self.backup(*disk, options);
                    prop_assert!(!had_previous || r.change_source == ChangeSource::Ranges);
                } else {
                    self.backup(*disk, BackupOptions::new(NAMES[*disk]));
                }
            }
            Op::Checkpoint { disk, change } => {
                let parent = self.sources[*disk].image.clone();
                let captured = self.captured_current[*disk];
                self.apply_change(*disk, change);
                let s = &mut self.sources[*disk];
                let image = self.dir.join(format!("{}-{}.avhdx", NAMES[*disk], s.version));
                write_image(&s.bytes, &image, s.disk_id, Some(&parent));
                s.image = image;
                let options = tweak(BackupOptions::new(NAMES[*disk]), |o| o.force = true);
                let r = self.backup(*disk, options);
                if captured {
                    prop_assert_eq!(r.change_source, ChangeSource::Differencing);
                }
            }
            Op::Merge { pick } => {
                if !self.backups.is_empty() {
                    let id = self.backups.keys().nth(pick % self.backups.len()).unwrap().clone();
                    self.store.merge(&id, &vhdkit::store::MergeOptions::default()).unwrap();
                }
            }
            Op::Prune { disk, keep } => {
                let name = NAMES[*disk];
                let mine: Vec<BackupId> =
                    self.backups.iter().filter(|(_, (n, _))| n == name).map(|(id, _)| id.clone()).collect();
                if !mine.is_empty() {
                    let report = self.store.prune(name, &PruneOptions::new(Retention::keep_last(*keep))).unwrap();
                    let expect_dropped = mine.len().saturating_sub(*keep);
                    prop_assert_eq!(report.dropped.len(), expect_dropped);
                    for id in &report.dropped {
                        self.backups.remove(id);
                    }
                }
            }
            Op::Vacuum => {
                self.store.vacuum(&VacuumOptions::immediate()).unwrap();
            }
        }
        Ok(())
    }

    /// The store holds exactly the model's backups, each restoring exactly.
    fn check(&self) -> Result<(), TestCaseError> {
        let listed: Vec<BackupId> = self.store.list().unwrap().into_iter().map(|b| b.id).collect();
        prop_assert_eq!(listed, self.backups.keys().cloned().collect::<Vec<_>>());
        for (id, (_, bytes)) in &self.backups {
            let r = self.store.reader(id).unwrap();
            let mut got = vec![0u8; SIZE];
            r.read_at(&mut got, 0).unwrap();
            prop_assert!(got == *bytes, "backup {} restores different bytes", id);
        }
        Ok(())
    }
}

fn write_image(bytes: &[u8], path: &Path, disk_id: Guid, parent: Option<&Path>) {
    let disk = OpenOptions::new().open_raw_reader(Box::new(bytes.to_vec()), "model");
    let options = tweak(ExportOptions::default(), |o| {
        o.block_size = Some(1 << 20);
        o.parent = parent.map(Path::to_path_buf);
        o.disk_id = Some(disk_id);
        o.sync = false;
    });
    export(&disk, path, Target::Vhdx, &options).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn every_kept_backup_restores_to_the_disk_it_captured(ops in prop::collection::vec(op(), 1..24)) {
        let dir = common::scratch(&format!("store-model-{}", std::process::id()));
        let mut world = World::new(&dir);
        for op in &ops {
            world.step(op)?;
            world.check()?;
        }
        prop_assert!(world.store.verify(&vhdkit::store::VerifyOptions::default()).unwrap().ok);
    }
}
