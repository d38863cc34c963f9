//! The command line as a new user meets it: every argument documented,
//! exit codes as the README says (2 for usage errors and unsupported input,
//! 1 for damage and failures), restores that never destroy what they were
//! not asked to, stores that cannot be written still restoring, and change
//! lists as Windows tools write them.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

fn vhdkit(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new(common::cli());
    for a in args {
        cmd.arg(a);
    }
    cmd.output().expect("run vhdkit")
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Runs vhdkit, which must succeed; returns its stdout.
fn ok(args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let out = vhdkit(args);
    assert!(out.status.success(), "vhdkit failed ({:?}): {}", out.status, text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The subcommands `vhdkit [path] help` lists.
fn subcommands(path: &[&str]) -> Vec<String> {
    let mut args: Vec<&str> = path.to_vec();
    args.push("--help");
    let out = Command::new(common::cli()).args(&args).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut names = Vec::new();
    let mut inside = false;
    for line in help.lines() {
        if line.starts_with("Commands:") {
            inside = true;
            continue;
        }
        if inside {
            if !line.starts_with("  ") {
                break;
            }
            let name = line.split_whitespace().next().unwrap_or_default();
            if name != "help" {
                names.push(name.to_string());
            }
        }
    }
    names
}

/// Every argument and option of every command has a description in its
/// `-h`, and global options stand apart from the command's own.
#[test]
fn every_argument_of_every_command_is_documented() {
    let mut commands: Vec<Vec<String>> = vec![vec![]];
    let mut checked = 0;
    let mut undocumented = Vec::new();
    while let Some(path) = commands.pop() {
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        for sub in subcommands(&p) {
            let mut next = path.clone();
            next.push(sub);
            commands.push(next);
        }
        let mut args = p.clone();
        args.push("-h");
        let out = Command::new(common::cli()).args(&args).output().unwrap();
        assert!(out.status.success(), "vhdkit {args:?}: {}", text(&out));
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        // Entries are "  -x, --flag <V>  What it does", or (when clap
        // puts descriptions on their own lines) the head on one line and
        // the description, further indented, on the next.
        let mut section = String::new();
        let lines: Vec<&str> = help.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if !line.starts_with(' ') && line.ends_with(':') {
                section = line.trim_end_matches(':').to_string();
                continue;
            }
            let body = line.trim_start();
            let head = body.starts_with('-') || body.starts_with('<') || body.starts_with('[');
            if !["Arguments", "Options", "Global options"].contains(&section.as_str()) || !head {
                continue;
            }
            checked += 1;
            let indent = line.len() - body.len();
            let same_line = body.split_once("  ").is_some_and(|(_, d)| !d.trim().is_empty());
            let next_line = lines.get(i + 1).is_some_and(|n| {
                let t = n.trim_start();
                n.len() - t.len() > indent && !t.is_empty() && !t.starts_with('-')
            });
            if !same_line && !next_line {
                undocumented.push(format!("vhdkit {}: {}", p.join(" "), body));
            }
        }
        if !p.is_empty() {
            assert!(help.contains("Global options:"), "vhdkit {}: global options are not apart:\n{help}", p.join(" "));
            let own = help.split("Global options:").next().unwrap_or_default();
            let listed = |opt: &str| own.lines().any(|l| l.trim_start().starts_with(opt));
            assert!(
                !listed("--key-file") && !listed("--cache-dir"),
                "vhdkit {}: a global option among the command's own:\n{help}",
                p.join(" ")
            );
        }
    }
    eprintln!("{checked} arguments and options checked");
    assert!(checked > 100, "only {checked} arguments were seen: the walk is broken");
    assert!(undocumented.is_empty(), "undocumented:\n{}", undocumented.join("\n"));
}

/// Usage errors and unsupported input exit 2 everywhere; refused commands
/// leave nothing behind.
#[test]
fn usage_errors_exit_2_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = d.join("disk.raw");
    std::fs::write(&raw, common::sparse_noise(1, 4 << 20)).unwrap();

    let out = vhdkit(&[&"check", &raw]);
    assert_eq!(code(&out), 2, "check of a raw file: {}", text(&out));

    let store = d.join("store");
    let out = vhdkit(&[&"store", &"init", &store, &"--chunk-size", &"3K"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(!store.exists(), "a refused init leaves nothing");
    let deep = d.join("unmounted").join("store");
    let out = vhdkit(&[&"store", &"init", &deep]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(!d.join("unmounted").exists(), "no parent folder is made without --parents");
    ok(&[&"store", &"init", &deep, &"--parents"]);
    ok(&[&"store", &"init", &store]);
    let init = ok(&[&"store", &"init", &d.join("other"), &"--compression", &"zstd"]);
    assert!(init.contains("compression zstd"), "{init}");

    let past = d.join("past.json");
    std::fs::write(&past, r#"[{"offset": 4194304, "length": 512}]"#).unwrap();
    ok(&[&"backup", &store, &"--from", &"raw", &raw, &"--name", &"vm"]);
    let out = vhdkit(&[&"backup", &store, &"--from", &"raw", &raw, &"--name", &"vm", &"--changed", &past]);
    assert_eq!(code(&out), 2, "a change list past the disk's end: {}", text(&out));
    let out = vhdkit(&[&"backup", &store, &"--from", &"raw", &raw, &"--name", &"vm", &"--since", &"rct-7"]);
    assert_eq!(code(&out), 2, "--since without --changed: {}", text(&out));
    let out = vhdkit(&[&"prune", &store, &"vm"]);
    assert_eq!(code(&out), 2, "a policy that keeps nothing: {}", text(&out));
    assert_eq!(ok(&[&"list", &store, &"--json"]).matches("\"id\"").count(), 1, "nothing was added or dropped");
    // No Rust debug names in what people read.
    let human = text(&vhdkit(&[&"backup", &store, &"--from", &"raw", &raw, &"--name", &"vm"]));
    assert!(human.contains("incremental backup (hash)"), "{human}");
    for debug in ["None", "Hash", "Incremental", "Ranges", "Zstd"] {
        assert!(!human.contains(debug), "{debug} in: {human}");
    }
}

/// An existing OUT is kept unless --force; a target that cannot be written
/// is refused before any data is read.
#[test]
fn restore_never_destroys_what_it_was_not_asked_to() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = d.join("disk.raw");
    let bytes = common::sparse_noise(2, 4 << 20);
    std::fs::write(&raw, &bytes).unwrap();
    let store = d.join("store");
    ok(&[&"store", &"init", &store]);
    ok(&[&"backup", &store, &"--from", &"raw", &raw, &"--name", &"vm"]);

    let precious = d.join("precious.raw");
    std::fs::write(&precious, b"the customer's only copy").unwrap();
    let out = vhdkit(&[&"restore", &store, &"vm", &precious, &"--to", &"raw"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert_eq!(std::fs::read(&precious).unwrap(), b"the customer's only copy");
    ok(&[&"restore", &store, &"vm", &precious, &"--to", &"raw", &"--force"]);
    assert!(std::fs::read(&precious).unwrap() == bytes);

    let out = vhdkit(&[&"restore", &store, &"vm", &d, &"--to", &"raw"]);
    assert_eq!(code(&out), 2, "a folder as OUT: {}", text(&out));
    let out = vhdkit(&[&"restore", &store, &"vm", &d.join("missing").join("x.raw"), &"--to", &"raw"]);
    assert_eq!(code(&out), 2, "a missing folder: {}", text(&out));
    let point = d.join("point");
    std::fs::create_dir(&point).unwrap();
    std::fs::write(point.join("keep.txt"), b"keep").unwrap();
    ok(&[&"backup", &store, &"--from", &"raw", &raw, &"--name", &"vm", &"--tag", &"k=v"]);
    let out = vhdkit(&[&"restore", &store, &"vm", &point, &"--to", &"raw", &"--point"]);
    assert_eq!(code(&out), 2, "a folder that is not empty: {}", text(&out));
    assert_eq!(std::fs::read(point.join("keep.txt")).unwrap(), b"keep");
    // --block-size as convert has it: qemu reads the VHDX's block size.
    let vhdx = d.join("small-blocks.vhdx");
    ok(&[&"restore", &store, &"vm", &vhdx, &"--to", &"vhdx", &"--block-size", &"2M"]);
    let info = vhdkit(&[&"info", &vhdx, &"--json"]);
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["block_size"], 2 << 20, "{v}");
}

/// Change lists as Windows PowerShell 5.1 writes them (UTF-16 LE with a
/// byte-order mark), and RCT's partial answers: refused, or with
/// --unprocessed-as-changed read past the processed length.
#[test]
fn powershell_change_lists_and_partial_answers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = d.join("disk.raw");
    let mut bytes = common::sparse_noise(3, 8 << 20);
    std::fs::write(&raw, &bytes).unwrap();
    let store = d.join("store");
    ok(&[&"store", &"init", &store]);
    ok(&[&"backup", &store, &"--from", &"raw", &raw, &"--name", &"vm"]);
    bytes[6 << 20..(6 << 20) + 4096].fill(0x5A);
    bytes[4096..8192].fill(0xA5);
    std::fs::write(&raw, &bytes).unwrap();

    let utf16 = |s: &str| {
        let mut v = vec![0xFF, 0xFE];
        s.encode_utf16().for_each(|u| v.extend_from_slice(&u.to_le_bytes()));
        v
    };
    let partial = d.join("partial.json");
    std::fs::write(
        &partial,
        utf16(r#"{"ChangedByteOffsets":[4096],"ChangedByteLengths":[4096],"ProcessedByteLength":2097152}"#),
    )
    .unwrap();
    let out = vhdkit(&[&"backup", &store, &"--from", &"raw", &raw, &"--name", &"vm", &"--changed", &partial]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(
        text(&out).contains("ProcessedByteLength") || text(&out).contains("covers only bytes 0..2097152"),
        "{}",
        text(&out)
    );
    let id = ok(&[
        &"backup",
        &store,
        &"--from",
        &"raw",
        &raw,
        &"--name",
        &"vm",
        &"--changed",
        &partial,
        &"--unprocessed-as-changed",
    ]);
    let out = d.join("out.raw");
    ok(&[&"restore", &store, &id.trim(), &out, &"--to", &"raw"]);
    assert!(std::fs::read(&out).unwrap() == bytes, "the change past the processed length was read");

    let mut bom8 = vec![0xEF, 0xBB, 0xBF];
    bom8.extend_from_slice(
        br#"{"ChangedByteOffsets":[4096],"ChangedByteLengths":[4096],"ProcessedByteLength":8388608}"#,
    );
    let whole = d.join("whole.json");
    std::fs::write(&whole, bom8).unwrap();
    let report = ok(&[&"backup", &store, &"--from", &"raw", &raw, &"--name", &"vm", &"--changed", &whole, &"--json"]);
    let v: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(v["change_source"], "ranges", "{v}");
}

/// A store that cannot be written (a user without write permission on a
/// `chmod -R a-w` folder: a WORM share, a snapshot) restores, verifies and
/// gives its stats, and refuses a backup without changing a byte.
#[cfg(unix)]
#[test]
fn a_store_nobody_can_write_still_restores_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = d.join("disk.raw");
    let bytes = common::sparse_noise(4, 4 << 20);
    std::fs::write(&raw, &bytes).unwrap();
    let store = d.join("store");
    ok(&[&"store", &"init", &store]);
    ok(&[&"backup", &store, &"--from", &"raw", &raw, &"--name", &"vm"]);
    let root = Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
    // Root writes whatever the mode bits say: run the tool as nobody.
    let as_user = |args: &[&dyn AsRef<std::ffi::OsStr>]| -> Output {
        let mut cmd = if root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(common::cli());
            c
        } else {
            Command::new(common::cli())
        };
        for a in args {
            cmd.arg(a);
        }
        cmd.env("HOME", d).output().expect("run vhdkit")
    };
    if root && Command::new("setpriv").arg("--help").output().is_err() {
        eprintln!("SKIPPED: running as root without setpriv, so nothing here is unwritable");
        return;
    }
    let out_dir = d.join("out");
    std::fs::create_dir(&out_dir).unwrap();
    chmod(d, "a+rx");
    chmod(&out_dir, "a+rwx");
    chmod(&raw, "a+r");
    let before = common::files(&store);
    common::run(Command::new("chmod").args(["-R", "a-w,a+rX"]).arg(&store));
    let out = out_dir.join("restored.raw");
    let r = as_user(&[&"restore", &store, &"vm", &out, &"--to", &"raw"]);
    assert!(r.status.success(), "{}", text(&r));
    assert!(text(&r).contains("read-only"), "the user is told what a read-only restore gives up: {}", text(&r));
    assert!(std::fs::read(&out).unwrap() == bytes);
    let v = as_user(&[&"verify", &store]);
    assert!(v.status.success(), "{}", text(&v));
    let s = as_user(&[&"stats", &store, &"--json"]);
    assert!(s.status.success(), "{}", text(&s));
    let b = as_user(&[&"backup", &store, &"--from", &"raw", &raw, &"--name", &"vm"]);
    assert_eq!(code(&b), 1, "{}", text(&b));
    let e = as_user(&[&"--read-only", &"backup", &store, &"--from", &"raw", &raw, &"--name", &"vm"]);
    assert_eq!(code(&e), 2, "{}", text(&e));
    common::run(Command::new("chmod").args(["-R", "u+w"]).arg(&store));
    assert_eq!(before, common::files(&store), "the store is byte for byte as it was");
}

#[cfg(unix)]
fn chmod(path: &Path, mode: &str) {
    common::run(Command::new("chmod").arg(mode).arg(path));
}

/// Raw images (and block devices) back up with --from raw, as convert reads them.
#[test]
fn raw_sources_back_up_and_restore_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = d.join("snapshot.img");
    let bytes = common::sparse_noise(5, 6 << 20);
    std::fs::write(&raw, &bytes).unwrap();
    let store = d.join("store");
    ok(&[&"store", &"init", &store]);
    let out = vhdkit(&[&"backup", &store, &raw, &"--name", &"vm"]);
    assert_eq!(code(&out), 2, "a raw file without --from raw is not a VHD/VHDX: {}", text(&out));
    ok(&[&"backup", &store, &"--from", &"raw", &raw, &"--name", &"vm"]);
    let restored = d.join("r.raw");
    ok(&[&"restore", &store, &"vm", &restored, &"--to", &"raw"]);
    assert!(std::fs::read(&restored).unwrap() == bytes);
    let names: BTreeSet<String> =
        std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.iter().any(|n| n.starts_with(".vhdkit-write-test")), "{names:?}");
}

/// A backup killed with SIGKILL midway, then run again: the second
/// attempt takes over the packs the first sealed and uploads only the
/// rest (bytes_uploaded measured against the disk's size).
#[test]
fn a_killed_backup_resumes_from_its_sealed_packs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = d.join("disk.raw");
    let size = 192 << 20;
    std::fs::write(&raw, common::noise(12, size)).unwrap();
    for attempt in 0..3 {
        let store = d.join(format!("store{attempt}"));
        ok(&[&"store", &"init", &store, &"--chunk-size", &"64K", &"--pack-size", &"1M"]);
        let mut child = Command::new(common::cli())
            .args(["backup".as_ref(), store.as_os_str(), "--from".as_ref(), "raw".as_ref(), raw.as_os_str()])
            .args(["--name", "vm"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill it once a third of its packs are sealed (a condition, not a time).
        let packs = |s: &Path| walk_count(&s.join("packs"));
        let killed = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break !status.success();
            }
            if packs(&store) >= 64 {
                child.kill().unwrap();
                child.wait().unwrap();
                break true;
            }
            std::thread::yield_now();
        };
        if !killed {
            continue; // It finished first: try again on a fresh store.
        }
        let sealed = packs(&store);
        let out = ok(&[&"backup", &store, &"--from", &"raw", &raw, &"--name", &"vm", &"--json"]);
        let r: serde_json::Value = serde_json::from_str(&out).unwrap();
        let uploaded = r["bytes_uploaded"].as_u64().unwrap();
        eprintln!(
            "killed after {sealed} packs; the next attempt uploaded {uploaded} of {size} bytes, taking over {} chunks",
            r["resumed_chunks"]
        );
        assert!(r["resumed_chunks"].as_u64().unwrap() > 0, "{r}");
        assert!(uploaded < size as u64 * 9 / 10, "uploaded {uploaded} of {size} bytes again: {r}");
        let restored = d.join("restored.raw");
        ok(&[&"restore", &store, &"vm", &restored, &"--to", &"raw"]);
        assert!(std::fs::read(&restored).unwrap() == std::fs::read(&raw).unwrap());
        assert!(vhdkit(&[&"verify", &store]).status.success());
        return;
    }
    panic!("three backups of {size} bytes finished before a third of their packs could be counted");
}

/// `vhdkit copy` killed with SIGKILL midway, then run again: the second
/// copy takes over the packs the first sealed in the destination, and the
/// result restores exactly; a third copy moves nothing.
#[test]
fn a_killed_copy_resumes_and_a_finished_one_moves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = d.join("disk.raw");
    let size = 128 << 20;
    std::fs::write(&raw, common::noise(14, size)).unwrap();
    let src = d.join("src");
    ok(&[&"store", &"init", &src, &"--chunk-size", &"64K", &"--pack-size", &"1M"]);
    ok(&[&"backup", &src, &"--from", &"raw", &raw, &"--name", &"vm"]);
    for attempt in 0..3 {
        let dst = d.join(format!("dst{attempt}"));
        ok(&[&"store", &"init", &dst, &"--chunk-size", &"64K", &"--pack-size", &"1M"]);
        let mut child = Command::new(common::cli())
            .args(["copy".as_ref(), src.as_os_str(), dst.as_os_str()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let packs = |s: &Path| walk_count(&s.join("packs"));
        let killed = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break !status.success();
            }
            if packs(&dst) >= 40 {
                child.kill().unwrap();
                child.wait().unwrap();
                break true;
            }
            std::thread::yield_now();
        };
        if !killed {
            continue;
        }
        let out = ok(&[&"copy", &src, &dst, &"--json"]);
        let r: serde_json::Value = serde_json::from_str(&out).unwrap();
        let uploaded = r["dest"]["bytes_uploaded"].as_u64().unwrap();
        eprintln!("copy killed after {} packs; the next one uploaded {uploaded} of {size} bytes", packs(&dst));
        assert_eq!(r["backups_copied"].as_array().unwrap().len(), 1, "{r}");
        assert!(uploaded < size as u64 * 9 / 10, "uploaded {uploaded} of {size} bytes again: {r}");
        let restored = d.join("restored.raw");
        ok(&[&"restore", &dst, &"vm", &restored, &"--to", &"raw"]);
        assert!(std::fs::read(&restored).unwrap() == std::fs::read(&raw).unwrap());
        assert!(vhdkit(&[&"verify", &dst]).status.success());
        let again: serde_json::Value = serde_json::from_str(&ok(&[&"copy", &src, &dst, &"--json"])).unwrap();
        assert_eq!(again["chunks_moved"], 0, "{again}");
        assert_eq!(again["backups_copied"].as_array().unwrap().len(), 0, "{again}");
        return;
    }
    panic!("three copies of {size} bytes finished before 40 packs could be counted");
}

fn walk_count(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.flatten().map(|e| if e.path().is_dir() { walk_count(&e.path()) } else { 1 }).sum()
}
