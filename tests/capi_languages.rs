//! The C ABI from languages vhdkit is not written in: the C example built
//! with the system `cc` under AddressSanitizer (and linked statically), the
//! C# example built with Debian's `mcs` and run with `mono`, and random
//! reads from Python's `ctypes`, each checked against qemu-img.
//!
//! They use the library as a product would, installed under a prefix by
//! `scripts/capi-install.sh PREFIX`, named by `VHDKIT_CAPI_PREFIX`. Without
//! it (or without cc, mcs, mono, python3, qemu-img) they say SKIPPED, unless
//! `VHDKIT_REQUIRE_CAPI=1` (CI), where anything missing fails.

#![cfg(unix)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{noise, run};

const MIB: usize = 1 << 20;

fn required() -> bool {
    std::env::var("VHDKIT_REQUIRE_CAPI").as_deref() == Ok("1")
}

/// The install prefix, and whether `tools` are all on PATH; None (after
/// saying SKIPPED) when something is missing and CI does not require it.
fn prefix(tools: &[&str]) -> Option<PathBuf> {
    let prefix = std::env::var_os("VHDKIT_CAPI_PREFIX").map(PathBuf::from);
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            Command::new("sh").args(["-c", &format!("command -v {t}")]).output().map_or(true, |o| !o.status.success())
        })
        .collect();
    match (&prefix, missing.is_empty()) {
        (Some(p), true) if p.join("include/vhdkit.h").exists() => return prefix,
        _ => {}
    }
    let why =
        format!("VHDKIT_CAPI_PREFIX={prefix:?} (made by scripts/capi-install.sh PREFIX), missing tools {missing:?}");
    assert!(!required(), "VHDKIT_REQUIRE_CAPI=1 but {why}");
    eprintln!("SKIPPED: {why}");
    None
}

/// A 48 MiB disk of noise with holes (BASE), the same with two ranges
/// rewritten (CHANGED, as raw too), and the Hyper-V change list between them.
struct Images {
    dir: tempfile::TempDir,
}

impl Images {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut disk = vec![0u8; 48 * MIB];
        disk[..6 * MIB].copy_from_slice(&noise(1, 6 * MIB));
        disk[20 * MIB..23 * MIB].copy_from_slice(&noise(2, 3 * MIB));
        disk[47 * MIB..].copy_from_slice(&noise(3, MIB));
        std::fs::write(dir.path().join("base.raw"), &disk).unwrap();
        let (base, changed) = (dir.path().join("base.vhdx"), dir.path().join("changed.vhdx"));
        run(Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "vhdx"])
            .arg(dir.path().join("base.raw"))
            .arg(&base));
        // CHANGED is BASE written by qemu-io (same disk id, as a checkpoint
        // continues a disk): at an odd offset inside data, and in a hole.
        std::fs::copy(&base, &changed).unwrap();
        for (at, len, seed) in [(MIB + 4096, 65536, 4), (40 * MIB, MIB, 5)] {
            let bytes = noise(seed, len);
            disk[at..at + len].copy_from_slice(&bytes);
            let src = dir.path().join(format!("change-{seed}.bin"));
            std::fs::write(&src, &bytes).unwrap();
            run(Command::new("qemu-io")
                .args(["-f", "vhdx", "-c"])
                .arg(format!("write -s {} {at} {len}", src.display()))
                .arg(&changed));
        }
        std::fs::write(dir.path().join("changed.raw"), &disk).unwrap();
        let changes = format!(
            r#"{{"ChangedByteOffsets": [{}, {}], "ChangedByteLengths": [65536, {}], "ProcessedByteLength": {}}}"#,
            MIB + 4096,
            40 * MIB,
            MIB,
            48 * MIB
        );
        std::fs::write(dir.path().join("changes.json"), changes).unwrap();
        Images { dir }
    })
}

/// qemu-img's raw view of `image`.
fn qemu_raw(image: &Path) -> Vec<u8> {
    let raw = image.with_extension("qemu.raw");
    run(Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(image).arg(&raw));
    std::fs::read(raw).unwrap()
}

fn pkg_config(prefix: &Path, args: &[&str]) -> Vec<String> {
    let out =
        run(Command::new("pkg-config").args(args).arg("vhdkit").env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig")));
    out.split_whitespace().map(String::from).collect()
}

/// Runs the C or C# round trip in a fresh folder and checks its output
/// image against qemu's view of CHANGED.
fn round_trip(program: &mut Command, ok_line: &str, work: &Path) {
    let im = images();
    let out = work.join("out.vhdx");
    let stdout = run(program
        .arg(im.path("base.vhdx"))
        .arg(im.path("changed.vhdx"))
        .arg(im.path("changes.json"))
        .arg(work.join("store"))
        .arg(&out)
        .current_dir(work));
    assert!(stdout.contains(ok_line), "{stdout}");
    assert!(stdout.contains(r#""kind":"incremental""#), "{stdout}");
    let restored = qemu_raw(&out);
    assert!(restored == std::fs::read(im.path("changed.raw")).unwrap(), "the restored VHDX differs from CHANGED");
}

#[test]
fn pkg_config_finds_the_installed_library() {
    let Some(prefix) = prefix(&["pkg-config"]) else { return };
    let flags = pkg_config(&prefix, &["--cflags", "--libs"]);
    assert!(flags.contains(&format!("-I{}", prefix.join("include").display())), "{flags:?}");
    assert!(flags.contains(&"-lvhdkit".to_string()), "{flags:?}");
    let soname = run(Command::new("readelf").arg("-d").arg(prefix.join("lib/libvhdkit.so")));
    assert!(soname.contains("Library soname: [libvhdkit.so.0]"), "{soname}");
    let symbols = run(Command::new("nm").args(["-D", "--defined-only"]).arg(prefix.join("lib/libvhdkit.so")));
    for f in ["vhdkit_abi_version", "vhdkit_store_backup", "vhdkit_reader_read_at", "vhdkit_error_free"] {
        assert!(symbols.contains(f), "{f} is not exported");
    }
}

#[test]
fn c_round_trip_under_address_sanitizer() {
    let Some(prefix) = prefix(&["cc", "pkg-config", "qemu-img"]) else { return };
    let work = tempfile::tempdir().unwrap();
    let exe = work.path().join("roundtrip");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/c/roundtrip.c");
    run(Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-O1", "-fsanitize=address", "-fno-omit-frame-pointer"])
        .arg(&source)
        .arg("-o")
        .arg(&exe)
        .args(pkg_config(&prefix, &["--cflags", "--libs"]))
        .arg("-lpthread"));
    // A leak or a bad access in C or in vhdkit's allocations fails the run.
    let mut program = Command::new(&exe);
    program.env("LD_LIBRARY_PATH", prefix.join("lib")).env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0");
    round_trip(&mut program, "C ROUNDTRIP OK", work.path());
}

#[test]
fn c_round_trip_linked_statically() {
    let Some(prefix) = prefix(&["cc", "pkg-config", "qemu-img"]) else { return };
    let work = tempfile::tempdir().unwrap();
    let exe = work.path().join("roundtrip-static");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/c/roundtrip.c");
    let cflags = pkg_config(&prefix, &["--cflags"]);
    let libs = pkg_config(&prefix, &["--libs-only-other", "--static", "--libs"]);
    run(Command::new("cc")
        .args(["-std=c11", "-O1"])
        .args(cflags)
        .arg(&source)
        .arg("-o")
        .arg(&exe)
        .arg(prefix.join("lib/libvhdkit.a"))
        .args(libs.iter().filter(|f| *f != "-lvhdkit" && !f.starts_with("-L")))
        .arg("-lpthread"));
    let deps = run(Command::new("ldd").arg(&exe));
    assert!(!deps.contains("libvhdkit"), "linked against the shared object: {deps}");
    round_trip(&mut Command::new(&exe), "C ROUNDTRIP OK", work.path());
}

#[test]
fn csharp_round_trip_through_pinvoke() {
    let Some(prefix) = prefix(&["mcs", "mono", "qemu-img"]) else { return };
    let work = tempfile::tempdir().unwrap();
    let exe = work.path().join("RoundTrip.exe");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/csharp/RoundTrip.cs");
    run(Command::new("mcs").arg(format!("-out:{}", exe.display())).arg(&source));
    let mut program = Command::new("mono");
    program.arg(&exe).env("LD_LIBRARY_PATH", prefix.join("lib"));
    round_trip(&mut program, "CSHARP ROUNDTRIP OK", work.path());
}

#[test]
fn python_random_reads_equal_qemu() {
    let Some(prefix) = prefix(&["python3", "qemu-img"]) else { return };
    let im = images();
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    // The backup is made by the CLI-equivalent Rust API: the reads are what
    // this test is about.
    let s = vhdkit::store::Store::init(&store, &Default::default()).unwrap();
    let disk = vhdkit::open(im.path("changed.vhdx")).unwrap();
    s.backup(&disk, &vhdkit::store::BackupOptions::new("vm")).unwrap();
    let raw = im.path("changed.vhdx").with_extension("python.raw");
    std::fs::write(&raw, qemu_raw(&im.path("changed.vhdx"))).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python/random_reads.py");
    let out = run(Command::new("python3")
        .arg(script)
        .arg(prefix.join("lib/libvhdkit.so"))
        .arg(&store)
        .arg("vm")
        .arg(&raw)
        .args(["3000", "7"]));
    assert!(out.contains("PYTHON READS OK: 3000"), "{out}");
}

#[test]
fn the_readme_example_backs_up_and_the_benchmark_programs_build() {
    let Some(prefix) = prefix(&["cc", "pkg-config", "qemu-img"]) else { return };
    let im = images();
    let work = tempfile::tempdir().unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/c");
    for name in ["backup", "bench_reads"] {
        run(Command::new("cc")
            .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2"])
            .arg(examples.join(format!("{name}.c")))
            .arg("-o")
            .arg(work.path().join(name))
            .args(pkg_config(&prefix, &["--cflags", "--libs"])));
    }
    let store = work.path().join("store");
    let backup = |args: &[&Path]| {
        run(Command::new(work.path().join("backup"))
            .arg(&store)
            .arg("vm")
            .args(args)
            .env("LD_LIBRARY_PATH", prefix.join("lib")))
    };
    assert!(backup(&[&im.path("base.vhdx")]).contains(r#""kind":"full""#));
    let report = backup(&[&im.path("changed.vhdx"), &im.path("changes.json")]);
    // Three 512 KiB chunks: the 64 KiB change inside one, the 1 MiB one across two.
    assert!(report.contains(r#""kind":"incremental""#) && report.contains(r#""bytes_read":1572864"#), "{report}");
    let reads = run(Command::new(work.path().join("bench_reads"))
        .arg(&store)
        .args(["vm", "1000", "3"])
        .env("LD_LIBRARY_PATH", prefix.join("lib")));
    assert!(reads.starts_with("ns_per_read "), "{reads}");
}
