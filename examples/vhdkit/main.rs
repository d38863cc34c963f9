//! `vhdkit`: inspect, check, convert and back up VHD/VHDX images.
//!
//! Names and exit codes follow the command-line contract in DESIGN.md:
//! 0 success (and "clean" for `check`), 1 damage or failure, 2 usage errors
//! and unsupported images, 130 cancelled (SIGINT or SIGTERM). A closed
//! output pipe (`vhdkit info IMAGE | head -1`) ends the command quietly.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::{Parser, Subcommand};
use serde::Serialize;
use vhdkit::disk::{ChecksumPolicy, DiskInfo, Extent, ExtentState, OpenOptions};
use vhdkit::export::{ExportOptions, Target};
use vhdkit::{CancelToken, Disk, DiskError, ErrorKind};

/// Writes a line to stdout. A closed pipe becomes a quiet [`Failure`], so
/// `vhdkit ... | head` ends the command instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err($crate::Failure::from)?
    }};
}

/// Writes a line to stderr; if stderr is gone there is no one to tell.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

mod demo;
mod fs;
mod keys;
mod serve;
mod store;

#[derive(Parser)]
#[command(name = "vhdkit", version, about = "Read, convert and back up VHD/VHDX virtual disks")]
struct Cli {
    /// Accept VHD footers and headers whose checksum does not match (with a warning).
    #[arg(long, global = true, help_heading = "Global options")]
    lenient: bool,
    /// Read images through a memory map: a backup hashes allocated blocks in
    /// place instead of copying them first. Only for images nothing writes
    /// or truncates meanwhile: a file cut short under the map kills the
    /// process (SIGBUS) instead of failing with an error.
    #[arg(long, global = true, help_heading = "Global options")]
    mmap: bool,
    /// Where a store on object storage keeps its local cache of index
    /// files, manifests and restore points (default: $XDG_CACHE_HOME/vhdkit).
    #[arg(long, global = true, help_heading = "Global options", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Read a remote store's metadata from the store itself, keeping no local copy.
    #[arg(long, global = true, help_heading = "Global options")]
    no_cache: bool,
    /// Open stores read-only: restore, verify, list, stats and log work and
    /// nothing is written, not even a lease (so a vacuum elsewhere could
    /// delete what a restore reads: it then fails, never writing a wrong
    /// byte). Stores whose storage refuses writes are opened so by themselves.
    #[arg(long, global = true, help_heading = "Global options")]
    read_only: bool,
    /// Reads of a store to keep in flight (restore, verify, mounts): default
    /// 16 for object storage, 4 for a folder.
    #[arg(long, global = true, help_heading = "Global options", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    connections: Option<u16>,
    /// How far a sequential read of a store reads ahead (default 32M): a
    /// reader's memory stays below about twice this plus 16 MiB.
    #[arg(long, global = true, help_heading = "Global options", value_name = "SIZE", value_parser = parse_size)]
    read_ahead: Option<u32>,
    #[command(flatten)]
    key: keys::KeyArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole story on a disk the demo makes itself (in DIR, or a temporary folder).
    Demo {
        /// Where to work (kept afterwards); default: a temporary folder, removed.
        dir: Option<PathBuf>,
    },
    /// Format, sizes, identity, parent chain and allocation summary.
    Info {
        /// A VHD or VHDX image (a differencing child opens with its parents).
        image: PathBuf,
        /// Print the result as JSON (snake_case keys, sizes in bytes).
        #[arg(long)]
        json: bool,
    },
    /// Allocation extents: start, length, state (data|zero|unallocated|parent), depth.
    Map {
        /// A VHD or VHDX image (a differencing child opens with its parents).
        image: PathBuf,
        /// Print the result as JSON (snake_case keys, sizes in bytes).
        #[arg(long)]
        json: bool,
        /// Only the image's own allocation; ranges its parent supplies show as `parent`.
        #[arg(long)]
        shallow: bool,
    },
    /// Structural validation: exit 0 clean, 1 corrupt, 2 usage or unsupported.
    Check {
        /// A VHD or VHDX image (its whole chain is checked).
        image: PathBuf,
    },
    /// The file systems inside an image or a backup: parts, ls, cat, get, find.
    #[command(subcommand)]
    Fs(fs::FsCommand),
    /// Store administration: init, reindex.
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// An encrypted store's keys: add, list, remove, generate a key file.
    #[command(subcommand)]
    Key(keys::KeyCommand),
    /// Back up IMAGE (or several disks of one VM, as one restore point) into STORE.
    Backup(store::BackupArgs),
    /// Serve backups over NBD (read-only, or writable into --overlay) until SIGINT/SIGTERM.
    Serve {
        /// The store: a folder or a URL (s3://BUCKET/PREFIX).
        store: PathBuf,
        /// Backups to export (id, prefix or name), each under the name given.
        #[arg(required = true)]
        backups: Vec<String>,
        #[command(flatten)]
        args: serve::ServeArgs,
    },
    /// Serve an image or chain over NBD (never written: a dirty log is replayed in memory).
    ServeImage {
        /// A VHD or VHDX image or chain.
        image: PathBuf,
        #[command(flatten)]
        args: serve::ServeArgs,
    },
    /// Make BACKUP a full backup by folding its chain (metadata only).
    Merge {
        /// The store: a folder or a URL (s3://BUCKET/PREFIX).
        store: PathBuf,
        /// The backup (or restore point) to make full: id, name (its newest) or id prefix.
        backup: String,
        /// Which disk, when BACKUP names a restore point with several.
        #[arg(long)]
        disk: Option<String>,
        /// Wait for another maintenance run (merge, prune, vacuum, reindex)
        /// to end instead of failing with "busy"; backups never block it.
        #[arg(long)]
        wait: bool,
        /// Print the result as JSON (snake_case keys, sizes in bytes).
        #[arg(long)]
        json: bool,
    },
    /// Drop backups of NAME outside the retention policy (kept incrementals
    /// are merged first; a restore point goes whole).
    Prune {
        /// The store: a folder or a URL (s3://BUCKET/PREFIX).
        store: PathBuf,
        /// The job name whose backups the policy applies to.
        name: String,
        /// Keep the newest N jobs.
        #[arg(long, default_value_t = 0)]
        keep_last: usize,
        /// Keep the newest job of each of the last N days that have one.
        #[arg(long, default_value_t = 0)]
        keep_daily: usize,
        /// Keep the newest job of each of the last N ISO weeks that have one.
        #[arg(long, default_value_t = 0)]
        keep_weekly: usize,
        /// Keep the newest job of each of the last N months that have one.
        #[arg(long, default_value_t = 0)]
        keep_monthly: usize,
        /// Say what would be merged and dropped, changing nothing.
        #[arg(long)]
        dry_run: bool,
        /// Wait for another maintenance run (merge, prune, vacuum, reindex)
        /// to end instead of failing with "busy"; backups never block it.
        #[arg(long)]
        wait: bool,
        /// Print the result as JSON (snake_case keys, sizes in bytes).
        #[arg(long)]
        json: bool,
    },
    /// Delete unreferenced chunks, compact packs, and report the bytes reclaimed.
    Vacuum {
        /// The store: a folder or a URL (s3://BUCKET/PREFIX).
        store: PathBuf,
        /// Rewrite packs whose dead bytes exceed this percentage of their live bytes.
        #[arg(long, default_value_t = 25.0)]
        threshold: f64,
        /// Keep condemned objects this long before deleting them (e.g. 24h, 30m, 0).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        grace: std::time::Duration,
        /// Spare packs no backup needs yet that are younger than this (e.g.
        /// 7d): an interrupted backup's, which its next attempt takes over
        /// instead of uploading again (default 0: condemn them).
        #[arg(long, default_value = "0", value_parser = parse_duration)]
        keep_unfinished: std::time::Duration,
        /// Wait for another maintenance run (merge, prune, vacuum, reindex)
        /// to end instead of failing with "busy". Backups and restores never
        /// block vacuum and are not waited for: what they may still use is
        /// condemned now and deleted by a later run.
        #[arg(long)]
        wait: bool,
        /// Print the result as JSON (snake_case keys, sizes in bytes).
        #[arg(long)]
        json: bool,
    },
    /// List backups (one per disk), oldest first; with --points, restore points.
    List {
        /// The store: a folder or a URL (s3://BUCKET/PREFIX).
        store: PathBuf,
        /// List restore points (multi-disk jobs, tags, attachments) instead of backups.
        #[arg(long)]
        points: bool,
        /// Print the result as JSON (snake_case keys, sizes in bytes).
        #[arg(long)]
        json: bool,
    },
    /// Restore BACKUP (id, name for the newest, or id prefix) to OUT.
    Restore(store::RestoreArgs),
    /// Check every pack, chunk and manifest (or only what BACKUP needs):
    /// exit 0 clean, 1 damage found.
    Verify {
        /// The store: a folder or a URL (s3://BUCKET/PREFIX).
        store: PathBuf,
        /// A backup or restore point (id, name or id prefix): check only what it needs.
        backup: Option<String>,
        /// Check an encrypted store without its key: structure, sizes and
        /// CRCs of every object (no tags, no backup's map).
        #[arg(long, conflicts_with = "backup")]
        no_key: bool,
        /// Read only this share of packs, in percent (each pack in or out by
        /// a hash of the seed and its id); the rest count as sound.
        #[arg(long, value_name = "PCT")]
        sample: Option<f64>,
        /// The sample's seed (default: random, and reported).
        #[arg(long, requires = "sample")]
        seed: Option<u64>,
        /// Read only packs written since, and check backups made since: a
        /// time (2026-12-01T00:00:00Z) or an age (7d, 24h).
        #[arg(long, value_name = "WHEN", value_parser = parse_when)]
        since: Option<vhdkit::store::Moment>,
        /// Instead of the store's objects, check BACKUP's file systems: open
        /// every partition's, walk every folder, read every entry's record
        /// (and with --read-files or --sample, file data): a restore test
        /// without a hypervisor. Exit 1 if anything is unreadable.
        #[arg(long, requires = "backup", conflicts_with_all = ["no_key", "since"])]
        filesystems: bool,
        /// With --filesystems: read every file's data.
        #[arg(long, requires = "filesystems")]
        read_files: bool,
        /// With --filesystems: compare every file's bytes with this image
        /// (the disk the backup was made from).
        #[arg(long, requires = "filesystems", value_name = "IMAGE")]
        against: Option<PathBuf>,
        /// With --filesystems: the disk of a restore point (its label).
        #[arg(long, requires = "filesystems")]
        disk: Option<String>,
        /// Print the result as JSON (snake_case keys, sizes in bytes).
        #[arg(long)]
        json: bool,
    },
    /// Copies backups and restore points into another store (folder or
    /// bucket, either way), moving only chunks the destination lacks.
    Copy {
        /// The store to copy from (its key: the global --key-file etc.).
        from: PathBuf,
        /// The store to copy into (its key: --dest-key-file,
        /// --dest-password-file or VHDKIT_DEST_PASSWORD).
        to: PathBuf,
        /// One backup or restore point (id, name or id prefix) and its parents.
        #[arg(conflicts_with_all = ["name", "all"])]
        backup: Option<String>,
        /// Every backup of this name.
        #[arg(long, conflicts_with = "all")]
        name: Option<String>,
        /// Every backup and restore point (the default).
        #[arg(long)]
        all: bool,
        /// Only backups made since (their parents still come along): a time
        /// (2026-12-01T00:00:00Z) or an age (7d).
        #[arg(long, value_name = "WHEN", value_parser = parse_when)]
        since: Option<vhdkit::store::Moment>,
        /// A key file that opens the destination.
        #[arg(long, value_name = "FILE", conflicts_with = "dest_password_file")]
        dest_key_file: Option<PathBuf>,
        /// A file whose first line is the destination's passphrase.
        #[arg(long, value_name = "FILE")]
        dest_password_file: Option<PathBuf>,
        /// Print the result as JSON (snake_case keys, sizes in bytes).
        #[arg(long)]
        json: bool,
    },
    /// The job log: one line per finished operation, oldest first.
    Log {
        /// The store: a folder or a URL (s3://BUCKET/PREFIX).
        store: PathBuf,
        /// Only the newest N entries.
        #[arg(long)]
        last: Option<usize>,
        /// Print the result as JSON (snake_case keys, sizes in bytes).
        #[arg(long)]
        json: bool,
    },
    /// Logical and stored bytes, chunks, dedup and compression ratios.
    Stats {
        /// The store: a folder or a URL (s3://BUCKET/PREFIX).
        store: PathBuf,
        /// Print the result as JSON (snake_case keys, sizes in bytes).
        #[arg(long)]
        json: bool,
    },
    /// Write IN as another format (a differencing chain is flattened), or as a
    /// differencing child of BASE holding only what differs from it.
    Convert {
        /// The image to read (VHD, VHDX, a chain's top; with --from raw, a raw image).
        input: PathBuf,
        /// The file to write (written whole, then renamed into place).
        output: PathBuf,
        /// raw, vhd, vhd-fixed, vhdx or vhdx-fixed.
        #[arg(long = "to")]
        to: Target,
        /// Block size of a VHD/VHDX output, e.g. 2M or 32M.
        #[arg(long, value_parser = parse_size)]
        block_size: Option<u32>,
        /// Write OUT as a child of BASE (same format as OUT).
        #[arg(long)]
        parent: Option<PathBuf>,
        /// Skip the final flush to stable storage (benchmarks, scratch copies).
        #[arg(long)]
        no_sync: bool,
        /// Read IN as a raw disk image instead of sniffing VHD/VHDX.
        #[arg(long, value_parser = ["raw"])]
        from: Option<String>,
    },
}

/// `512`, `64K`, `2M`, `1G` (powers of 1024).
pub(crate) fn parse_size(s: &str) -> Result<u32, String> {
    let (digits, unit) = s.trim().split_at(s.trim().find(|c: char| !c.is_ascii_digit()).unwrap_or(s.trim().len()));
    let n: u64 = digits.parse().map_err(|_| format!("not a size: {s:?}"))?;
    let mult = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => return Err(format!("unknown unit in {s:?}")),
    };
    u32::try_from(n * mult).map_err(|_| format!("{s:?} is too large"))
}

/// A point in time: RFC 3339 (`2026-12-01T00:00:00Z`), or an age before
/// now (`7d`, `24h`).
pub(crate) fn parse_when(s: &str) -> Result<vhdkit::store::Moment, String> {
    if let Some(m) = vhdkit::store::Moment::parse(s) {
        return Ok(m);
    }
    let age = parse_duration(s).map_err(|_| format!("not a time or an age: {s:?} (2026-12-01T00:00:00Z, 7d)"))?;
    let secs = i64::try_from(age.as_secs()).map_err(|_| format!("{s:?} is too long ago"))?;
    Ok(vhdkit::store::Moment::now().add_secs(-secs))
}

/// `90`, `90s`, `30m`, `24h`, `7d`.
pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit in {s:?} (s, m, h, d)")),
    };
    Ok(std::time::Duration::from_secs(n.saturating_mul(secs)))
}

/// A failure with its exit code; an empty message prints nothing.
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Failure {
    /// Exit code for an error of `kind`.
    pub(crate) fn code(kind: ErrorKind) -> u8 {
        match kind {
            ErrorKind::Cancelled => 130,
            // What the caller asked cannot be done as asked: a usage error.
            ErrorKind::Unsupported | ErrorKind::InvalidInput => 2,
            _ => 1,
        }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Failure {
        Failure { code: 2, message: message.into() }
    }
}

impl From<DiskError> for Failure {
    fn from(e: DiskError) -> Self {
        Failure { code: Failure::code(e.kind()), message: e.to_string() }
    }
}

impl From<vhdkit::Error> for Failure {
    fn from(e: vhdkit::Error) -> Self {
        Failure { code: Failure::code(e.kind()), message: e.to_string() }
    }
}

impl From<vhdkit::store::StoreError> for Failure {
    fn from(e: vhdkit::store::StoreError) -> Self {
        Failure { code: Failure::code(e.kind()), message: e.to_string() }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            // The reader went away (`| head`): stop quietly, as Unix tools do.
            return Failure { code: 0, message: String::new() };
        }
        Failure { code: 1, message: format!("writing the output: {e}") }
    }
}

/// JSON for the output, pretty-printed.
pub(crate) fn to_json(value: &impl Serialize) -> Result<String, Failure> {
    serde_json::to_string_pretty(value).map_err(|e| Failure { code: 1, message: e.to_string() })
}

/// Ctrl-C (SIGINT), SIGTERM and SIGHUP, or on Windows Ctrl-C, Ctrl-Break
/// and closing the console, cancel the running operation (exit 130); a
/// second one ends the process at once. Through the ctrlc crate, which
/// installs the platform's own handler (a signal handler, or
/// `SetConsoleCtrlHandler`) and runs this on a thread of its own.
fn cancel_on_signals() -> CancelToken {
    let flag = Arc::new(AtomicBool::new(false));
    let seen = flag.clone();
    // Without a handler (another library installed one first) Ctrl-C still
    // ends the process, as it would without vhdkit.
    let _ = ctrlc::set_handler(move || {
        if seen.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
    CancelToken::from_flag(flag)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cancel = cancel_on_signals();
    store::set_open_options(store::OpenArgs {
        cache_dir: cli.cache_dir.clone(),
        no_cache: cli.no_cache,
        read_only: cli.read_only,
        connections: cli.connections.map(usize::from),
        read_ahead: cli.read_ahead.map(u64::from),
    });
    keys::set_key_args(cli.key.clone());
    let options = OpenOptions::new()
        .checksums(if cli.lenient { ChecksumPolicy::Lenient } else { ChecksumPolicy::Strict })
        .mmap(cli.mmap);
    let result = match cli.command {
        Command::Demo { dir } => demo::run(dir),
        Command::Info { image, json } => info(&options, &image, json),
        Command::Map { image, json, shallow } => map(&options, &image, json, shallow),
        Command::Check { image } => check(&options, &image),
        Command::Store(cmd) => store::store_command(cmd),
        Command::Fs(cmd) => fs::run(cmd, &cancel),
        Command::Key(cmd) => keys::key_command(cmd),
        Command::Backup(args) => store::backup(&options, args, &cancel),
        Command::Serve { store, backups, args } => serve::serve(&store, &backups, &args, &cancel),
        Command::ServeImage { image, args } => serve::serve_image(&options, &image, &args, &cancel),
        Command::Merge { store, backup, disk, wait, json } => store::merge(&store, &backup, disk, wait, json),
        Command::Prune { store, name, keep_last, keep_daily, keep_weekly, keep_monthly, dry_run, wait, json } => {
            let mut policy = vhdkit::store::Retention::keep_last(keep_last);
            policy.keep_daily = keep_daily;
            policy.keep_weekly = keep_weekly;
            policy.keep_monthly = keep_monthly;
            store::prune(&store, &name, policy, dry_run, wait, json)
        }
        Command::Vacuum { store, threshold, grace, keep_unfinished, wait, json } => {
            store::vacuum(&store, threshold / 100.0, (grace, keep_unfinished), wait, json, &cancel)
        }
        Command::List { store, points, json } => store::list(&store, points, json),
        Command::Restore(args) => store::restore(args, &cancel),
        Command::Verify {
            store,
            backup: Some(backup),
            filesystems: true,
            read_files,
            against,
            disk,
            sample,
            seed,
            json,
            ..
        } => {
            let check = fs::Check { read_files, sample, seed, against, disk };
            fs::verify_filesystems(&store, &backup, check, json, &cancel)
        }
        Command::Verify { store, backup, no_key, sample, seed, since, json, .. } => {
            let mut v = vhdkit::store::VerifyOptions::default();
            v.only = backup;
            v.sample = sample;
            v.seed = seed;
            v.since = since;
            v.cancel = cancel.clone();
            store::verify(&store, v, no_key, json)
        }
        Command::Stats { store, json } => store::stats(&store, json),
        Command::Copy { from, to, backup, name, all: _, since, dest_key_file, dest_password_file, json } => {
            let mut o = vhdkit::store::CopyOptions::default();
            o.select = match (backup, name) {
                (Some(b), _) => vhdkit::store::CopySelection::Spec(b),
                (None, Some(n)) => vhdkit::store::CopySelection::Name(n),
                (None, None) => vhdkit::store::CopySelection::All,
            };
            o.since = since;
            o.cancel = cancel.clone();
            store::copy(&from, &to, o, dest_key_file.as_deref(), dest_password_file.as_deref(), json)
        }
        Command::Log { store, last, json } => store::log(&store, last, json),
        Command::Convert { input, output, to, block_size, parent, from, no_sync } => {
            let mut export = ExportOptions::default();
            export.block_size = block_size;
            export.parent = parent;
            export.open = options.clone();
            export.sync = !no_sync;
            export.cancel = cancel.clone();
            convert(&options, &input, &output, to, export, from.is_some())
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            if !f.message.is_empty() {
                note!("vhdkit: {}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}

#[derive(Serialize, Default)]
struct Allocation {
    data_bytes: u64,
    zero_bytes: u64,
    unallocated_bytes: u64,
    parent_bytes: u64,
}

fn allocation(disk: &Disk) -> Result<Allocation, Failure> {
    let mut a = Allocation::default();
    for e in disk.extents(0..disk.size())? {
        let slot = match (e.state, e.depth) {
            (ExtentState::Data, 0) => &mut a.data_bytes,
            (ExtentState::Data | ExtentState::Parent, _) => &mut a.parent_bytes,
            (ExtentState::Zero, _) => &mut a.zero_bytes,
            (ExtentState::Unallocated, _) => &mut a.unallocated_bytes,
        };
        *slot += e.length;
    }
    Ok(a)
}

#[derive(Serialize)]
struct InfoReport<'a> {
    #[serde(flatten)]
    info: &'a DiskInfo,
    chain: Vec<&'a DiskInfo>,
    allocation: Allocation,
}

fn info(options: &OpenOptions, image: &Path, json: bool) -> Result<u8, Failure> {
    let disk = options.open(image)?;
    let report =
        InfoReport { info: disk.info(), chain: disk.chain().skip(1).collect(), allocation: allocation(&disk)? };
    if json {
        out!("{}", to_json(&report)?);
        return Ok(0);
    }
    print_info(disk.info(), "")?;
    for (depth, parent) in report.chain.iter().enumerate() {
        out!("parent (depth {}):", depth + 1);
        print_info(parent, "  ")?;
    }
    let a = &report.allocation;
    out!(
        "allocation:     {} data, {} zero, {} unallocated, {} from parents",
        a.data_bytes,
        a.zero_bytes,
        a.unallocated_bytes,
        a.parent_bytes
    );
    Ok(0)
}

fn print_info(i: &DiskInfo, pad: &str) -> Result<(), Failure> {
    let name = |v: &dyn erased::Name| v.name();
    out!("{pad}path:           {}", i.path.display());
    out!("{pad}format:         {} ({})", name(&i.format), name(&i.subformat));
    out!("{pad}virtual size:   {} bytes ({})", i.virtual_size, human(i.virtual_size));
    if let Some(b) = i.block_size {
        out!("{pad}block size:     {b} bytes ({})", human(u64::from(b)));
    }
    out!("{pad}sector size:    {} logical, {} physical", i.logical_sector_size, i.physical_sector_size);
    out!("{pad}disk id:        {}", i.disk_id);
    out!("{pad}identity:       {}", i.identity);
    out!("{pad}file size:      {} bytes", i.file_size);
    out!("{pad}creator:        {}", i.creator);
    if let Some(p) = &i.parent {
        out!("{pad}parent id:      {}", p.expected_identity);
        for h in &p.hints {
            out!("{pad}parent hint:    {} {}", name(&h.kind), h.path);
        }
        match &p.resolved {
            Some(r) => out!("{pad}parent file:    {}", r.display()),
            None => out!("{pad}parent file:    (not opened)"),
        }
    }
    if let Some(l) = &i.log_replay {
        out!("{pad}log replayed:   {} entries, {} writes, head sequence {}", l.entries, l.writes, l.head_sequence);
    }
    for w in &i.warnings {
        out!("{pad}warning:        {w}");
    }
    Ok(())
}

mod erased {
    /// snake_case names of the info enums, as in the JSON output.
    pub trait Name {
        fn name(&self) -> String;
    }
    impl<T: serde::Serialize> Name for T {
        fn name(&self) -> String {
            serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
        }
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

#[derive(Serialize)]
struct MapEntry {
    start: u64,
    length: u64,
    state: &'static str,
    depth: u32,
}

fn map_entry(e: &Extent) -> MapEntry {
    let state = match (e.state, e.depth) {
        (ExtentState::Data, 0) => "data",
        (ExtentState::Data | ExtentState::Parent, _) => "parent",
        (ExtentState::Zero, _) => "zero",
        (ExtentState::Unallocated, _) => "unallocated",
    };
    MapEntry { start: e.offset, length: e.length, state, depth: e.depth }
}

fn map(options: &OpenOptions, image: &Path, json: bool, shallow: bool) -> Result<u8, Failure> {
    let options = options.clone().open_parents(!shallow);
    let disk = options.open(image)?;
    let extents = if shallow { disk.own_extents(0..disk.size())? } else { disk.extents(0..disk.size())? };
    let entries: Vec<MapEntry> = extents.iter().map(map_entry).collect();
    if json {
        out!("{}", to_json(&entries)?);
    } else {
        out!("{:>16} {:>16} {:<12} depth", "start", "length", "state");
        for e in &entries {
            out!("{:>16} {:>16} {:<12} {}", e.start, e.length, e.state, e.depth);
        }
    }
    Ok(0)
}

fn check(options: &OpenOptions, image: &Path) -> Result<u8, Failure> {
    let disk = match options.open(image) {
        Ok(d) => d,
        // Not a VHD/VHDX at all (a raw file), or a feature we do not
        // read: nothing to check, which is not damage.
        Err(e) if e.is_unsupported() || e.kind() == ErrorKind::InvalidInput => {
            out!("unsupported: {e}");
            return Ok(2);
        }
        Err(e) => {
            out!("corrupt: {e}");
            return Ok(1);
        }
    };
    let mut problems: Vec<String> =
        disk.check().into_iter().map(|(path, p)| format!("{}: {p}", path.display())).collect();
    // Walk the whole allocation map: every bitmap and BAT lookup must succeed.
    if let Err(e) = disk.extents(0..disk.size()) {
        problems.push(e.to_string());
    }
    if problems.is_empty() {
        out!("clean: {} ({} bytes, {} image(s) in the chain)", image.display(), disk.size(), disk.depth());
        Ok(0)
    } else {
        for p in &problems {
            out!("problem: {p}");
        }
        Ok(1)
    }
}

fn convert(
    options: &OpenOptions,
    input: &Path,
    output: &Path,
    to: Target,
    export: ExportOptions,
    raw_input: bool,
) -> Result<u8, Failure> {
    let disk = if raw_input { options.open_raw(input)? } else { options.open(input)? };
    let report = vhdkit::export::export(&disk, output, to, &export)?;
    note!(
        "wrote {} ({} bytes virtual, {} bytes of data, {} bytes on file) in {:.2} s",
        output.display(),
        report.virtual_size,
        report.bytes_written,
        report.file_size,
        report.seconds
    );
    Ok(0)
}
