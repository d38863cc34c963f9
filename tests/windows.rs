//! What differs on Windows, tested wherever the suite runs (and, in CI, as
//! Windows programs under Wine, scripts/wine-test.sh): an image another
//! process holds open for writing, a chain in a folder deeper than
//! Windows' old 260-character limit, and a lease whose holder on this
//! machine was killed. Helpers run in a second process: this test binary
//! started again for one `helper_*` test, with `VHDKIT_HELPER` set.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use vhdkit::disk::OpenOptions;
use vhdkit::export::{ExportOptions, Target, export};
use vhdkit::store::{BackupOptions, Store};
use vhdkit::{ErrorKind, VirtualDisk};

const MIB: usize = 1 << 20;

/// Starts this binary's `helper` test in a new process with `args`, and
/// waits for it to print `READY`.
fn helper(name: &str, args: &[&str]) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads", "1"])
        .env("VHDKIT_HELPER", args.join("\u{1f}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "{name} ended before it was ready");
        // libtest may print "test NAME ... " on the same line first.
        if line.trim_end().ends_with("READY") {
            break;
        }
    }
    // Keep reading so the helper never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    child
}

/// The arguments a helper was started with; None in the ordinary test run.
fn helper_args() -> Option<Vec<String>> {
    std::env::var("VHDKIT_HELPER").ok().map(|a| a.split('\u{1f}').map(String::from).collect())
}

/// Says READY, then waits until its parent kills it (at most a minute).
fn ready_and_wait() {
    println!("READY");
    std::thread::sleep(std::time::Duration::from_secs(60));
}

/// A 16 MiB VHDX of noise with a hole, written by vhdkit (no qemu needed
/// where these run); its bytes.
fn make_vhdx(path: &Path, parent: Option<&Path>, seed: u64) -> Vec<u8> {
    let mut bytes = common::noise(seed, 16 * MIB);
    bytes[4 * MIB..9 * MIB].fill(0);
    let disk = OpenOptions::new().open_raw_reader(Box::new(Arc::new(bytes.clone())), "mem");
    let mut options = ExportOptions::default();
    options.parent = parent.map(Path::to_path_buf);
    options.block_size = Some(1 << 20);
    export(&disk, path, Target::Vhdx, &options).unwrap();
    bytes
}

fn read_all(disk: &dyn VirtualDisk) -> Vec<u8> {
    let mut out = vec![0u8; disk.size() as usize];
    disk.read_at(&mut out, 0).unwrap();
    out
}

#[test]
fn helper_hold_open_for_writing() {
    let Some(args) = helper_args() else { return };
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true);
    #[cfg(windows)]
    {
        use std::os::windows::fs::OpenOptionsExt;
        // As Hyper-V holds a running VM's disk: others may read ("read"),
        // or nobody may open it at all ("none").
        options.share_mode(if args[1] == "read" { 1 | 2 } else { 0 });
    }
    let _held = options.open(&args[0]).unwrap();
    ready_and_wait();
}

#[test]
fn an_image_another_process_holds_open_for_writing_is_read() {
    if helper_args().is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("running.vhdx");
    let bytes = make_vhdx(&path, None, 1);
    let mut holder = helper("helper_hold_open_for_writing", &[path.to_str().unwrap(), "read"]);
    let read = vhdkit::open(&path).map(|d| read_all(&d));
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(read.unwrap() == bytes, "the held image read other bytes");

    // A holder that shares nothing: the open fails, naming why, on Windows;
    // Unix has no mandatory sharing, and reads as before.
    let mut holder = helper("helper_hold_open_for_writing", &[path.to_str().unwrap(), "none"]);
    let opened = vhdkit::open(&path);
    holder.kill().unwrap();
    holder.wait().unwrap();
    if cfg!(windows) {
        let e = opened.expect_err("an image nobody may share was opened");
        assert_eq!(e.kind(), ErrorKind::Io, "{e}");
        assert!(e.to_string().contains("os error 32"), "no sharing violation named: {e}");
    } else {
        assert!(read_all(&opened.unwrap()) == bytes);
    }
}

#[test]
fn a_chain_deeper_than_260_characters_opens() {
    if helper_args().is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut deep: PathBuf = dir.path().to_path_buf();
    for i in 0..7 {
        deep.push(format!("{i}-a-folder-name-of-some-forty-characters-xx"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    let parent = deep.join("Parent Disk.vhdx");
    let child = deep.join("child.avhdx");
    assert!(child.as_os_str().len() > 300, "{}", child.display());
    make_vhdx(&parent, None, 2);
    let changed = make_vhdx(&child, Some(&parent), 3);
    let disk = vhdkit::open(&child).unwrap();
    assert_eq!(disk.depth(), 2, "the parent was not found");
    assert!(read_all(&disk) == changed, "the chain reads other bytes");
    // And backs up and restores from there.
    let store = Store::init(deep.join("store"), &Default::default()).unwrap();
    let report = store.backup(&disk, &BackupOptions::new("vm")).unwrap();
    let reader = store.reader(report.id.as_str()).unwrap();
    assert!(read_all(&reader) == changed);
}

#[test]
fn helper_hold_maintenance_then_die() {
    let Some(args) = helper_args() else { return };
    let store = Store::open(&args[0]).unwrap();
    let _hold = store.hold_maintenance("helper", false).unwrap();
    println!("READY");
    // Killed here by the parent, as a crash or a power cut would.
    std::thread::sleep(std::time::Duration::from_secs(60));
}

#[test]
fn a_killed_holder_on_this_machine_frees_maintenance_at_once() {
    if helper_args().is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    Store::init(&path, &Default::default()).unwrap();
    let mut holder = helper("helper_hold_maintenance_then_die", &[path.to_str().unwrap()]);
    let store = Store::open(&path).unwrap();
    let busy = store.hold_maintenance("while held", false);
    assert_eq!(busy.err().map(|e| e.kind()), Some(ErrorKind::Busy), "a live holder's maintenance was taken");
    holder.kill().unwrap();
    holder.wait().unwrap();
    // Its lease is minutes from going stale; the holder being gone is
    // what frees it (on Linux: /proc's boot id and kill(pid, 0); on
    // Windows: MachineGuid, boot time and OpenProcess).
    store.hold_maintenance("after the kill", false).expect("a dead holder still holds maintenance");
}
