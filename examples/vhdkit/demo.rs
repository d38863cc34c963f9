//! `vhdkit demo [DIR]`: the whole story on a disk the demo makes itself.

use std::path::{Path, PathBuf};
use std::time::Instant;

use vhdkit::disk::{ExtentState, OpenOptions};
use vhdkit::export::{ExportOptions, Target, export};
use vhdkit::{Disk, VirtualDisk};

use super::Failure;

const MIB: u64 = 1 << 20;

/// A deterministic "file system": text-like blocks, binary blocks, and gaps
/// of zeros, like a freshly installed guest.
fn make_disk(size: u64) -> Vec<u8> {
    let mut d = vec![0u8; size as usize];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let words = [&b"vhdkit "[..], b"backup ", b"block ", b"sector ", b"chunk ", b"merge ", b"vacuum "];
    let mut at = 0usize;
    while at < d.len() {
        let len = ((next() % 512 + 16) as usize * 4096).min(d.len() - at);
        match next() % 4 {
            0 => {} // a gap: never written
            1 => {
                let mut i = at;
                while i < at + len {
                    let w = words[(next() % words.len() as u64) as usize];
                    let n = w.len().min(at + len - i);
                    d[i..i + n].copy_from_slice(&w[..n]);
                    i += n;
                }
            }
            _ => d[at..at + len].iter_mut().for_each(|b| *b = next() as u8),
        }
        at += len;
    }
    d
}

fn step(n: &mut u32, what: &str) -> Result<(), Failure> {
    *n += 1;
    out!("\n[{n}] {what}");
    Ok(())
}

fn same(a: &dyn VirtualDisk, b: &dyn VirtualDisk) -> Result<bool, Failure> {
    if a.size() != b.size() {
        return Ok(false);
    }
    let mut x = vec![0u8; 4 * MIB as usize];
    let mut y = vec![0u8; 4 * MIB as usize];
    let mut off = 0;
    while off < a.size() {
        let n = (a.size() - off).min(x.len() as u64) as usize;
        a.read_at(&mut x[..n], off)?;
        b.read_at(&mut y[..n], off)?;
        if x[..n] != y[..n] {
            return Ok(false);
        }
        off += n as u64;
    }
    Ok(true)
}

fn summary(disk: &Disk) -> Result<String, Failure> {
    let (mut own, mut parent, mut empty) = (0u64, 0u64, 0u64);
    for e in disk.extents(0..disk.size())? {
        match (e.state, e.depth) {
            (ExtentState::Data | ExtentState::Zero, 0) => own += e.length,
            (ExtentState::Data | ExtentState::Parent, _) => parent += e.length,
            _ => empty += e.length,
        }
    }
    Ok(format!("{} MiB held here, {} MiB from parents, {} MiB empty", own / MIB, parent / MIB, empty / MIB))
}

fn check(ok: bool, what: &str) -> Result<(), Failure> {
    if ok {
        out!("    ok: {what}");
        Ok(())
    } else {
        Err(Failure { code: 1, message: format!("demo check failed: {what}") })
    }
}

pub(crate) fn run(dir: Option<PathBuf>) -> Result<u8, Failure> {
    let started = Instant::now();
    let (dir, keep) = match dir {
        Some(d) => (d, true),
        None => (std::env::temp_dir().join(format!("vhdkit-demo-{}", std::process::id())), false),
    };
    std::fs::create_dir_all(&dir).map_err(|e| Failure { code: 1, message: format!("{}: {e}", dir.display()) })?;
    let result = story(&dir);
    if !keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result?;
    out!(
        "\ndemo finished in {:.1} s{}",
        started.elapsed().as_secs_f64(),
        if keep { format!("; files in {}", dir.display()) } else { String::new() }
    );
    Ok(0)
}

/// A report as the command's `--json` prints it (the same object, on one line).
fn report(label: &str, value: &impl serde::Serialize) -> Result<(), Failure> {
    out!("    {label}: {}", serde_json::to_string(value).unwrap_or_default());
    Ok(())
}

fn story(dir: &Path) -> Result<(), Failure> {
    use vhdkit::store::{
        BackupOptions, InitOptions, MergeOptions, PruneOptions, RestoreOptions, Retention, Store, VacuumOptions,
        VerifyOptions,
    };
    let mut n = 0;
    let options = OpenOptions::new();
    step(&mut n, "make a 256 MiB disk and write it as a dynamic VHDX with vhdkit's own writer")?;
    let v1 = make_disk(256 * MIB);
    let source = options.open_raw_reader(Box::new(v1.clone()), "day1");
    let base = dir.join("disk.vhdx");
    let mut two_mib = ExportOptions::default();
    two_mib.block_size = Some(2 << 20);
    let r = export(&source, &base, Target::Vhdx, &two_mib)?;
    out!(
        "    wrote {} ({} MiB of data in a {} MiB file, {:.2} s)",
        base.display(),
        r.bytes_written / MIB,
        r.file_size / MIB,
        r.seconds
    );
    let disk = vhdkit::open(&base)?;
    out!("    {}", summary(&disk)?);
    check(same(&disk, &source)?, "the VHDX reads back as the disk")?;

    step(&mut n, "create a chunk store and take a full backup")?;
    let store_dir = dir.join("store");
    let store = Store::init(&store_dir, &InitOptions::default())?;
    let full = store.backup(&disk, &BackupOptions::new("disk"))?;
    report("backup", &full)?;
    drop(disk);

    step(&mut n, "change 1 % of the disk as a checkpoint: a differencing child of the image just backed up")?;
    let mut v2 = v1.clone();
    for i in 0..32u64 {
        let at = (i * 7_919_993 % (255 * MIB)) as usize / 4096 * 4096;
        v2[at..at + 64 * 1024].fill(i as u8 + 1);
    }
    let day2 = options.open_raw_reader(Box::new(v2.clone()), "day2");
    let child = dir.join("disk-day2.avhdx");
    let mut as_child = ExportOptions::default();
    as_child.parent = Some(base.clone());
    let r = export(&day2, &child, Target::Vhdx, &as_child)?;
    out!("    wrote {} holding {} KiB of changes", child.display(), r.bytes_written / 1024);
    let chain = vhdkit::open(&child)?;
    out!("    chain of {} images; {}", chain.depth(), summary(&chain)?);
    check(same(&chain, &day2)?, "the chain reads as the changed disk")?;

    step(&mut n, "incremental backup of the checkpoint: only the child's own allocation is read")?;
    let inc = store.backup(&chain, &BackupOptions::new("disk"))?;
    report("backup", &inc)?;
    check(inc.bytes_read <= full.bytes_read / 10, "the incremental read a fraction of what the full read")?;

    step(&mut n, "synthetic merge: the incremental becomes a full backup, without reading chunk data")?;
    let merged = store.merge(inc.id.as_str(), &MergeOptions::default())?;
    report("merge", &merged)?;

    step(&mut n, "prune to the newest backup, then vacuum what nothing references")?;
    let pruned = store.prune("disk", &PruneOptions::new(Retention::keep_last(1)))?;
    report("prune", &pruned)?;
    let vacuumed = store.vacuum(&VacuumOptions::immediate())?;
    report("vacuum", &vacuumed)?;

    step(&mut n, "verify every pack, chunk and manifest")?;
    let verified = store.verify(&VerifyOptions::default())?;
    report("verify", &verified)?;
    check(verified.ok, "the store verifies clean")?;

    step(&mut n, "restore the backup to raw and to VHDX, and compare with the disk it captured")?;
    let raw = dir.join("restored.raw");
    let rr = store.restore(inc.id.as_str(), &raw, Target::Raw, &RestoreOptions::default())?;
    report("restore", &rr)?;
    check(same(&options.open_raw(&raw)?, &day2)?, "the raw restore equals the changed disk")?;
    let vhdx = dir.join("restored.vhdx");
    store.restore(inc.id.as_str(), &vhdx, Target::Vhdx, &RestoreOptions::default())?;
    check(same(&vhdkit::open(&vhdx)?, &day2)?, "the VHDX restore equals the changed disk")?;
    check(vhdkit::open(&vhdx)?.check().is_empty(), "the restored VHDX is structurally clean")?;

    step(&mut n, "what the store holds")?;
    report("stats", &store.stats()?)?;
    Ok(())
}
