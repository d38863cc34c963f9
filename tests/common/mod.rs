//! Helpers shared by the integration tests: where the real-image corpus is,
//! whether qemu-img is available (and required), decompression with a cache,
//! and hashing of a disk's whole view.
#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};
use vhdkit::VirtualDisk;

/// The corpus folder: `VHDKIT_CORPUS`, or `../shared/corpus` beside the crate.
/// Returns `None` (after saying so loudly) when it is absent and was not
/// asked for explicitly; panics when `VHDKIT_CORPUS` names a missing folder.
pub fn corpus() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("VHDKIT_CORPUS") {
        let dir = PathBuf::from(dir);
        let dir = if dir.is_relative() { Path::new(env!("CARGO_MANIFEST_DIR")).join(dir) } else { dir };
        assert!(dir.join("corpus.json").is_file(), "VHDKIT_CORPUS={} has no corpus.json", dir.display());
        return Some(dir);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus");
    if dir.join("corpus.json").is_file() {
        Some(dir)
    } else {
        eprintln!("SKIPPED: no real-image corpus at {} (set VHDKIT_CORPUS to run these tests)", dir.display());
        None
    }
}

/// Whether qemu-img and qemu-io can run. When `VHDKIT_REQUIRE_QEMU=1`, a
/// missing qemu is a failure instead of a skip.
pub fn have_qemu() -> bool {
    let ok = ["qemu-img", "qemu-io"]
        .iter()
        .all(|tool| Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success()));
    if !ok {
        assert!(
            std::env::var("VHDKIT_REQUIRE_QEMU").as_deref() != Ok("1"),
            "VHDKIT_REQUIRE_QEMU=1 but qemu-img/qemu-io cannot run (apt-get install qemu-utils)"
        );
        eprintln!("SKIPPED: qemu-img/qemu-io not found; install qemu-utils to run the qemu oracle tests");
    }
    ok
}

/// Runs a command and panics with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A scratch folder under the target directory, emptied first.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The corpus file `rel`, decompressed when it ends in .gz or .bz2. Large
/// decompressed images are cached under the target directory (keyed by the
/// compressed file's size) so repeated runs do not pay for them again; the
/// corpus itself is never copied into the project.
pub fn corpus_image(corpus: &Path, rel: &str) -> PathBuf {
    let src = corpus.join(rel);
    let (stem, kind) = if let Some(s) = rel.strip_suffix(".gz") {
        (s, "gz")
    } else if let Some(s) = rel.strip_suffix(".bz2") {
        (s, "bz2")
    } else {
        return src;
    };
    let len = fs::metadata(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display())).len();
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("corpus-cache");
    let out = cache.join(format!("{stem}.{len}"));
    if out.is_file() {
        return out;
    }
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    let tmp = out.with_extension(format!("partial-{}-{:?}", std::process::id(), std::thread::current().id()));
    let file = fs::File::open(&src).unwrap();
    let mut reader: Box<dyn Read> = match kind {
        "gz" => Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file))),
        _ => Box::new(bzip2::read::BzDecoder::new(std::io::BufReader::new(file))),
    };
    let mut w = fs::File::create(&tmp).unwrap();
    std::io::copy(&mut reader, &mut w).unwrap_or_else(|e| panic!("decompressing {}: {e}", src.display()));
    drop(w);
    fs::rename(&tmp, &out).unwrap();
    out
}

/// SHA-256 of the disk's whole view, read in 4 MiB steps.
pub fn sha256_of(disk: &dyn VirtualDisk) -> String {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut off = 0u64;
    while off < disk.size() {
        let n = (disk.size() - off).min(buf.len() as u64) as usize;
        disk.read_at(&mut buf[..n], off).unwrap_or_else(|e| panic!("read at {off}: {e}"));
        h.update(&buf[..n]);
        off += n as u64;
    }
    hex(&h.finalize())
}

/// SHA-256 of a byte slice.
pub fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares a disk's view with a raw file byte for byte, naming the first
/// differing offset.
pub fn assert_same_as_raw(disk: &dyn VirtualDisk, raw: &Path) {
    let file = fs::File::open(raw).unwrap();
    let len = file.metadata().unwrap().len();
    assert_eq!(disk.size(), len, "virtual size vs {}", raw.display());
    let mut ours = vec![0u8; 4 << 20];
    let mut theirs = vec![0u8; 4 << 20];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(ours.len() as u64) as usize;
        disk.read_at(&mut ours[..n], off).unwrap_or_else(|e| panic!("read at {off}: {e}"));
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut theirs[..n], off).unwrap();
        if ours[..n] != theirs[..n] {
            let i = ours[..n].iter().zip(&theirs[..n]).position(|(a, b)| a != b).unwrap();
            panic!(
                "{}: byte {} differs: ours {:#04x}, expected {:#04x}",
                raw.display(),
                off + i as u64,
                ours[i],
                theirs[i]
            );
        }
        off += n as u64;
    }
}
pub mod build;
