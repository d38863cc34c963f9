//! The command-line tool as scripts use it: closed pipes, SIGINT, restore
//! points, the trackers' change-list shapes and restores to stdout. Images
//! are written by qemu-img and qemu-io and compared with qemu's raw view.

// What only the Unix-only tests use is unused elsewhere.
#![cfg_attr(not(unix), allow(unused_imports, dead_code))]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
#[cfg(unix)]
use std::time::{Duration, Instant};

use serde_json::Value;

fn vhdkit(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new(common::cli());
    for a in args {
        cmd.arg(a);
    }
    cmd.output().expect("run vhdkit")
}

/// Runs vhdkit, which must succeed; returns its stdout.
fn ok(args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let out = vhdkit(args);
    assert!(
        out.status.success(),
        "vhdkit {:?} failed ({:?}): {}",
        args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Value {
    let text = ok(args);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A VHDX of `size` written by qemu, with `writes` (pattern, offset, length) by qemu-io.
fn qemu_image(path: &Path, size: &str, writes: &[(u8, &str, &str)]) {
    common::run(Command::new("qemu-img").args(["create", "-q", "-f", "vhdx"]).arg(path).arg(size));
    qemu_write(path, writes);
}

fn qemu_write(path: &Path, writes: &[(u8, &str, &str)]) {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "vhdx"]);
    for (pattern, at, len) in writes {
        cmd.arg("-c").arg(format!("write -P {pattern} {at} {len}"));
    }
    common::run(cmd.arg(path));
}

/// qemu's raw view of an image.
fn qemu_raw(image: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!("{}.qemu.raw", image.file_name().unwrap().to_string_lossy()));
    common::run(Command::new("qemu-img").args(["convert", "-f", "vhdx", "-O", "raw"]).arg(image).arg(&out));
    std::fs::read(out).unwrap()
}

/// Review finding: `vhdkit info IMAGE | head -1` panicked with "failed
/// printing to stdout: Broken pipe" and exit 101. The reader goes away
/// before the tool writes; it must end quietly.
#[test]
fn a_closed_output_pipe_ends_the_command_quietly() {
    if !common::have_qemu() {
        return;
    }
    let dir = common::scratch("cli-pipe");
    let image = dir.join("a.vhdx");
    qemu_image(&image, "8M", &[(0x11, "0", "1M")]);
    let store = dir.join("s");
    ok(&[&"store", &"init", &store]);
    ok(&[&"backup", &store, &image, &"--name", &"a"]);
    let commands: [Vec<&dyn AsRef<std::ffi::OsStr>>; 3] =
        [vec![&"info", &image], vec![&"map", &image, &"--json"], vec![&"vacuum", &store, &"--json"]];
    for args in commands {
        let mut cmd = Command::new(common::cli());
        for a in &args {
            cmd.arg(a);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");
        assert_eq!(out.status.code(), Some(0), "a closed pipe is not a failure: {stderr}");
    }
}

/// SIGINT in the middle of a real backup: exit 130, nothing committed,
/// and what was written is garbage that vacuum removes.
// Windows has no signal to send another process; Ctrl-C reaches a console
// program through its console, which a test cannot share under Wine.
#[cfg(unix)]
#[test]
fn sigint_cancels_a_backup_and_commits_nothing() {
    let dir = common::scratch("cli-sigint");
    // A disk large enough that the backup is well under way when its first
    // pack appears.
    let image = dir.join("big.vhdx");
    let disk = vhdkit::disk::OpenOptions::new().open_raw_reader(Box::new(common::noise(42, 384 << 20)), "big");
    vhdkit::export::export(&disk, &image, vhdkit::export::Target::Vhdx, &common::block_size(32 << 20)).unwrap();
    drop(disk);
    let store = dir.join("s");
    ok(&[&"store", &"init", &store, &"--pack-size", &"8M"]);
    let mut child = Command::new(common::cli())
        .arg("backup")
        .arg(&store)
        .arg(&image)
        .args(["--name", "big"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the backup writes its first pack.
    let started = Instant::now();
    while std::fs::read_dir(store.join("tmp")).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(started.elapsed() < Duration::from_secs(120), "the backup never started writing");
        assert!(child.try_wait().unwrap().is_none(), "the backup ended before it wrote a pack");
        std::thread::sleep(Duration::from_millis(2));
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "SIGINT did not cancel: {stderr}");
    assert!(stderr.contains("cancelled"), "{stderr}");
    let listed = json(&[&"list", &store, &"--json"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "the cancelled backup committed: {listed}");
    ok(&[&"verify", &store]);
    ok(&[&"vacuum", &store, &"--grace", &"0"]);
    let leftovers: Vec<PathBuf> =
        ["packs", "index", "manifests", "tmp"].iter().flat_map(|d| walk(&store.join(d))).collect();
    assert!(leftovers.is_empty(), "vacuum left {leftovers:?}");
}

#[cfg(unix)]
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// Two disks of a VM, tags and a configuration file as one restore point:
/// listed, restored whole into a folder, one disk to stdout, and pruned whole.
#[test]
fn a_multi_disk_job_is_one_restore_point() {
    if !common::have_qemu() {
        return;
    }
    let dir = common::scratch("cli-points");
    let (a, b) = (dir.join("sys.vhdx"), dir.join("data.vhdx"));
    qemu_image(&a, "16M", &[(0x21, "0", "3M"), (0x22, "9M", "64k")]);
    qemu_image(&b, "8M", &[(0x21, "0", "3M"), (0x33, "5M", "1M")]);
    let config = dir.join("vm.vmcx");
    std::fs::write(&config, "<configuration><name>web</name></configuration>".repeat(100)).unwrap();
    let store = dir.join("s");
    ok(&[&"store", &"init", &store, &"--chunk-size", &"64K"]);
    let job = json(&[
        &"backup",
        &store,
        &a,
        &b,
        &"--name",
        &"web",
        &"--tag",
        &"site=lab",
        &"--tag",
        &"owner=ops",
        &"--attach",
        &config,
        &"--json",
    ]);
    let point = job["point"].as_str().expect("a point id").to_string();
    // The data disk's first 3 MiB are the system disk's (one chunk's bytes
    // repeated): stored once, so the data disk stores only its own pattern.
    assert_eq!(job["disks"][0]["new_chunks"].as_u64(), Some(2), "{job}");
    assert_eq!(job["disks"][1]["new_chunks"].as_u64(), Some(1), "{job}");

    let listed = json(&[&"list", &store, &"--json"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    for (entry, label) in listed.iter().zip(["sys.vhdx", "data.vhdx"]) {
        assert_eq!(entry["point"].as_str(), Some(point.as_str()));
        assert_eq!(entry["disk"].as_str(), Some(label));
        assert_eq!(entry["tags"]["site"].as_str(), Some("lab"));
        assert_eq!(entry["tags"]["owner"].as_str(), Some("ops"));
        assert_eq!(entry["attachments"], serde_json::json!(["vm.vmcx"]));
    }
    let points = json(&[&"list", &store, &"--points", &"--json"]);
    assert_eq!(points[0]["id"].as_str(), Some(point.as_str()));

    let out = dir.join("restored");
    ok(&[&"restore", &store, &"web", &out, &"--to", &"raw", &"--point"]);
    assert!(std::fs::read(out.join("sys.raw")).unwrap() == qemu_raw(&a, &dir), "sys differs from qemu's view");
    assert!(std::fs::read(out.join("data.raw")).unwrap() == qemu_raw(&b, &dir), "data differs from qemu's view");
    assert_eq!(std::fs::read(out.join("vm.vmcx")).unwrap(), std::fs::read(&config).unwrap());

    // Several disks: a single-file restore must say which.
    let refused = vhdkit(&[&"restore", &store, &"web", &dir.join("x.raw"), &"--to", &"raw"]);
    assert_eq!(refused.status.code(), Some(2), "an ambiguous request is a usage error");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("data.vhdx"), "the labels are listed");
    let streamed = vhdkit(&[&"restore", &store, &"web", &"-", &"--to", &"raw", &"--disk", &"data.vhdx"]);
    assert!(streamed.status.success(), "{}", String::from_utf8_lossy(&streamed.stderr));
    assert!(streamed.stdout == qemu_raw(&b, &dir), "the stream differs from qemu's view");
    ok(&[&"verify", &store, &point]);

    // A second job, then prune to one: the first point goes whole.
    qemu_write(&a, &[(0x44, "1M", "64k")]);
    let second = json(&[&"backup", &store, &a, &b, &"--name", &"web", &"--json"]);
    let pruned = json(&[&"prune", &store, &"web", &"--keep-last", &"1", &"--json"]);
    assert_eq!(pruned["dropped_points"], serde_json::json!([point]));
    assert_eq!(pruned["dropped"].as_array().map(Vec::len), Some(2));
    let listed = json(&[&"list", &store, &"--json"]);
    let ids: Vec<&str> = listed.as_array().unwrap().iter().filter_map(|e| e["id"].as_str()).collect();
    let want: Vec<&str> = second["disks"].as_array().unwrap().iter().filter_map(|d| d["id"].as_str()).collect();
    assert_eq!(ids, want);
    let sys = dir.join("sys-now.raw");
    ok(&[&"restore", &store, &"web", &sys, &"--to", &"raw", &"--disk", &"sys.vhdx"]);
    assert!(std::fs::read(&sys).unwrap() == qemu_raw(&a, &dir));
}

/// Change lists as Hyper-V (RCT) and VMware (CBT) give them read only what
/// they name; a list reaching past the disk is refused and commits nothing;
/// --since must match the token the previous backup stored.
#[test]
fn trackers_change_lists_drive_incrementals() {
    if !common::have_qemu() {
        return;
    }
    let dir = common::scratch("cli-changes");
    let image = dir.join("d.vhdx");
    qemu_image(&image, "32M", &[(0x51, "0", "8M"), (0x52, "20M", "2M")]);
    let store = dir.join("s");
    ok(&[&"store", &"init", &store, &"--chunk-size", &"64K"]);
    ok(&[&"backup", &store, &image, &"--name", &"d", &"--change-id", &"rct:1"]);

    qemu_write(&image, &[(0x61, "3M", "4k"), (0x62, "21M", "100k")]);
    let hyperv = dir.join("hyperv.json");
    let rct = r#"{"ChangedByteOffsets": [22020096, 3145728], "ChangedByteLengths": [102400, 4096]}"#;
    std::fs::write(&hyperv, rct).unwrap();
    let r = json(&[
        &"backup",
        &store,
        &image,
        &"--name",
        &"d",
        &"--changed",
        &hyperv,
        &"--since",
        &"rct:1",
        &"--change-id",
        &"rct:2",
        &"--json",
    ]);
    assert_eq!(r["change_source"].as_str(), Some("ranges"), "{r}");
    assert!(r["bytes_read"].as_u64().unwrap() <= 4 * 65536, "{r}");
    let out = dir.join("out.raw");
    ok(&[&"restore", &store, &"d", &out, &"--to", &"raw"]);
    assert!(std::fs::read(&out).unwrap() == qemu_raw(&image, &dir), "after RCT");

    qemu_write(&image, &[(0x71, "30M", "64k")]);
    let vmware = dir.join("cbt.json");
    std::fs::write(
        &vmware,
        r#"{"startOffset": 0, "length": 33554432, "changedArea": [{"start": 31457280, "length": 65536}]}"#,
    )
    .unwrap();
    // A stale token is refused; the right one goes through.
    let stale = vhdkit(&[&"backup", &store, &image, &"--name", &"d", &"--changed", &vmware, &"--since", &"rct:1"]);
    assert_eq!(stale.status.code(), Some(2), "{}", String::from_utf8_lossy(&stale.stderr));
    let r = json(&[&"backup", &store, &image, &"--name", &"d", &"--changed", &vmware, &"--since", &"rct:2", &"--json"]);
    assert_eq!(r["change_source"].as_str(), Some("ranges"));
    let _ = std::fs::remove_file(&out);
    ok(&[&"restore", &store, &"d", &out, &"--to", &"raw"]);
    assert!(std::fs::read(&out).unwrap() == qemu_raw(&image, &dir), "after CBT");

    // A list for a larger disk: refused, nothing committed.
    let before = json(&[&"list", &store, &"--json"]).as_array().unwrap().len();
    let other = dir.join("other.json");
    std::fs::write(&other, r#"[{"offset": 33488896, "length": 131072}]"#).unwrap();
    let refused = vhdkit(&[&"backup", &store, &image, &"--name", &"d", &"--changed", &other]);
    assert_eq!(refused.status.code(), Some(2), "a list for another disk is a usage error");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("another disk"));
    assert_eq!(json(&[&"list", &store, &"--json"]).as_array().unwrap().len(), before);
}

/// Runs vhdkit with `env` added and no terminal on standard input.
fn vhdkit_env(args: &[&dyn AsRef<std::ffi::OsStr>], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(common::cli());
    cmd.env_remove("VHDKIT_PASSWORD").env_remove("VHDKIT_NEW_PASSWORD").stdin(Stdio::null());
    for a in args {
        cmd.arg(a);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run vhdkit")
}

fn ok_env(args: &[&dyn AsRef<std::ffi::OsStr>], env: &[(&str, &str)]) -> String {
    let out = vhdkit_env(args, env);
    assert!(out.status.success(), "vhdkit failed ({:?}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn an_encrypted_store_from_the_command_line() {
    if !common::have_qemu() {
        eprintln!("SKIPPED: qemu-img is not installed");
        return;
    }
    let dir = common::scratch("cli-encrypted");
    let (image, store) = (dir.join("d.vhdx"), dir.join("store"));
    qemu_image(&image, "48M", &[(0x61, "0", "5M"), (0x7a, "30M", "1M")]);
    let pass = [("VHDKIT_PASSWORD", "a passphrase for the test")];
    let cheap: [&dyn AsRef<std::ffi::OsStr>; 4] = [&"--argon2-memory", &"64K", &"--argon2-iterations", &"1"];
    let init = ok_env(&[&"store", &"init", &store, &"--encrypt", cheap[0], cheap[1], cheap[2], cheap[3]], &pass);
    assert!(init.contains("encrypted"), "{init}");
    let id = ok_env(&[&"backup", &store, &image, &"--name", &"d"], &pass).trim().to_string();
    let out = dir.join("back.raw");
    ok_env(&[&"restore", &store, &id, &out, &"--to", &"raw"], &pass);
    assert!(std::fs::read(&out).unwrap() == qemu_raw(&image, &dir), "the restore differs from qemu's view");

    // A wrong passphrase, or none: exit 1 naming the store, nothing written.
    let before = common::files(&store);
    let wrong = vhdkit_env(&[&"list", &store], &[("VHDKIT_PASSWORD", "not it")]);
    let said = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(1), "{said}");
    assert!(said.contains("no key of this store opens") && said.contains(&store.display().to_string()), "{said}");
    let none = vhdkit_env(&[&"list", &store], &[]);
    assert_eq!(none.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&none.stderr).contains("is encrypted"));
    assert!(common::files(&store) == before, "a refused command wrote to the store");

    // Verify without the key checks structure; with it, everything.
    let keyless: Value = serde_json::from_str(&ok_env(&[&"verify", &store, &"--no-key", &"--json"], &[])).unwrap();
    assert_eq!((keyless["ok"].as_bool(), keyless["structure_only"].as_bool()), (Some(true), Some(true)));
    let full: Value = serde_json::from_str(&ok_env(&[&"verify", &store, &"--json"], &pass)).unwrap();
    assert_eq!((full["ok"].as_bool(), full["backups_checked"].as_u64()), (Some(true), Some(1)));

    // A second passphrase from a file; the first removed.
    let file = dir.join("new-pass");
    std::fs::write(&file, "the second passphrase\n").unwrap();
    let listed = |env: &[(&str, &str)]| -> Vec<Value> {
        serde_json::from_str::<Value>(&ok_env(&[&"key", &"list", &store, &"--json"], env))
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    let first = listed(&[])[0]["id"].as_str().unwrap().to_string();
    let add = [&"key" as &dyn AsRef<std::ffi::OsStr>, &"add", &store, &"--new-password-file", &file];
    let added = ok_env(&[add[0], add[1], add[2], add[3], add[4], cheap[0], cheap[1], cheap[2], cheap[3]], &pass);
    assert_eq!(listed(&[]).len(), 2);
    let prefix = &first[..6];
    ok_env(&[&"key", &"remove", &store, &prefix, &"--password-file", &file], &[]);
    assert_eq!(listed(&[]).len(), 1);
    assert_eq!(listed(&[])[0]["id"].as_str(), Some(added.trim()));
    let removed = vhdkit_env(&[&"list", &store], &pass);
    assert_eq!(removed.status.code(), Some(1), "the removed passphrase still opens");
    assert!(String::from_utf8_lossy(&removed.stderr).contains("no key of this store opens"));
    let last = vhdkit_env(&[&"key", &"remove", &store, &added.trim(), &"--password-file", &file], &[]);
    assert_eq!(last.status.code(), Some(2), "the last key went (a refused request: exit 2)");
    assert!(String::from_utf8_lossy(&last.stderr).contains("only key"), "{}", String::from_utf8_lossy(&last.stderr));
    ok_env(&[&"restore", &store, &id, &dir.join("again.raw"), &"--to", &"raw", &"--password-file", &file], &[]);

    // A key given for a plain store is refused.
    let plain = dir.join("plain");
    ok_env(&[&"store", &"init", &plain], &[]);
    let given = vhdkit_env(&[&"list", &plain], &pass);
    assert_eq!(given.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&given.stderr).contains("not encrypted"),
        "{}",
        String::from_utf8_lossy(&given.stderr)
    );
}
