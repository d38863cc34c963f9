//! Against Garage, a real distributed S3 server that ignores conditional
//! writes (`If-None-Match: *`): the probe finds it out, `store init` is
//! refused by the library and the command line (exit 2, nothing left in
//! the bucket), and with `single_writer` a store works there end to end.
//! Runs when `garage` is on the PATH (or `GARAGE` names it):
//! `scripts/garage-up.sh` starts a one-node cluster on loopback, stopped by
//! its PID. `VHDKIT_REQUIRE_GARAGE=1` makes a missing Garage a failure.

#![cfg(feature = "s3")]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use vhdkit::VirtualDisk;
use vhdkit::store::{Backend, BackupOptions, ObjectBackend, Store};

struct Garage {
    pid: u32,
    settings: BTreeMap<String, String>,
    _dir: tempfile::TempDir,
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
    }
}

impl Garage {
    fn backend(&self, url: &str) -> Arc<dyn Backend> {
        let pairs = [
            ("aws_endpoint", self.settings["endpoint"].as_str()),
            ("aws_access_key_id", self.settings["key_id"].as_str()),
            ("aws_secret_access_key", self.settings["secret"].as_str()),
            ("aws_region", "garage"),
            ("aws_allow_http", "true"),
        ];
        Arc::new(ObjectBackend::s3_with(url, &pairs).unwrap())
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(common::cli())
            .args(args)
            .env("AWS_ENDPOINT_URL", &self.settings["endpoint"])
            .env("AWS_ACCESS_KEY_ID", &self.settings["key_id"])
            .env("AWS_SECRET_ACCESS_KEY", &self.settings["secret"])
            .env("AWS_REGION", "garage")
            .env("AWS_ALLOW_HTTP", "true")
            .output()
            .unwrap()
    }
}

fn garage() -> Option<Garage> {
    let binary = std::env::var("GARAGE").unwrap_or_else(|_| "garage".into());
    if Command::new(&binary).arg("--version").output().is_err() {
        assert!(
            std::env::var("VHDKIT_REQUIRE_GARAGE").as_deref() != Ok("1"),
            "VHDKIT_REQUIRE_GARAGE=1 but there is no {binary} (cargo install garage)"
        );
        eprintln!("SKIPPED: no Garage (cargo install garage, or GARAGE=/path/to/garage)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts").join("garage-up.sh");
    let out = Command::new("bash").arg(script).arg(dir.path()).env("GARAGE", &binary).output().unwrap();
    assert!(out.status.success(), "garage-up.sh: {}", String::from_utf8_lossy(&out.stderr));
    let settings: BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let pid = settings["pid"].parse().unwrap();
    Some(Garage { pid, settings, _dir: dir })
}

#[test]
fn garage_ignores_conditional_writes_and_the_store_says_so() {
    let Some(g) = garage() else { return };
    let url = "s3://vhdkit-test/probe";
    let b = g.backend(url);
    let honoured = vhdkit::store::probe_conditional_writes(&*b).unwrap();
    eprintln!("Garage honours If-None-Match: {honoured}");
    if honoured {
        // A later Garage that honours them is simply a good store.
        Store::init_backend(b, &common::init_options(256 * 1024, 4 << 20)).unwrap();
        return;
    }
    let err = Store::init_backend(b.clone(), &common::init_options(256 * 1024, 4 << 20)).unwrap_err();
    assert_eq!(err.kind(), vhdkit::ErrorKind::Unsupported, "{err}");
    assert!(b.list("").unwrap().is_empty(), "a refused init leaves nothing");

    let out = g.cli(&["store", "init", "s3://vhdkit-test/cli"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("If-None-Match"));
    let out = g.cli(&["store", "init", "s3://vhdkit-test/cli", "--single-writer"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Accepted: a store that works, and says at every open what it gave up.
    let url = "s3://vhdkit-test/accepted";
    let options = common::tweak(common::init_options(256 * 1024, 4 << 20), |o| o.single_writer = true);
    Store::init_backend(g.backend(url), &options).unwrap();
    let store = Store::open_backend(g.backend(url)).unwrap();
    assert!(store.warnings().iter().any(|w| w.contains("single-writer")));
    let bytes = common::sparse_noise(8, 6 << 20);
    let disk = vhdkit::disk::OpenOptions::new().open_raw_reader(Box::new(bytes.clone()), "disk");
    let r = store.backup(&disk, &BackupOptions::new("vm")).unwrap();
    let reader = store.reader(r.id.as_str()).unwrap();
    let mut got = vec![0u8; bytes.len()];
    reader.read_at(&mut got, 0).unwrap();
    assert!(got == bytes);
    assert!(store.verify(&Default::default()).unwrap().ok);
}
