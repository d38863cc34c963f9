//! Helpers shared by the integration tests: where the real-image corpus is,
//! whether qemu-img is available (and required), decompression with a cache,
//! and hashing of a disk's whole view.
#![allow(dead_code)]

pub mod fault_proxy;
pub mod intercept;
#[cfg(feature = "s3")]
pub mod s3;

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

/// Every file under `dir`, by its path relative to `dir`, with its bytes:
/// what a test compares to prove a store was (or was not) written.
pub fn files(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), fs::read(&p).unwrap());
            }
        }
    }
    out
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
        read_exact_at(&file, &mut theirs[..n], off);
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

/// Fills `buf` from `file` at `offset`, on any platform.
pub fn read_exact_at(file: &fs::File, buf: &mut [u8], offset: u64) {
    #[cfg(unix)]
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset).unwrap();
    #[cfg(windows)]
    {
        let mut done = 0;
        while done < buf.len() {
            let n = std::os::windows::fs::FileExt::seek_read(file, &mut buf[done..], offset + done as u64).unwrap();
            assert!(n > 0, "end of file at {}", offset + done as u64);
            done += n;
        }
    }
}

/// Copies the folder `from` to `to` (which must not exist), as `cp -r`
/// does, on any platform.
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir(to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Writes all of `buf` to `file` at `offset`, on any platform.
pub fn write_all_at(file: &fs::File, buf: &[u8], offset: u64) {
    #[cfg(unix)]
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset).unwrap();
    #[cfg(windows)]
    {
        let mut done = 0;
        while done < buf.len() {
            done += std::os::windows::fs::FileExt::seek_write(file, &buf[done..], offset + done as u64).unwrap();
        }
    }
}

/// The data ranges of a file: on Windows, the whole file (what follows
/// reads it all, only slower).
#[cfg(not(unix))]
pub fn file_data_ranges(path: &Path) -> Vec<(u64, u64)> {
    let len = fs::metadata(path).unwrap().len();
    if len == 0 { Vec::new() } else { vec![(0, len)] }
}

/// The data ranges of a (sparse) file, from SEEK_DATA/SEEK_HOLE: what the
/// file system says, independent of any image reader.
#[cfg(unix)]
pub fn file_data_ranges(path: &Path) -> Vec<(u64, u64)> {
    use std::os::unix::io::AsRawFd;
    let f = fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len() as i64;
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut pos = 0i64;
    while pos < len {
        // SAFETY: plain lseek on an open descriptor.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            break;
        }
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { len } else { hole };
        out.push((data as u64, hole as u64));
        pos = hole;
    }
    out
}

/// Checks a raw file against corpus.json's record of qemu's view: each listed
/// extent hashes the same, and every byte outside them is zero.
pub fn assert_raw_file_matches(raw: &Path, extents: &[(u64, u64, String)], size: u64) {
    let f = fs::File::open(raw).unwrap();
    assert_eq!(f.metadata().unwrap().len(), size, "{}: size", raw.display());
    for (off, len, sha) in extents {
        let mut buf = vec![0u8; *len as usize];
        read_exact_at(&f, &mut buf, *off);
        assert_eq!(&sha256(&buf), sha, "{}: bytes {off}..{}", raw.display(), off + len);
    }
    let inside = |a: u64, b: u64| extents.iter().any(|(o, l, _)| *o <= a && b <= o + l);
    let mut buf = vec![0u8; 1 << 20];
    for (start, end) in file_data_ranges(raw) {
        let mut off = start;
        while off < end {
            let n = (end - off).min(buf.len() as u64) as usize;
            read_exact_at(&f, &mut buf[..n], off);
            for (i, chunk) in buf[..n].chunks(4096).enumerate() {
                let at = off + i as u64 * 4096;
                if chunk.iter().any(|&b| b != 0) {
                    assert!(
                        inside(at, at + chunk.len() as u64),
                        "{}: non-zero bytes at {at} where qemu reads zeros",
                        raw.display()
                    );
                }
            }
            off += n as u64;
        }
    }
}

/// A VHDX's payload blocks as its BAT states them, parsed with raw offsets
/// (independent of the crate): (virtual offset, length, state, file offset).
pub fn vhdx_blocks(path: &Path) -> Vec<(u64, u64, u8, u64)> {
    let f = fs::File::open(path).unwrap();
    let read = |at: u64, len: usize| {
        let mut b = vec![0u8; len];
        read_exact_at(&f, &mut b, at);
        b
    };
    let u32at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    let u64at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    let regions = read(192 * 1024, 64 * 1024);
    let mut bat_at = 0;
    let mut meta_at = 0;
    for i in 0..u32at(&regions, 8) as usize {
        let e = &regions[16 + 32 * i..48 + 32 * i];
        match build::guid_text_from_mixed(&e[..16]).to_uppercase().as_str() {
            "2DC27766-F623-4200-9D64-115E9BFD4A08" => bat_at = u64at(e, 16),
            "8B7CA206-4790-4B9A-B8FE-575F050F886E" => meta_at = u64at(e, 16),
            _ => {}
        }
    }
    let meta = read(meta_at, 64 * 1024);
    let (mut block, mut size, mut sector) = (0u64, 0u64, 0u64);
    for i in 0..u16::from_le_bytes([meta[10], meta[11]]) as usize {
        let e = &meta[32 + 32 * i..64 + 32 * i];
        let item = read(meta_at + u32at(e, 16) as u64, 8);
        match build::guid_text_from_mixed(&e[..16]).to_uppercase().as_str() {
            "CAA16737-FA36-4D43-B3B6-33F0AA44E76B" => block = u32at(&item, 0) as u64,
            "2FA54224-CD1B-4876-B211-5DBED83BF4B8" => size = u64at(&item, 0),
            "8141BF1D-A96F-4709-BA47-F233A8FAAB5F" => sector = u32at(&item, 0) as u64,
            _ => {}
        }
    }
    let chunk_ratio = (1u64 << 23) * sector / block;
    let n = size.div_ceil(block);
    let bat = read(bat_at, ((n + n / chunk_ratio + 1) * 8) as usize);
    (0..n)
        .map(|b| {
            let e = u64at(&bat, ((b + b / chunk_ratio) * 8) as usize);
            (b * block, block.min(size - b * block), (e & 7) as u8, e & !0xFFFFF)
        })
        .collect()
}

/// Reads `len` bytes at `offset` of an image through qemu's own driver.
pub fn qemu_read(image: &Path, format: &str, offset: u64, len: u64, scratch: &Path) -> Vec<u8> {
    let out = scratch.join("qemu-slice.raw");
    let spec = format!(
        "driver=raw,offset={offset},size={len},file.driver={format},file.file.driver=file,file.file.filename={}",
        image.display()
    );
    run(Command::new("qemu-img").args(["convert", "--image-opts", &spec, "-O", "raw"]).arg(&out));
    let bytes = fs::read(&out).unwrap();
    let _ = fs::remove_file(&out);
    bytes
}

/// Every image `corpus.json` lists, with qemu's view of it.
pub fn corpus_manifest(corpus: &Path) -> Vec<serde_json::Value> {
    let text = fs::read_to_string(corpus.join("corpus.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["images"].as_array().unwrap().clone()
}

/// The ranges qemu found non-zero in one `corpus.json` image: offset,
/// length and the SHA-256 of their bytes.
pub fn data_extents(image: &serde_json::Value) -> Vec<(u64, u64, String)> {
    image["data_extents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e[0].as_u64().unwrap(), e[1].as_u64().unwrap(), e[2].as_str().unwrap().to_string()))
        .collect()
}

/// Deterministic non-repeating bytes (xorshift).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `value` changed by `f`: options structs are `#[non_exhaustive]`, so
/// tests set their fields on a default instead of using struct literals.
pub fn tweak<T>(mut value: T, f: impl FnOnce(&mut T)) -> T {
    f(&mut value);
    value
}

/// Store settings for tests: chunk and pack size, nothing else changed.
pub fn init_options(chunk_size: u32, pack_size: u64) -> vhdkit::store::InitOptions {
    tweak(vhdkit::store::InitOptions::default(), |o| {
        o.chunk_size = chunk_size;
        o.pack_size = pack_size;
    })
}

/// Export options with a block size.
pub fn block_size(bytes: u32) -> vhdkit::export::ExportOptions {
    tweak(vhdkit::export::ExportOptions::default(), |o| o.block_size = Some(bytes))
}

/// Export options for a differencing child of `parent`.
pub fn child_of(parent: &Path) -> vhdkit::export::ExportOptions {
    tweak(vhdkit::export::ExportOptions::default(), |o| o.parent = Some(parent.to_path_buf()))
}

/// The CLI binary (`examples/vhdkit`), built (or found up to date) once per
/// test binary, so a test never runs a stale tool.
pub fn cli() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test binary path");
            let dir = exe.parent().and_then(Path::parent).expect("target profile folder");
            let mut cargo = Command::new(env!("CARGO"));
            // Not the variables `cargo test` sets for this binary: ring's
            // build script names CARGO_MANIFEST_DIR, CARGO_PKG_* and OUT_DIR
            // in rerun-if-env-changed, so seeing them here would rebuild
            // ring and all above it, and the next `cargo test` again.
            for (key, _) in std::env::vars_os() {
                let key = key.to_string_lossy();
                if [
                    "CARGO_PKG_",
                    "CARGO_MANIFEST_",
                    "CARGO_CRATE_",
                    "CARGO_BIN_",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "OUT_DIR",
                ]
                .iter()
                .any(|p| key.starts_with(p))
                {
                    cargo.env_remove(&*key);
                }
            }
            let status = cargo
                .args(["build", "--example", "vhdkit", "--manifest-path"])
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
                .status()
                .expect("cargo build --example vhdkit");
            assert!(status.success(), "building the CLI failed");
            dir.join("examples").join("vhdkit")
        })
        .clone()
}

/// Where the store suite keeps its stores: a folder (the default), or, with
/// `VHDKIT_STORE_BACKEND=s3`, a fresh prefix on the test S3 server read
/// through a local cache (as `Store::open` of a URL does). With
/// `VHDKIT_STORE_ENCRYPT=1` every such store is encrypted (under
/// [`test_key`]).
pub fn init_store(dir: &Path, options: &vhdkit::store::InitOptions) -> vhdkit::store::Store {
    let options = &suite_options(options.clone());
    let store = if std::env::var("VHDKIT_STORE_BACKEND").as_deref() != Ok("s3") {
        vhdkit::store::Store::init(dir, options).unwrap()
    } else {
        init_s3_store(dir, options)
    };
    // The suite's encrypted run must really be encrypted, or it proves
    // nothing it claims to.
    assert_eq!(store.config().is_encrypted(), suite_encrypted() || options.encryption.is_some());
    store
}

#[cfg(feature = "s3")]
fn init_s3_store(dir: &Path, options: &vhdkit::store::InitOptions) -> vhdkit::store::Store {
    use vhdkit::store::{CachedBackend, Store};
    let s3 = s3::s3().expect("VHDKIT_STORE_BACKEND=s3 needs an S3 server (VHDKIT_S3_ENDPOINT or moto_server)");
    let name = dir.strip_prefix(env!("CARGO_TARGET_TMPDIR")).unwrap_or(dir).to_string_lossy().replace('/', "-");
    let url = s3.url(&name);
    let store = Store::init_backend(s3.backend(&url), options).unwrap();
    let cache = CachedBackend::new(s3.backend(&url), dir.join("cache").join(&store.config().store_id)).unwrap();
    Store::open_backend_with(std::sync::Arc::new(cache), &open_options()).unwrap()
}

#[cfg(not(feature = "s3"))]
fn init_s3_store(_dir: &Path, _options: &vhdkit::store::InitOptions) -> vhdkit::store::Store {
    panic!("VHDKIT_STORE_BACKEND=s3: these tests were built without the s3 feature")
}

/// Whether the store suite runs on encrypted stores (`VHDKIT_STORE_ENCRYPT=1`).
pub fn suite_encrypted() -> bool {
    std::env::var("VHDKIT_STORE_ENCRYPT").as_deref() == Ok("1")
}

/// The key of the tests' encrypted stores: a key file's 32 bytes (so no
/// Argon2id run per open).
pub fn test_key() -> vhdkit::store::StoreKey {
    vhdkit::store::StoreKey::key_file_bytes(vec![0x5e; 32]).unwrap()
}

/// `options` encrypted under [`test_key`].
pub fn encrypted(options: vhdkit::store::InitOptions) -> vhdkit::store::InitOptions {
    tweak(options, |o| o.encryption = Some(vhdkit::store::Encryption::new(test_key())))
}

/// `options` as the suite runs: encrypted with `VHDKIT_STORE_ENCRYPT=1`.
pub fn suite_options(options: vhdkit::store::InitOptions) -> vhdkit::store::InitOptions {
    if suite_encrypted() { encrypted(options) } else { options }
}

/// How the suite opens its stores: with [`test_key`] when encrypted.
pub fn open_options() -> vhdkit::store::OpenOptions {
    tweak(vhdkit::store::OpenOptions::default(), |o| o.key = suite_encrypted().then(test_key))
}

/// Open options with [`test_key`], whatever the suite's mode.
pub fn key_options() -> vhdkit::store::OpenOptions {
    tweak(vhdkit::store::OpenOptions::default(), |o| o.key = Some(test_key()))
}

/// Opens a suite store in a folder.
pub fn open_store(dir: &Path) -> vhdkit::store::Store {
    vhdkit::store::Store::open_with(dir, &open_options()).unwrap()
}

/// A small xorshift generator for test choices (seeded, repeatable).
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    /// The next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A value below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Noise with every fifth 64 KiB block zero: a disk with data and holes.
pub fn sparse_noise(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng::new(seed);
    let mut d = vec![0u8; len];
    for (i, chunk) in d.chunks_mut(64 * 1024).enumerate() {
        if i % 5 != 2 {
            chunk.iter_mut().for_each(|b| *b = r.next() as u8);
        }
    }
    d
}
