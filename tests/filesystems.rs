//! File systems inside disks and backups, against readers we did not
//! write: disks made by mke2fs, mkfs.vfat + mcopy, mkntfs + ntfs-3g,
//! partitioned by sgdisk and sfdisk, converted by qemu-img; every listing
//! and every file's bytes compared with debugfs, mtools and ntfs-3g's
//! ntfsls/ntfscat; the real Windows-made volumes of the corpus too.
//!
//! The tools come from Debian (e2fsprogs, dosfstools, mtools, ntfs-3g,
//! fdisk, gdisk). Without them the tests say SKIPPED, unless
//! `VHDKIT_REQUIRE_FS_TOOLS=1` (CI), where a missing tool fails.

#![cfg(unix)]

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use common::{noise, run};
use vhdkit::VirtualDisk;
use vhdkit::fs::{FileKind, FsKind, Scheme, Volume, partitions};

const TOOLS: [&str; 9] = ["mke2fs", "debugfs", "mkfs.vfat", "mcopy", "mdir", "mkntfs", "ntfsls", "ntfscat", "sfdisk"];

fn have_tools() -> bool {
    let missing: Vec<&str> = TOOLS
        .iter()
        .copied()
        .filter(|t| {
            !Command::new("sh").args(["-c", &format!("command -v {t}")]).output().is_ok_and(|o| o.status.success())
        })
        .collect();
    if missing.is_empty() && common::have_qemu() {
        return true;
    }
    assert!(
        std::env::var("VHDKIT_REQUIRE_FS_TOOLS").as_deref() != Ok("1"),
        "VHDKIT_REQUIRE_FS_TOOLS=1 but {missing:?} are missing (apt-get install e2fsprogs dosfstools mtools ntfs-3g fdisk)"
    );
    eprintln!("SKIPPED: {missing:?} not found; install e2fsprogs dosfstools mtools ntfs-3g fdisk");
    false
}

/// The files every test volume holds: small and empty files, names with
/// unicode, spaces and 150 characters, a 14-level tree, a 3 MiB file of
/// noise, a 6 MiB sparse file with data at its start, middle and end, and
/// a folder of 1,500 files.
fn source_tree(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("a.txt"), "hello\n").unwrap();
    std::fs::write(dir.join("empty"), "").unwrap();
    std::fs::write(dir.join("sub").join("héllo wörld ✓.txt"), "unicode\n").unwrap();
    let long = format!("{}.bin", "long-name-".repeat(15));
    std::fs::write(dir.join(long), noise(1, 300_000)).unwrap();
    let mut deep = dir.join("deep");
    for i in 0..14 {
        deep = deep.join(format!("level{i}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("leaf.txt"), "at the bottom\n").unwrap();
    std::fs::write(dir.join("big.bin"), noise(2, 3 << 20)).unwrap();
    // A folder large enough for an ext4 htree and several NTFS index records.
    std::fs::create_dir(dir.join("many")).unwrap();
    for i in 0..1500 {
        std::fs::write(dir.join("many").join(format!("file-{i:04}.txt")), format!("file {i}\n")).unwrap();
    }
    let sparse = std::fs::File::create(dir.join("sparse.img")).unwrap();
    sparse.set_len(6 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    for at in [0u64, 3 << 20, (6 << 20) - 4] {
        sparse.write_all_at(b"data", at).unwrap();
    }
}

/// 256 MiB, with 4 KiB of data at its start, middle and end: holes only.
fn huge_sparse(path: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(256 << 20).unwrap();
    for at in [0u64, 128 << 20, (256 << 20) - 4096] {
        f.write_all_at(&noise(at, 4096), at).unwrap();
    }
}

/// Whether a file's bytes are compared with the oracle's: all but most of
/// the 1,500 in /many (their listing is compared whole).
fn compared(path: &str) -> bool {
    !path.starts_with("/many/") || path.ends_with("00.txt")
}

struct Images {
    dir: PathBuf,
    /// Partition images, as the tools made them.
    ext: PathBuf,
    fat: PathBuf,
    ntfs: PathBuf,
    /// Whether ntfs-3g's FUSE mount filled the NTFS volume (hard link,
    /// compressed file, short valid data length), not ntfscp alone.
    fused: bool,
}

/// Makes the three volumes once per test run.
fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let dir = common::scratch("fs-images");
        let src = dir.join("src");
        source_tree(&src);
        // ext4 with a hard link, a symbolic link and a 256 MiB sparse file
        // (on a 24 MiB volume) besides.
        std::fs::hard_link(src.join("a.txt"), src.join("hard.txt")).unwrap();
        std::os::unix::fs::symlink("sub/héllo wörld ✓.txt", src.join("link")).unwrap();
        huge_sparse(&src.join("huge-sparse.img"));
        let ext = dir.join("ext.img");
        run(Command::new("mke2fs")
            .args(["-q", "-t", "ext4", "-N", "4096", "-L", "linuxvol", "-d"])
            .arg(&src)
            .arg("-F")
            .arg(&ext)
            .arg("24M"));
        std::fs::remove_file(src.join("link")).unwrap();
        std::fs::remove_file(src.join("hard.txt")).unwrap();
        std::fs::remove_file(src.join("huge-sparse.img")).unwrap();

        let fat = dir.join("fat.img");
        run(Command::new("mkfs.vfat").args(["-C", "-n", "FATVOL"]).arg(&fat).arg("24576"));
        let mut mcopy = Command::new("mcopy");
        mcopy.args(["-s", "-m", "-i"]).arg(&fat);
        for e in std::fs::read_dir(&src).unwrap() {
            let path = e.unwrap().path();
            if !path.ends_with("many") {
                mcopy.arg(path);
            }
        }
        run(mcopy.arg("::/"));
        // mcopy takes time quadratic in a folder's entries (two minutes for
        // 1,500), so FAT's /many holds the first 200.
        run(Command::new("mmd").arg("-i").arg(&fat).arg("::/many"));
        let mut mcopy = Command::new("mcopy");
        mcopy.args(["-m", "-i"]).arg(&fat);
        for i in 0..200 {
            mcopy.arg(src.join("many").join(format!("file-{i:04}.txt")));
        }
        run(mcopy.arg("::/many/"));

        let ntfs = dir.join("ntfs.img");
        std::fs::File::create(&ntfs).unwrap().set_len(24 << 20).unwrap();
        run(Command::new("mkntfs").args(["-F", "-f", "-q", "-L", "winvol"]).arg(&ntfs));
        let fused = fill_ntfs(&ntfs, &src, &dir.join("mnt"));
        Images { dir, ext, fat, ntfs, fused }
    })
}

/// Copies `src` into the NTFS image through ntfs-3g's FUSE mount (as root),
/// with a hard link and an alternate data stream; where FUSE cannot mount,
/// copies the top files with ntfscp alone.
fn fill_ntfs(image: &Path, src: &Path, mnt: &Path) -> bool {
    std::fs::create_dir_all(mnt).unwrap();
    let mounted = Command::new("ntfs-3g")
        .args(["-o", "streams_interface=xattr,compression"])
        .arg(image)
        .arg(mnt)
        .status()
        .is_ok_and(|s| s.success());
    if mounted {
        run(Command::new("cp").arg("-a").arg(format!("{}/.", src.display())).arg(mnt));
        std::fs::hard_link(mnt.join("a.txt"), mnt.join("hard.txt")).unwrap();
        huge_sparse(&mnt.join("huge-sparse.img"));
        run(Command::new("python3").args(["-c", "import os,sys; os.setxattr(sys.argv[1], 'user.Zone.Identifier', b'[ZoneTransfer]\\r\\nZoneId=3\\r\\n')"]).arg(mnt.join("a.txt")));
        // A folder with NTFS compression on, and a file compressed in it.
        let script = "import os,sys; d=sys.argv[1]; os.mkdir(d); os.setxattr(d, 'system.ntfs_attrib_be', (0x10|0x800).to_bytes(4,'big')); open(d+'/packed.txt','w').write('compress me please ' * 20000)";
        run(Command::new("python3").args(["-c", script]).arg(mnt.join("compressed")));
        // 70,000 bytes written, then extended to 3 MiB: ntfs-3g leaves the
        // valid data length at 70,000.
        let mut pre = noise(77, 70_000);
        std::fs::write(mnt.join("prealloc.bin"), &pre).unwrap();
        std::fs::OpenOptions::new().write(true).open(mnt.join("prealloc.bin")).unwrap().set_len(3 << 20).unwrap();
        pre.clear();
        run(Command::new("umount").arg(mnt));
        stale_past_valid_length(image);
    } else {
        eprintln!("NOTE: ntfs-3g cannot mount here; filling the NTFS volume with ntfscp (top-level files only)");
        for name in ["a.txt", "empty", "big.bin", "sparse.img"] {
            run(Command::new("ntfscp").arg("-q").arg(image).arg(src.join(name)).arg(name));
        }
        run(Command::new("ntfscp")
            .args(["-q", "-N", "Zone.Identifier"])
            .arg(image)
            .arg(src.join("a.txt"))
            .arg("a.txt"));
    }
    mounted
}

/// Writes 0xEE into the clusters of /prealloc.bin past its valid data
/// length (70,000) up to the end of its allocated run: bytes a reader must
/// return as zeros, as Windows and ntfs-3g do.
fn stale_past_valid_length(image: &Path) {
    let runs = run(Command::new("ntfscluster").args(["-F", "/prealloc.bin"]).arg(image));
    let after = runs.split("0x80 - non-resident").nth(1).expect("a non-resident $DATA");
    let first = after.lines().find(|l| l.split_whitespace().next() == Some("0")).expect("the run at VCN 0");
    let f: Vec<u64> = first.split_whitespace().map(|x| x.parse().unwrap()).collect();
    let boot = std::fs::read(image).unwrap();
    let cluster = u64::from(u16::from_le_bytes([boot[11], boot[12]])) * u64::from(boot[13]);
    let (lcn, clusters) = (f[1], f[2]);
    let start = lcn * cluster + 70_000;
    let end = (lcn + clusters) * cluster;
    assert!(end > start, "the run ends before the valid data length");
    let file = std::fs::OpenOptions::new().write(true).open(image).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &vec![0xEE; (end - start) as usize], start).unwrap();
}

/// A raw disk with these partition images written where `sfdisk` put them
/// (its script; 512-byte sectors), and the offsets sfdisk reports.
fn partitioned(name: &str, script: &str, size: u64, parts: &[(usize, &Path)]) -> (PathBuf, Vec<(u32, u64, u64)>) {
    let sector = 512;
    let raw = images().dir.join(format!("{name}.raw"));
    let _ = std::fs::remove_file(&raw);
    std::fs::File::create(&raw).unwrap().set_len(size).unwrap();
    let mut child = Command::new("sfdisk")
        .arg("-q")
        .arg(&raw)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk failed on {script}");
    let json = run(Command::new("sfdisk").arg("-J").arg(&raw));
    let table: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut found = Vec::new();
    for p in table["partitiontable"]["partitions"].as_array().unwrap() {
        let node = p["node"].as_str().unwrap();
        let number: u32 = node.trim_start_matches(raw.to_str().unwrap()).parse().unwrap();
        found.push((number, p["start"].as_u64().unwrap() * sector, p["size"].as_u64().unwrap() * sector));
    }
    let file = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
    use std::os::unix::fs::FileExt;
    for (number, image) in parts {
        let (_, offset, len) = found.iter().find(|p| p.0 == *number as u32).copied().unwrap();
        let bytes = std::fs::read(image).unwrap();
        assert!(bytes.len() as u64 <= len);
        file.write_all_at(&bytes, offset).unwrap();
    }
    (raw, found)
}

/// A raw disk, its VHDX and the partitions (number, offset, length).
type GptDisk = (PathBuf, PathBuf, Vec<(u32, u64, u64)>);

/// The GPT disk of the three volumes, as a dynamic VHDX made by qemu-img.
fn gpt_disk() -> &'static GptDisk {
    static DISK: OnceLock<GptDisk> = OnceLock::new();
    DISK.get_or_init(|| {
        let i = images();
        let script = "label: gpt\n\
            size=24MiB, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, name=\"FAT DATA\"\n\
            size=24MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=linux\n\
            size=24MiB, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, name=windows\n";
        let (raw, found) = partitioned("gpt", script, 80 << 20, &[(1, &i.fat), (2, &i.ext), (3, &i.ntfs)]);
        let vhdx = i.dir.join("gpt.vhdx");
        run(Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "vhdx"]).arg(&raw).arg(&vhdx));
        (raw, vhdx, found)
    })
}

fn open(path: &Path) -> Arc<dyn VirtualDisk> {
    Arc::new(vhdkit::open(path).unwrap())
}

/// Every path under `/` with its metadata, through our reader.
fn tree(volume: &Volume) -> BTreeMap<String, vhdkit::fs::Metadata> {
    let mut out = BTreeMap::new();
    vhdkit::fs::walk(
        volume,
        "",
        &vhdkit::CancelToken::new(),
        &mut |path, entry| {
            out.insert(path.to_string(), entry.metadata.clone());
            Ok(())
        },
        &mut |path, problem| panic!("{path}: {problem}"),
    )
    .unwrap();
    out
}

/// Equal bytes, or a failure naming the first difference (not megabytes of
/// both).
#[track_caller]
fn assert_same(ours: &[u8], theirs: &[u8], what: &str) {
    if ours != theirs {
        let at = ours.iter().zip(theirs).position(|(a, b)| a != b).unwrap_or(ours.len().min(theirs.len()));
        panic!("{what}: {} bytes here, {} from the oracle, first difference at byte {at}", ours.len(), theirs.len());
    }
}

fn read_all(volume: &Volume, path: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    volume.open_file(path).unwrap().read_to_end(&mut bytes).unwrap();
    bytes
}

#[test]
fn gpt_partitions_are_where_sfdisk_put_them_and_the_backup_stands_in_for_a_damaged_primary() {
    if !have_tools() {
        return;
    }
    let (raw, vhdx, found) = gpt_disk();
    let table = partitions(&*open(vhdx)).unwrap();
    assert_eq!(table.scheme, Scheme::Gpt);
    let ours: Vec<_> = table.partitions.iter().map(|p| (p.number, p.offset, p.length)).collect();
    assert_eq!(&ours, found);
    let kinds: Vec<_> = table.partitions.iter().map(|p| p.filesystem).collect();
    assert_eq!(kinds, [Some(FsKind::Fat { bits: 16 }), Some(FsKind::Ext { version: 4 }), Some(FsKind::Ntfs)]);
    assert_eq!(table.partitions[0].name.as_deref(), Some("FAT DATA"));
    assert!(table.warnings.is_empty(), "{:?}", table.warnings);

    // Zero the primary header: the backup at the disk's end is used, and said.
    let damaged = images().dir.join("gpt-damaged.raw");
    std::fs::copy(raw, &damaged).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&damaged).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[0u8; 512], 512).unwrap();
    let disk: Arc<dyn VirtualDisk> = Arc::new(vhdkit::OpenOptions::default().open_raw(&damaged).unwrap());
    let table = partitions(&*disk).unwrap();
    assert_eq!(table.partitions.iter().map(|p| (p.number, p.offset, p.length)).collect::<Vec<_>>(), *found);
    assert!(table.warnings.iter().any(|w| w.contains("primary GPT") && w.contains("backup")), "{:?}", table.warnings);
    let volume = Volume::open_spec(disk, Some("linux")).unwrap();
    assert_eq!(read_all(&volume, "/a.txt"), b"hello\n");
}

/// debugfs's `ls -p` of `dir`: name → (mode, size).
fn debugfs_ls(image: &Path, dir: &str) -> BTreeMap<String, (u32, u64)> {
    let out = run(Command::new("debugfs").arg("-R").arg(format!("ls -p \"{dir}\"")).arg(image));
    let mut m = BTreeMap::new();
    for line in out.lines().filter(|l| l.starts_with('/')) {
        // /inode/mode/uid/gid/name/size/
        let f: Vec<&str> = line.split('/').collect();
        let name = f[5..f.len() - 2].join("/");
        if name == "." || name == ".." || f[1] == "0" {
            continue; // ".", "..", and the empty slots of lost+found
        }
        m.insert(name, (u32::from_str_radix(f[2], 8).unwrap(), f[f.len() - 2].parse().unwrap_or(0)));
    }
    m
}

#[test]
fn ext4_lists_and_reads_as_debugfs_does() {
    if !have_tools() {
        return;
    }
    let (_, vhdx, _) = gpt_disk();
    let volume = Volume::open_spec(open(vhdx), Some("2")).unwrap();
    assert_eq!(volume.kind(), FsKind::Ext { version: 4 });
    assert_eq!(volume.label().as_deref(), Some("linuxvol"));
    let ours = tree(&volume);
    let image = &images().ext;
    let mut dirs = vec![String::new()];
    let mut files = 0;
    while let Some(dir) = dirs.pop() {
        let theirs = debugfs_ls(image, if dir.is_empty() { "/" } else { &dir });
        let listed: Vec<String> =
            volume.read_dir(if dir.is_empty() { "/" } else { &dir }).unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(listed, theirs.keys().cloned().collect::<Vec<_>>(), "folder {dir}");
        for (name, (mode, size)) in theirs {
            let path = format!("{dir}/{name}");
            let meta = &ours[&path];
            assert_eq!(meta.mode, Some(mode), "{path}");
            match meta.kind {
                FileKind::Dir => dirs.push(path),
                FileKind::File if !compared(&path) => assert_eq!(meta.len, size, "{path}"),
                FileKind::File => {
                    assert_eq!(meta.len, size, "{path}");
                    let cat =
                        Command::new("debugfs").arg("-R").arg(format!("cat \"{path}\"")).arg(image).output().unwrap();
                    assert_same(&read_all(&volume, &path), &cat.stdout, &path);
                    files += 1;
                }
                FileKind::Symlink => assert_eq!(volume.read_link(&path).unwrap(), "sub/héllo wörld ✓.txt"),
                FileKind::Other => panic!("{path}: unexpected kind"),
            }
        }
    }
    assert!(files >= 8, "only {files} files compared");
}

#[test]
fn fat_lists_and_reads_as_mtools_do() {
    if !have_tools() {
        return;
    }
    let (_, vhdx, _) = gpt_disk();
    let volume = Volume::open_spec(open(vhdx), Some("fatvol")).unwrap();
    assert_eq!(volume.partition().number, 1);
    let ours = tree(&volume);
    let image = &images().fat;
    let listing = run(Command::new("mdir").args(["-b", "-/", "-i"]).arg(image).arg("::/"));
    let theirs: Vec<String> =
        listing.lines().map(|l| l.trim_start_matches("::").trim_end_matches('/').to_string()).collect();
    let mut theirs_sorted = theirs.clone();
    theirs_sorted.sort();
    assert_eq!(ours.keys().cloned().collect::<Vec<_>>(), theirs_sorted);
    let mut files = 0;
    for (path, meta) in &ours {
        if meta.kind == FileKind::File && compared(path) {
            let out = Command::new("mtype").arg("-i").arg(image).arg(format!("::{path}")).output().unwrap();
            assert_same(&read_all(&volume, path), &out.stdout, path);
            assert_eq!(meta.len, out.stdout.len() as u64);
            files += 1;
        }
    }
    assert!(files >= 7, "only {files} files compared");
    // Lookups ignore case, and find the 8.3 name.
    assert_eq!(read_all(&volume, "/SUB/HÉLLO WÖRLD ✓.TXT"), b"unicode\n");
    assert_eq!(read_all(&volume, "/A.TXT"), b"hello\n");
}

/// ntfsls -l of `dir`: name → size.
fn ntfsls(image: &Path, dir: &str) -> BTreeMap<String, u64> {
    let out = run(Command::new("ntfsls").args(["-f", "-l", "-p", dir]).arg(image));
    let mut m = BTreeMap::new();
    for line in out.lines() {
        // size Mon DD HH:MM YYYY name (the name may hold spaces)
        let size = line.split_whitespace().next().unwrap().parse().unwrap();
        let mut rest = line;
        for _ in 0..5 {
            rest = rest.trim_start();
            rest = &rest[rest.find(' ').unwrap_or(rest.len())..];
        }
        let name = rest.strip_prefix(' ').unwrap_or(rest).to_string();
        if name == "." || name == ".." {
            continue;
        }
        m.insert(name, size);
    }
    m
}

#[test]
fn ntfs_lists_and_reads_as_ntfs_3g_does() {
    if !have_tools() {
        return;
    }
    let (_, vhdx, _) = gpt_disk();
    let volume = Volume::open_spec(open(vhdx), Some("windows")).unwrap();
    assert_eq!((volume.kind(), volume.label().as_deref()), (FsKind::Ntfs, Some("winvol")));
    let ours = tree(&volume);
    let image = &images().ntfs;
    let mut dirs = vec![String::new()];
    let mut files = 0;
    let mut compressed = 0;
    while let Some(dir) = dirs.pop() {
        let shown = if dir.is_empty() { "/" } else { &dir };
        let theirs = ntfsls(image, shown);
        let listed: Vec<String> = volume.read_dir(shown).unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(listed, theirs.keys().cloned().collect::<Vec<_>>(), "folder {shown}");
        for (name, size) in theirs {
            let path = format!("{dir}/{name}");
            let meta = &ours[&path];
            if meta.kind == FileKind::Dir {
                dirs.push(path);
                continue;
            }
            assert_eq!(meta.len, size, "{path}");
            if let Some(what) = &meta.unsupported {
                // ntfs-3g decompresses it; we refuse it by name rather than return its raw clusters.
                assert_eq!(what, "NTFS compression", "{path}");
                let e = volume.open_file(&path).err().expect("a compressed file must not open");
                assert!(matches!(&e, vhdkit::fs::FsError::Unsupported { path: p, .. } if *p == path), "{e}");
                assert_eq!(vhdkit::Error::from(e).kind(), vhdkit::ErrorKind::Unsupported);
                compressed += 1;
                continue;
            }
            if !compared(&path) {
                continue;
            }
            let cat = Command::new("ntfscat").arg("-f").arg(image).arg(&path).output().unwrap();
            assert_same(&read_all(&volume, &path), &cat.stdout, &path);
            files += 1;
        }
    }
    assert!(files >= 4, "only {files} files compared");
    // Where FUSE filled the volume these files must be there, so the
    // checks below cannot pass by their absence.
    let fused = images().fused;
    for made in ["/compressed/packed.txt", "/prealloc.bin", "/hard.txt"] {
        assert_eq!(ours.contains_key(made), fused, "{made}");
    }
    assert_eq!(compressed, i32::from(fused));
    // Hard links are one record; the stream reads as ntfscat reads it;
    // names are found without case.
    let a = volume.metadata("/a.txt").unwrap();
    assert_eq!(a.streams.len(), 1, "{a:?}");
    let stream = format!("/a.txt:{}", a.streams[0].name);
    let cat = Command::new("ntfscat").args(["-f", "-n", &a.streams[0].name]).arg(image).arg("/a.txt").output().unwrap();
    assert_eq!(read_all(&volume, &stream), cat.stdout);
    assert!(cat.stdout.starts_with(b"[ZoneTransfer]"));
    if ours.contains_key("/prealloc.bin") {
        // Past the valid data length: zeros, though the cluster holds 0xEE.
        let bytes = read_all(&volume, "/prealloc.bin");
        assert_eq!(bytes.len(), 3 << 20);
        assert_eq!(&bytes[..70_000], &noise(77, 70_000)[..]);
        assert!(bytes[70_000..].iter().all(|&b| b == 0), "stale bytes past the valid data length");
    }
    if fused {
        let hard = volume.metadata("/HARD.TXT").unwrap();
        assert_eq!((hard.id, hard.links), (a.id, Some(2)));
    }
    assert!(matches!(volume.open_file("/no/such").err(), Some(vhdkit::fs::FsError::NotFound { .. })));
}

#[test]
fn backups_read_as_their_source_and_each_keeps_its_own_version() {
    if !have_tools() {
        return;
    }
    let (raw, vhdx, _) = gpt_disk();
    let dir = common::scratch("fs-store");
    let store = common::init_store(&dir.join("store"), &common::init_options(64 * 1024, 4 << 20));
    let first = store.backup(&*open(vhdx), &vhdkit::store::BackupOptions::new("vm")).unwrap();

    // Change /a.txt on the ext4 partition, as a second day's disk.
    let changed = dir.join("changed.raw");
    std::fs::copy(raw, &changed).unwrap();
    let ext_copy = dir.join("ext2.img");
    std::fs::copy(&images().ext, &ext_copy).unwrap();
    std::fs::write(dir.join("new.txt"), "changed on day two\n").unwrap();
    run(Command::new("debugfs").args(["-w", "-R", "rm /a.txt"]).arg(&ext_copy));
    run(Command::new("debugfs")
        .arg("-w")
        .arg("-R")
        .arg(format!("write {} /a.txt", dir.join("new.txt").display()))
        .arg(&ext_copy));
    let offset = gpt_disk().2[1].1;
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::OpenOptions::new().write(true).open(&changed).unwrap(),
        &std::fs::read(&ext_copy).unwrap(),
        offset,
    )
    .unwrap();
    let changed_disk: Arc<dyn VirtualDisk> = Arc::new(vhdkit::OpenOptions::default().open_raw(&changed).unwrap());
    let second = store.backup(&*changed_disk, &vhdkit::store::BackupOptions::new("vm")).unwrap();
    assert!(second.parent.is_some(), "the second backup should be incremental");

    let one: Arc<dyn VirtualDisk> = Arc::new(store.reader(first.id.as_str()).unwrap());
    let two: Arc<dyn VirtualDisk> = Arc::new(store.reader(second.id.as_str()).unwrap());
    let (v1, v2) =
        (Volume::open_spec(one.clone(), Some("2")).unwrap(), Volume::open_spec(two.clone(), Some("2")).unwrap());
    assert_eq!(read_all(&v1, "/a.txt"), b"hello\n");
    assert_eq!(read_all(&v2, "/a.txt"), b"changed on day two\n");
    let image = Volume::open_spec(open(vhdx), Some("3")).unwrap();
    let backed = Volume::open_spec(one.clone(), Some("windows")).unwrap();
    assert_eq!(tree(&backed), tree(&image));
    assert_same(&read_all(&backed, "/big.bin"), &read_all(&image, "/big.bin"), "/big.bin");

    // Listing a folder of the backup reads metadata, not the disk.
    let fresh = Volume::open_spec(Arc::new(store.reader(first.id.as_str()).unwrap()), Some("3")).unwrap();
    fresh.read_dir("/sub").unwrap();
    let (bytes, _) = fresh.disk_traffic();
    assert!(bytes < 4 << 20, "listing read {bytes} bytes of a {} byte partition", fresh.partition().length);

    // The restore test: every file of the first backup equals the source;
    // the second differs from it in exactly /a.txt.
    let mut options = vhdkit::fs::CheckOptions::default();
    options.against = Some(open(vhdx));
    let reports = vhdkit::fs::check_disk(one, &options).unwrap();
    assert_eq!(reports.len(), 3);
    for r in &reports {
        assert!(r.ok(), "{r:?}");
        assert!(r.files >= 7 && r.files_read + r.unsupported.len() as u64 == r.files, "{r:?}");
    }
    let reports = vhdkit::fs::check_disk(two, &options).unwrap();
    let problems: Vec<_> =
        reports.iter().flat_map(|r| r.problems.iter().map(|p| (r.partition, p.path.clone()))).collect();
    assert_eq!(problems, [(2, "/a.txt".to_string())], "{reports:?}");
}

#[test]
fn the_cli_lists_reads_gets_finds_and_verifies() {
    if !have_tools() {
        return;
    }
    let (_, vhdx, _) = gpt_disk();
    let cli = common::cli();
    let dir = common::scratch("fs-cli");
    let ls = run(Command::new(&cli).args(["fs", "ls"]).arg(vhdx).args(["linux:/sub", "--json"]));
    let entries: serde_json::Value = serde_json::from_str(&ls).unwrap();
    assert_eq!(entries[0]["name"], "héllo wörld ✓.txt");
    let out = Command::new(&cli).args(["fs", "cat"]).arg(vhdx).arg("3:/big.bin").output().unwrap();
    assert_eq!(out.stdout, std::fs::read(images().dir.join("src/big.bin")).unwrap());
    // Several file systems and no PART: a usage error that lists them.
    let out = Command::new(&cli).args(["fs", "ls"]).arg(vhdx).arg("/").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"windows\" (NTFS)"));
    let found = run(Command::new(&cli).args(["fs", "find"]).arg(vhdx).args(["1:/", "--name", "LEAF.*"]));
    assert_eq!(
        found.trim(),
        "/deep/level0/level1/level2/level3/level4/level5/level6/level7/level8/level9/level10/level11/level12/level13/leaf.txt"
    );

    let to = dir.join("out");
    run(Command::new(&cli)
        .args(["fs", "get"])
        .arg(vhdx)
        .args(["2:/deep", "2:/sparse.img", "2:/link", "--to"])
        .arg(&to));
    let theirs = common::files(&images().dir.join("src/deep"));
    let ours = common::files(&to.join("deep"));
    assert_eq!(ours, theirs);
    assert_eq!(
        std::fs::read(to.join("sparse.img")).unwrap(),
        std::fs::read(images().dir.join("src/sparse.img")).unwrap()
    );
    assert_eq!(std::fs::read_link(to.join("link")).unwrap(), Path::new("sub/héllo wörld ✓.txt"));
    // Never over an existing file.
    let again =
        Command::new(&cli).args(["fs", "get"]).arg(vhdx).args(["2:/sparse.img", "--to"]).arg(&to).output().unwrap();
    assert_eq!(again.status.code(), Some(1));

    let store = dir.join("store");
    run(Command::new(&cli).args(["store", "init"]).arg(&store));
    run(Command::new(&cli).arg("backup").arg(&store).arg(vhdx).args(["--name", "vm"]));
    let verify = run(Command::new(&cli)
        .arg("verify")
        .arg(&store)
        .args(["vm", "--filesystems", "--json", "--against"])
        .arg(vhdx));
    let report: serde_json::Value = serde_json::from_str(&verify).unwrap();
    assert_eq!(report["ok"], true, "{verify}");
    assert_eq!(report["partitions"].as_array().unwrap().len(), 3);
    let log = run(Command::new(&cli).arg("log").arg(&store).arg("--json"));
    let log: serde_json::Value = serde_json::from_str(&log).unwrap();
    let entry = log
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["op"] == "verify-filesystems")
        .expect("verify-filesystems in the job log");
    assert_eq!(entry["report"]["ok"], true);
    assert_eq!(entry["report"]["partitions"].as_array().unwrap().len(), 3);
    let ls = run(Command::new(&cli).args(["fs", "ls"]).arg(&store).args(["vm", "fatvol:/"]));
    assert!(ls.lines().any(|l| l == "big.bin"), "{ls}");
}

/// A partition of a corpus image as qemu reads it, in a file the oracles
/// can open.
fn qemu_partition(image: &Path, format: &str, offset: u64, len: u64, name: &str) -> PathBuf {
    let dir = common::scratch(&format!("fs-corpus-{name}"));
    let bytes = common::qemu_read(image, format, offset, len, &dir);
    let out = dir.join("part.img");
    std::fs::write(&out, bytes).unwrap();
    out
}

#[test]
fn windows_made_ntfs_fat32_and_fat16_read_as_ntfs_3g_and_mtools_read_them() {
    let Some(corpus) = common::corpus() else { return };
    if !have_tools() {
        return;
    }
    // Windows 10's "Add files & folders" disk: GPT, FAT32, NTFS, FAT16.
    let image = common::corpus_image(&corpus, "vhd/node-vhd/dynamic-2016.vhd.gz");
    let disk = open(&image);
    let table = partitions(&*disk).unwrap();
    let got: Vec<_> = table.partitions.iter().map(|p| (p.number, p.offset, p.length, p.filesystem)).collect();
    assert_eq!(
        got,
        [
            (1, 17408, 33554432, None),
            (2, 33619968, 209715200, Some(FsKind::Fat { bits: 32 })),
            (3, 243335168, 209715200, Some(FsKind::Ntfs)),
            (4, 453050368, 209715200, Some(FsKind::Fat { bits: 16 })),
        ]
    );
    assert_eq!(table.partitions[0].type_name, Some("Microsoft reserved"));

    for (number, label) in [(2, "32BIT FAT"), (4, "16BIT FAT")] {
        let p = &table.partitions[number - 1];
        let part = qemu_partition(&image, "vpc", p.offset, p.length, &format!("fat{number}"));
        let volume = Volume::open(disk.clone(), p).unwrap();
        assert_eq!(volume.label().as_deref(), Some(label));
        let ours = tree(&volume);
        let listing = run(Command::new("mdir").args(["-b", "-/", "-a", "-i"]).arg(&part).arg("::/"));
        // mdir shows an 8.3 name without a long one with its dot as a space.
        let mut theirs: Vec<String> = listing
            .lines()
            .map(|l| l.trim_start_matches("::").trim_end_matches('/').replace("$RECYCLE BIN", "$RECYCLE.BIN"))
            .collect();
        theirs.sort();
        assert_eq!(ours.keys().cloned().collect::<Vec<_>>(), theirs, "partition {number}");
        for (path, meta) in &ours {
            if meta.kind == FileKind::File {
                let out = Command::new("mtype").arg("-i").arg(&part).arg(format!("::{path}")).output().unwrap();
                assert!(out.status.success(), "mtype {path}");
                assert_same(&read_all(&volume, path), &out.stdout, &format!("partition {number}: {path}"));
            }
        }
        assert!(
            String::from_utf8(read_all(&volume, "/readme.TXT")).unwrap().starts_with("This is a test file on an FAT")
        );
    }

    let p = &table.partitions[2];
    let part = qemu_partition(&image, "vpc", p.offset, p.length, "ntfs");
    let volume = Volume::open(disk.clone(), p).unwrap();
    assert_eq!(volume.label().as_deref(), Some("Win10 NTFS"));
    let ours = tree(&volume);
    let listing = run(Command::new("ntfsls").args(["-f", "-a", "-R", "-p", "/"]).arg(&part));
    // ntfsls -R prints each folder's entries under a "/path:" heading.
    let mut theirs = Vec::new();
    let mut dir = String::new();
    for line in listing.lines() {
        if let Some(d) = line.strip_suffix(':').filter(|d| d.starts_with('/')) {
            dir = d.trim_end_matches('/').to_string();
        } else if !line.is_empty()
            && line != "."
            && line != ".."
            && !(dir.is_empty() && line.starts_with('$') && !ours.contains_key(&format!("/{line}")))
        {
            theirs.push(format!("{dir}/{line}"));
        }
    }
    theirs.sort();
    assert_eq!(ours.keys().cloned().collect::<Vec<_>>(), theirs);
    let mut files = 0;
    for (path, meta) in &ours {
        if meta.kind == FileKind::File {
            let cat = Command::new("ntfscat").arg("-f").arg(&part).arg(path).output().unwrap();
            assert!(cat.status.success(), "ntfscat {path}");
            assert_same(&read_all(&volume, path), &cat.stdout, path);
            files += 1;
        }
    }
    assert_eq!(files, 4);
}

#[test]
fn ext2_disks_of_the_corpus_read_as_debugfs_reads_them() {
    let Some(corpus) = common::corpus() else { return };
    if !have_tools() {
        return;
    }
    for rel in ["vhd/dfvfs/ext2.vhd", "vhd/other/sleuthkit_image.vhd"] {
        let image = corpus.join(rel);
        let disk = open(&image);
        let volume = Volume::open_spec(disk.clone(), None).unwrap();
        assert_eq!((volume.partition().number, volume.kind()), (0, FsKind::Ext { version: 2 }), "{rel}");
        let part = qemu_partition(&image, "vpc", 0, disk.size(), "ext2");
        let ours = tree(&volume);
        let mut dirs = vec![String::new()];
        let mut seen = 0;
        while let Some(dir) = dirs.pop() {
            let theirs = debugfs_ls(&part, if dir.is_empty() { "/" } else { &dir });
            for (name, (mode, size)) in theirs {
                let path = format!("{dir}/{name}");
                let meta = ours.get(&path).unwrap_or_else(|| panic!("{rel}: {path} missing"));
                assert_eq!(meta.mode, Some(mode), "{rel}: {path}");
                seen += 1;
                match meta.kind {
                    FileKind::Dir => dirs.push(path),
                    FileKind::File => {
                        assert_eq!(meta.len, size);
                        let cat = Command::new("debugfs")
                            .arg("-R")
                            .arg(format!("cat \"{path}\""))
                            .arg(&part)
                            .output()
                            .unwrap();
                        assert_same(&read_all(&volume, &path), &cat.stdout, &format!("{rel}: {path}"));
                    }
                    _ => assert_eq!(volume.read_link(&path).unwrap(), "a_directory/another_file"),
                }
            }
        }
        assert_eq!(seen, ours.len(), "{rel}");
        assert!(String::from_utf8(read_all(&volume, "/passwords.txt")).unwrap().starts_with("place,user,password"));
    }
}

#[test]
fn a_logical_partition_in_an_mbr_extended_partition_is_number_five() {
    if !have_tools() {
        return;
    }
    let i = images();
    let script = "label: dos\nsize=24MiB, type=6\ntype=f\nsize=24MiB, type=83\nsize=24MiB, type=7\n";
    let (raw, found) = partitioned("mbr", script, 90 << 20, &[(1, &i.fat), (5, &i.ext), (6, &i.ntfs)]);
    let vhd = i.dir.join("mbr.vhd");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic"])
        .arg(&raw)
        .arg(&vhd));
    let disk = open(&vhd);
    let table = partitions(&*disk).unwrap();
    assert_eq!(table.scheme, Scheme::Mbr);
    let ours: Vec<_> = table.partitions.iter().map(|p| (p.number, p.offset, p.length)).collect();
    // sfdisk lists the extended container (2) too; it holds no file system.
    let theirs: Vec<_> = found.iter().copied().filter(|p| p.0 != 2).collect();
    assert_eq!(ours, theirs);
    assert!(table.partitions[1].logical && table.partitions[2].logical);
    assert_eq!(read_all(&Volume::open_spec(disk.clone(), Some("5")).unwrap(), "/a.txt"), b"hello\n");
    assert_same(&read_all(&Volume::open_spec(disk, Some("6")).unwrap(), "/big.bin"), &noise(2, 3 << 20), "6:/big.bin");
}

#[test]
fn a_vhdx_of_4096_byte_sectors_counts_its_gpt_in_4096_byte_sectors() {
    if !have_tools() {
        return;
    }
    // sfdisk partitions a loop device of 4096-byte sectors (Debian 12's
    // sfdisk has no --sector-size); the VHDX around it is built from
    // [MS-VHDX] by the tests' own writer, since qemu-img makes only
    // 512-byte-sector VHDX.
    let dir = common::scratch("fs-4k");
    let raw = dir.join("disk.raw");
    std::fs::File::create(&raw).unwrap().set_len(64 << 20).unwrap();
    let loop_dev = Command::new("losetup").args(["-f", "--show", "-b", "4096"]).arg(&raw).output();
    let Some(dev) =
        loop_dev.ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    else {
        eprintln!("SKIPPED: no loop device of 4096-byte sectors here (losetup -b 4096 needs root and /dev/loop*)");
        return;
    };
    let mut child = Command::new("sfdisk")
        .args(["-q", "--no-reread", &dev])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"label: gpt\nsize=24MiB, name=ext\nsize=24MiB, name=fat\n").unwrap();
    let partitioned = child.wait().unwrap().success();
    let json = Command::new("sfdisk").arg("-J").arg(&dev).output().unwrap();
    let _ = Command::new("losetup").arg("-d").arg(&dev).status();
    assert!(partitioned, "sfdisk on {dev}");
    let table: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(table["partitiontable"]["sectorsize"], 4096);
    let starts: Vec<u64> = table["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["start"].as_u64().unwrap() * 4096)
        .collect();

    let ext = dir.join("ext.img");
    run(Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-b", "4096", "-d"])
        .arg(images().dir.join("src"))
        .arg("-F")
        .arg(&ext)
        .arg("20M"));
    let fat = dir.join("fat.img");
    run(Command::new("mkfs.vfat").args(["-C", "-S", "4096", "-n", "BIGSECTORS"]).arg(&fat).arg("20480"));
    run(Command::new("mcopy").arg("-i").arg(&fat).arg(images().dir.join("src/big.bin")).arg("::/"));
    let mut bytes = std::fs::read(&raw).unwrap();
    for (at, image) in starts.iter().zip([&ext, &fat]) {
        let data = std::fs::read(image).unwrap();
        bytes[*at as usize..*at as usize + data.len()].copy_from_slice(&data);
    }
    let block = common::build::MIB;
    let blocks = bytes
        .chunks(block as usize)
        .enumerate()
        .filter(|(_, b)| b.iter().any(|&x| x != 0))
        .map(|(i, b)| (i as u64, common::build::Block::Full(b.to_vec())))
        .collect();
    let vhdx = dir.join("4k.vhdx");
    let spec = common::build::VhdxSpec {
        virtual_size: 64 << 20,
        block_size: block,
        logical_sector: 4096,
        data_write_guid: common::build::guid_from_seed(4096),
        parent: None,
        blocks,
    };
    common::build::write_vhdx(&vhdx, &spec);
    let disk = open(&vhdx);
    assert_eq!(disk.info().logical_sector_size, 4096);
    let table = partitions(&*disk).unwrap();
    assert_eq!(table.sector_size, 4096);
    assert_eq!(table.partitions.iter().map(|p| p.offset).collect::<Vec<_>>(), starts);
    assert_eq!(
        read_all(&Volume::open_spec(disk.clone(), Some("ext")).unwrap(), "/sub/héllo wörld ✓.txt"),
        b"unicode\n"
    );
    let fat = Volume::open_spec(disk, Some("BIGSECTORS")).unwrap();
    assert_same(&read_all(&fat, "/big.bin"), &noise(2, 3 << 20), "/big.bin");
}

/// A volume held in memory, opened as the given kind.
fn volume_of(bytes: Vec<u8>, kind: FsKind) -> vhdkit::fs::Result<Volume> {
    let len = bytes.len() as u64;
    let disk: Arc<dyn VirtualDisk> =
        Arc::new(vhdkit::OpenOptions::default().open_raw_reader(Box::new(bytes), "damaged"));
    let partition = vhdkit::fs::Partition::whole(len, Some(kind));
    Volume::open(disk, &partition)
}

/// Walks everything and reads the start of every file: (entries, problems).
fn walk_all(volume: &Volume) -> vhdkit::fs::Result<(usize, Vec<String>)> {
    let mut entries = 0;
    let mut problems = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    vhdkit::fs::walk(
        volume,
        "",
        &vhdkit::CancelToken::new(),
        &mut |path, entry| {
            entries += 1;
            if entries > 100_000 {
                return Err(vhdkit::fs::FsError::Cancelled);
            }
            if entry.metadata.kind == FileKind::File
                && let Ok(mut f) = volume.open_file(path)
            {
                let _ = f.read_at(&mut buf, 0);
            }
            Ok(())
        },
        &mut |path, problem| problems.push(format!("{path}: {problem}")),
    )?;
    Ok((entries, problems))
}

#[test]
fn a_folder_linked_into_its_own_subtree_is_reported_not_walked_forever() {
    if !have_tools() {
        return;
    }
    let dir = common::scratch("fs-loop-ext");
    let image = dir.join("loop.img");
    std::fs::copy(&images().ext, &image).unwrap();
    // debugfs links a folder under its own child, as only damage could.
    run(Command::new("debugfs").args(["-w", "-R", "ln /deep /deep/level0/back"]).arg(&image));
    let volume = volume_of(std::fs::read(&image).unwrap(), FsKind::Ext { version: 4 }).unwrap();
    let (entries, problems) = walk_all(&volume).unwrap();
    assert!(entries < 2000, "{entries} entries: the loop was walked");
    assert!(problems.iter().any(|p| p.starts_with("/deep/level0/back") && p.contains("loop")), "{problems:?}");
}

#[test]
fn a_fat_folder_whose_cluster_chain_loops_ends_in_an_error() {
    if !have_tools() {
        return;
    }
    let mut bytes = std::fs::read(&images().fat).unwrap();
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let (bps, reserved, fats, fat_size) =
        (u16_at(&bytes, 11), u16_at(&bytes, 14), bytes[16] as usize, u16_at(&bytes, 22));
    assert!(fat_size > 0, "FAT16 expected");
    let root = (reserved + fats * fat_size) * bps;
    let entry =
        (0..512).map(|i| root + i * 32).find(|&e| &bytes[e..e + 11] == b"SUB        ").expect("SUB in the root");
    let cluster = u16_at(&bytes, entry + 26);
    // The folder's one cluster now points at itself, in both FATs, and its
    // free slots are marked deleted, so no end marker stops the listing.
    let root_entries = u16_at(&bytes, 17);
    let cluster_bytes = bytes[13] as usize * bps;
    let data = root + root_entries * 32 + (cluster - 2) * cluster_bytes;
    for slot in (data..data + cluster_bytes).step_by(32) {
        if bytes[slot] == 0 {
            bytes[slot] = 0xE5;
        }
    }
    for copy in 0..fats {
        let at = (reserved + copy * fat_size) * bps + cluster * 2;
        bytes[at..at + 2].copy_from_slice(&(cluster as u16).to_le_bytes());
    }
    let volume = volume_of(bytes, FsKind::Fat { bits: 16 }).unwrap();
    let e = volume.read_dir("/sub").unwrap_err();
    assert!(e.to_string().contains("loop") && e.kind() == vhdkit::ErrorKind::Corrupt, "{e}");
    let (_, problems) = walk_all(&volume).unwrap();
    assert!(problems.iter().any(|p| p.starts_with("/sub")), "{problems:?}");
}

#[test]
fn damaged_volumes_end_in_entries_or_errors_never_a_panic_or_a_hang() {
    if !have_tools() {
        return;
    }
    let i = images();
    let mut outcomes = BTreeMap::new();
    for (kind, image) in
        [(FsKind::Ntfs, &i.ntfs), (FsKind::Ext { version: 4 }, &i.ext), (FsKind::Fat { bits: 16 }, &i.fat)]
    {
        let clean = std::fs::read(image).unwrap();
        // Where the metadata lies: the first 4 MiB, and for NTFS its MFT.
        let mft = if kind == FsKind::Ntfs {
            let cluster = u64::from(clean[13]) * u64::from(u16::from_le_bytes([clean[11], clean[12]]));
            (u64::from_le_bytes(clean[48..56].try_into().unwrap()) * cluster) as usize
        } else {
            0
        };
        for round in 0..25u64 {
            let mut bytes = clean.clone();
            let picks = noise(1000 + round, 600);
            for p in picks.chunks_exact(6) {
                let span = if p[5] % 2 == 0 { 4 << 20 } else { 256 << 10 };
                let base = if p[5] % 2 == 0 { 0 } else { mft };
                let at = base + (u32::from_le_bytes([p[0], p[1], p[2], 0]) as usize % span);
                if at < bytes.len() {
                    bytes[at] ^= p[4] | 1;
                }
            }
            let outcome = match volume_of(bytes, kind) {
                Err(_) => "refused",
                Ok(v) => match walk_all(&v) {
                    Ok((_, p)) if p.is_empty() => "walked",
                    Ok(_) => "walked with problems",
                    Err(_) => "failed",
                },
            };
            *outcomes.entry((kind.to_string(), outcome)).or_insert(0) += 1;
        }
    }
    eprintln!("damage outcomes: {outcomes:?}");
    assert_eq!(outcomes.values().sum::<i32>(), 75);
}
