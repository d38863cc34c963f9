//! `vhdkit fs ...`: the file systems inside an image, a chain or a backup,
//! read in place (no mount, no restore of the disk first).
//!
//! TARGET is an image (a file) or a store (a folder or URL); a store is
//! followed by the BACKUP (id, name or prefix; `--disk` picks a disk of a
//! restore point). Paths are `[PART:]PATH`, PART a partition number, GPT
//! name or volume label, needed only when the disk holds several file
//! systems.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};
use serde::Serialize;
use vhdkit::fs::{DirEntry, FileKind, FsError, Metadata, Volume};
use vhdkit::{CancelToken, VirtualDisk};

use crate::Failure;

#[derive(Args, Clone)]
pub(crate) struct Source {
    /// An image (VHD, VHDX, chain) or a store (folder or URL) followed by
    /// the backup to read.
    target: PathBuf,
    /// With a store: the backup, then the paths; with an image: the paths.
    #[arg(value_name = "[BACKUP] PATH")]
    rest: Vec<String>,
    /// The disk of a restore point (its label).
    #[arg(long)]
    disk: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum FsCommand {
    /// The disk's partitions and the file systems in them.
    Parts {
        #[command(flatten)]
        source: Source,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List a folder: `[PART:]PATH` (default: the root).
    Ls {
        #[command(flatten)]
        source: Source,
        /// Sizes, times and kinds.
        #[arg(long, short)]
        long: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a file's bytes to stdout (`file:stream` for an NTFS stream).
    Cat {
        #[command(flatten)]
        source: Source,
    },
    /// Copy files and whole folders out into DIR, keeping names, times and
    /// (on Unix, from ext) modes; never writing outside DIR or over a file.
    Get {
        #[command(flatten)]
        source: Source,
        /// Where to put them (created if missing).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
    },
    /// Find entries under a folder by name (a glob: * and ?, without case)
    /// or by modification time.
    Find {
        #[command(flatten)]
        source: Source,
        /// Names matching this glob.
        #[arg(long, value_name = "GLOB")]
        name: Option<String>,
        /// Modified after this time (2026-12-01T00:00:00Z) or age (7d).
        #[arg(long, value_name = "WHEN", value_parser = crate::parse_when)]
        newer: Option<vhdkit::store::Moment>,
        /// Print the result as JSON lines.
        #[arg(long)]
        json: bool,
    },
}

/// The disk TARGET names, and the arguments left after it.
fn disk(source: &Source) -> Result<(Arc<dyn VirtualDisk>, Vec<String>), Failure> {
    if source.target.is_file() {
        if source.disk.is_some() {
            return Err(Failure::usage("--disk is for a restore point in a store, not an image"));
        }
        let disk = vhdkit::open(&source.target)?;
        return Ok((Arc::new(disk), source.rest.clone()));
    }
    let Some((backup, rest)) = source.rest.split_first() else {
        return Err(Failure::usage(format!("{} is a store: name the backup after it", source.target.display())));
    };
    let store = crate::store::open_store(&source.target)?;
    let reader = store.reader_disk(backup, source.disk.as_deref())?;
    Ok((Arc::new(reader), rest.to_vec()))
}

fn volume(disk: Arc<dyn VirtualDisk>, spec: &str) -> Result<(Volume, String), Failure> {
    let (part, path) = vhdkit::fs::split_spec(spec);
    let volume = Volume::open_spec(disk, part).map_err(fail)?;
    Ok((volume, path.to_string()))
}

fn fail(e: FsError) -> Failure {
    Failure { code: Failure::code(e.kind()), message: e.to_string() }
}

pub(crate) fn run(cmd: FsCommand, cancel: &CancelToken) -> Result<u8, Failure> {
    match cmd {
        FsCommand::Parts { source, json } => parts(&source, json),
        FsCommand::Ls { source, long, json } => ls(&source, long, json),
        FsCommand::Cat { source } => cat(&source, cancel),
        FsCommand::Get { source, to } => get(&source, &to, cancel),
        FsCommand::Find { source, name, newer, json } => find(&source, name.as_deref(), newer, json, cancel),
    }
}

fn parts(source: &Source, json: bool) -> Result<u8, Failure> {
    let (disk, rest) = disk(source)?;
    if !rest.is_empty() {
        return Err(Failure::usage("parts takes no path"));
    }
    let table = vhdkit::fs::partitions(&*disk).map_err(fail)?;
    #[derive(Serialize)]
    struct Row<'a> {
        #[serde(flatten)]
        partition: &'a vhdkit::fs::Partition,
        label: Option<String>,
    }
    let rows: Vec<Row> = table
        .partitions
        .iter()
        .map(|p| Row { partition: p, label: Volume::open(disk.clone(), p).ok().and_then(|v| v.label()) })
        .collect();
    for w in &table.warnings {
        note!("vhdkit: warning: {w}");
    }
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            scheme: vhdkit::fs::Scheme,
            sector_size: u32,
            partitions: Vec<Row<'a>>,
            warnings: &'a [String],
        }
        let out =
            Out { scheme: table.scheme, sector_size: table.sector_size, partitions: rows, warnings: &table.warnings };
        out!("{}", crate::to_json(&out)?);
        return Ok(0);
    }
    out!("{:?} table, {}-byte sectors", table.scheme, table.sector_size);
    for r in rows {
        let p = r.partition;
        let fs = p.filesystem.map_or("-".to_string(), |k| k.to_string());
        let name = p.name.clone().filter(|n| !n.is_empty()).or(r.label.clone()).unwrap_or_default();
        out!(
            "{:>3}  {:>14}  {:>14}  {:<8} {:<22} {}",
            p.number,
            p.offset,
            p.length,
            fs,
            p.type_name.unwrap_or(&p.type_id),
            name
        );
    }
    Ok(0)
}

fn one_path(rest: &[String], what: &str) -> Result<String, Failure> {
    match rest {
        [] => Ok("/".into()),
        [one] => Ok(one.clone()),
        _ => Err(Failure::usage(format!("{what} takes one path"))),
    }
}

fn ls(source: &Source, long: bool, json: bool) -> Result<u8, Failure> {
    let (disk, rest) = disk(source)?;
    let (volume, path) = volume(disk, &one_path(&rest, "ls")?)?;
    let meta = volume.metadata(&path).map_err(fail)?;
    let entries = if meta.is_dir() {
        volume.read_dir(&path).map_err(fail)?
    } else {
        let name = path.rsplit(['/', '\\']).next().unwrap_or(&path).to_string();
        vec![DirEntry { name, short_name: None, metadata: meta, problem: None }]
    };
    if json {
        out!("{}", crate::to_json(&entries)?);
        return Ok(0);
    }
    for e in &entries {
        if long {
            out!("{}", long_line(&e.name, &e.metadata));
        } else {
            out!("{}{}", e.name, if e.metadata.is_dir() { "/" } else { "" });
        }
        if let Some(p) = &e.problem {
            note!("vhdkit: warning: {}: {p}", e.name);
        }
    }
    Ok(0)
}

fn long_line(name: &str, m: &Metadata) -> String {
    let kind = match m.kind {
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        FileKind::Other => 'o',
        FileKind::File => '-',
    };
    let when = m.modified.map_or("-".into(), |t| vhdkit::store::Moment::from_unix(t.seconds, t.nanos / 1000).rfc3339());
    let mode = m.mode.map_or(String::new(), |mode| format!(" {:o}", mode & 0o7777));
    let extra = m.unsupported.as_ref().map_or(String::new(), |u| format!("  [{u}: not readable here]"));
    let streams: String = m.streams.iter().map(|s| format!("  [:{} {}]", s.name, s.len)).collect();
    format!("{kind}{mode} {:>14} {when} {name}{}{streams}{extra}", m.len, if m.is_dir() { "/" } else { "" })
}

fn cat(source: &Source, cancel: &CancelToken) -> Result<u8, Failure> {
    let (disk, rest) = disk(source)?;
    let (volume, path) = volume(disk, &one_path(&rest, "cat")?)?;
    let mut file = volume.open_file(&path).map_err(fail)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut out = std::io::stdout().lock();
    let mut at = 0;
    loop {
        if cancel.is_cancelled() {
            return Err(fail(FsError::Cancelled));
        }
        let n = file.read_at(&mut buf, at).map_err(fail)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
        at += n as u64;
    }
    out.flush()?;
    Ok(0)
}

/// A name from the file system that is safe as one path component here
/// (on Windows also not a device name such as `CON` or `COM1.txt`).
fn safe_name(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or("").to_ascii_uppercase();
    let device = matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || ((stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.len() == 4
            && stem.as_bytes()[3].is_ascii_digit());
    !(name.is_empty()
        || name == "."
        || name == ".."
        || name.contains(['/', '\0'])
        || (cfg!(windows) && (name.contains(['\\', ':', '<', '>', '"', '|', '?', '*']) || device)))
}

fn get(source: &Source, to: &Path, cancel: &CancelToken) -> Result<u8, Failure> {
    let (disk, rest) = disk(source)?;
    if rest.is_empty() {
        return Err(Failure::usage("get needs at least one [PART:]PATH"));
    }
    std::fs::create_dir_all(to).map_err(|e| Failure { code: 1, message: format!("{}: {e}", to.display()) })?;
    let mut volumes: Vec<(Option<String>, Volume)> = Vec::new();
    let mut failed = 0u64;
    let (mut files, mut bytes) = (0u64, 0u64);
    // Folders get their times last: writing into one changes its time.
    let mut folders = Vec::new();
    for spec in &rest {
        let (part, path) = vhdkit::fs::split_spec(spec);
        let volume = match volumes.iter().position(|(p, _)| p.as_deref() == part) {
            Some(i) => &volumes[i].1,
            None => {
                volumes.push((part.map(String::from), Volume::open_spec(disk.clone(), part).map_err(fail)?));
                &volumes.last().expect("just pushed").1
            }
        };
        let meta = volume.metadata(path).map_err(fail)?;
        let name = path.trim_end_matches(['/', '\\']).rsplit(['/', '\\']).next().unwrap_or("");
        let (dest, name) = if name.is_empty() { (to.to_path_buf(), "") } else { (to.join(name), name) };
        if !name.is_empty() && !safe_name(name) {
            return Err(Failure::usage(format!("{path}: not a name that can be written inside {}", to.display())));
        }
        let mut stack = vec![(path.trim_end_matches('/').to_string(), dest, meta)];
        while let Some((from, dest, meta)) = stack.pop() {
            if cancel.is_cancelled() {
                return Err(fail(FsError::Cancelled));
            }
            let r = match meta.kind {
                FileKind::Dir => {
                    let made = if dest == to { Ok(()) } else { std::fs::create_dir(&dest) };
                    made.map_err(|e| e.to_string())
                        .and_then(|()| {
                            volume.read_dir(if from.is_empty() { "/" } else { &from }).map_err(|e| e.to_string())
                        })
                        .map(|entries| {
                            for e in entries {
                                if let Some(why) = e.problem.as_ref().or(e.metadata.unsupported.as_ref()) {
                                    note!("vhdkit: {from}/{}: not copied: {why}", e.name);
                                    failed += 1;
                                    continue;
                                }
                                if !safe_name(&e.name) {
                                    note!(
                                        "vhdkit: {from}/{}: refusing a name that would leave {}",
                                        e.name,
                                        to.display()
                                    );
                                    failed += 1;
                                    continue;
                                }
                                stack.push((format!("{from}/{}", e.name), dest.join(&e.name), e.metadata));
                            }
                        })
                }
                FileKind::File => write_file(volume, &from, &dest, &meta, cancel)
                    .inspect_err(|e| {
                        // Nothing half-written stays behind looking whole
                        // (the name was ours: create_new made it).
                        if !e.starts_with("cannot create ") {
                            let _ = std::fs::remove_file(&dest);
                        }
                    })
                    .map(|n| {
                        files += 1;
                        bytes += n;
                    }),
                FileKind::Symlink => write_link(volume, &from, &dest),
                FileKind::Other => Err("a device, FIFO, socket or reparse point: not copied".into()),
            };
            match r {
                Ok(()) if meta.kind == FileKind::Dir => folders.push((dest, meta)),
                Ok(()) => set_times(&dest, &meta),
                Err(e) => {
                    note!("vhdkit: {from}: {e}");
                    failed += 1;
                }
            }
        }
    }
    for (dest, meta) in folders.iter().rev() {
        set_times(dest, meta);
    }
    note!(
        "vhdkit: {files} files, {bytes} bytes into {}{}",
        to.display(),
        if failed > 0 { format!("; {failed} failed") } else { String::new() }
    );
    Ok(if failed > 0 { 1 } else { 0 })
}

fn write_file(volume: &Volume, from: &str, dest: &Path, meta: &Metadata, cancel: &CancelToken) -> Result<u64, String> {
    let mut file = volume.open_file(from).map_err(|e| e.to_string())?;
    // create_new: never over an existing file, and never through a link.
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < file.len() {
        if cancel.is_cancelled() {
            return Err("cancelled".into());
        }
        let n = file.read_at(&mut buf, at).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("the data ends at byte {at} of {}", file.len()));
        }
        if vhdkit::is_all_zero(&buf[..n]) && at + (n as u64) < file.len() {
            // Keep holes: seek over zeros (the length is set at the end).
            std::io::Seek::seek(&mut out, std::io::SeekFrom::Current(n as i64)).map_err(|e| e.to_string())?;
        } else {
            out.write_all(&buf[..n]).map_err(|e| format!("{}: {e}", dest.display()))?;
        }
        at += n as u64;
    }
    out.set_len(at).map_err(|e| e.to_string())?;
    // Durable before it is reported copied, as a restore's output is.
    out.sync_all().map_err(|e| format!("{}: {e}", dest.display()))?;
    #[cfg(unix)]
    if let Some(mode) = meta.mode {
        use std::os::unix::fs::PermissionsExt;
        // Never set-user-id or set-group-id: a copy made as root must not
        // hand out a privileged program.
        let _ = std::fs::set_permissions(dest, std::fs::Permissions::from_mode(mode & 0o1777));
    }
    let _ = meta;
    Ok(at)
}

fn write_link(volume: &Volume, from: &str, dest: &Path) -> Result<(), String> {
    let target = volume.read_link(from).map_err(|e| e.to_string())?;
    #[cfg(unix)]
    return std::os::unix::fs::symlink(&target, dest).map_err(|e| format!("{}: {e}", dest.display()));
    #[cfg(not(unix))]
    return Err(format!("{}: a symbolic link to {target}, not copied on this system", dest.display()));
}

fn set_times(dest: &Path, meta: &Metadata) {
    let Some(t) = meta.modified else { return };
    let Some(when) = std::time::UNIX_EPOCH.checked_add(std::time::Duration::new(t.seconds.max(0) as u64, t.nanos))
    else {
        return;
    };
    if meta.kind == FileKind::Symlink {
        return;
    }
    if let Ok(f) =
        std::fs::File::options().write(meta.kind == FileKind::File).read(meta.kind == FileKind::Dir).open(dest)
    {
        let _ = f.set_modified(when);
    }
}

/// `*` and `?` against `name`, without case.
fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let n: Vec<char> = name.to_lowercase().chars().collect();
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

fn find(
    source: &Source,
    name: Option<&str>,
    newer: Option<vhdkit::store::Moment>,
    json: bool,
    cancel: &CancelToken,
) -> Result<u8, Failure> {
    let (disk, rest) = disk(source)?;
    let (volume, root) = volume(disk, &one_path(&rest, "find")?)?;
    let mut problems = 0;
    let mut emit = |path: &str, e: &DirEntry| -> vhdkit::fs::Result<()> {
        let by_name = name.is_none_or(|g| glob(g, &e.name));
        let by_time = newer.is_none_or(|m| e.metadata.modified.is_some_and(|t| t.seconds > m.unix_secs()));
        if by_name && by_time {
            let line = if json {
                #[derive(Serialize)]
                struct Hit<'a> {
                    path: &'a str,
                    #[serde(flatten)]
                    metadata: &'a Metadata,
                }
                serde_json::to_string(&Hit { path, metadata: &e.metadata }).unwrap_or_default()
            } else {
                path.to_string()
            };
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{line}").is_err() {
                return Err(FsError::Cancelled);
            }
        }
        Ok(())
    };
    let walked = vhdkit::fs::walk(&volume, root.trim_end_matches('/'), cancel, &mut emit, &mut |path, reason| {
        note!("vhdkit: {path}: {reason}");
        problems += 1;
    });
    match walked {
        Err(FsError::Cancelled) if !cancel.is_cancelled() => Ok(0),
        r => r.map_err(fail).map(|()| u8::from(problems > 0)),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn globs() {
        assert!(super::glob("*.TXT", "readme.txt"));
        assert!(super::glob("a?c*", "abcdef"));
        assert!(!super::glob("*.dll", "readme.txt"));
    }
}

/// `verify STORE BACKUP --filesystems` and its options.
pub(crate) struct Check {
    pub read_files: bool,
    pub sample: Option<f64>,
    pub seed: Option<u64>,
    pub against: Option<PathBuf>,
    pub disk: Option<String>,
}

pub(crate) fn verify_filesystems(
    store: &Path,
    backup: &str,
    check: Check,
    json: bool,
    cancel: &CancelToken,
) -> Result<u8, Failure> {
    let store = crate::store::open_store(store)?;
    let mut options = vhdkit::fs::CheckOptions::default();
    options.read_files = check.read_files;
    options.sample = check.sample;
    options.seed = check.seed.unwrap_or_else(|| {
        u64::from_le_bytes(vhdkit::Guid::new_random().as_bytes()[..8].try_into().unwrap_or_default())
    });
    options.cancel = cancel.clone();
    if let Some(image) = &check.against {
        options.against = Some(Arc::new(vhdkit::open(image)?));
    }
    let reports = store.verify_filesystems(backup, check.disk.as_deref(), &options)?;
    let ok = reports.iter().all(|r| r.ok());
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            ok: bool,
            backup: &'a str,
            sample_seed: Option<u64>,
            partitions: &'a [vhdkit::fs::CheckReport],
        }
        let seed = options.sample.map(|_| options.seed);
        out!("{}", crate::to_json(&Out { ok, backup, sample_seed: seed, partitions: &reports })?);
    } else {
        for r in &reports {
            let fs = r.filesystem.map_or("-".to_string(), |k| k.to_string());
            if let Some(why) = &r.skipped {
                out!("partition {}: {fs}: skipped ({why})", r.partition);
                continue;
            }
            out!(
                "partition {}: {fs}{}: {} files, {} folders, {} links; {} files read ({} bytes); {} unsupported; {}",
                r.partition,
                r.label.as_ref().map(|l| format!(" \"{l}\"")).unwrap_or_default(),
                r.files,
                r.folders,
                r.links,
                r.files_read,
                r.bytes_read,
                r.unsupported.len(),
                if r.ok() { "sound".to_string() } else { format!("{} PROBLEMS", r.problems.len()) }
            );
            for p in &r.problems {
                out!("  {}: {}", p.path, p.reason);
            }
        }
    }
    Ok(if ok { 0 } else { 1 })
}
