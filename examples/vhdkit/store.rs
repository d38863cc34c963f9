//! The store commands: init, backup, list, restore, verify, stats, merge,
//! prune, vacuum, reindex.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use vhdkit::disk::OpenOptions;
use vhdkit::export::Target;
use vhdkit::store::{
    Attachment, BackupOptions, ChangeList, Compression, DiskJob, InitOptions, MergeOptions, Operation, Progress,
    ProgressSink, PruneOptions, ReindexOptions, RestoreOptions, Retention, Store, VacuumOptions, VerifyOptions,
};
use vhdkit::{CancelToken, export::InPlace};

use super::{Failure, parse_size, to_json as json};

/// How stores are opened (the global `--cache-dir`, `--no-cache`,
/// `--read-only`, `--connections` and `--read-ahead`).
static OPEN: std::sync::OnceLock<vhdkit::store::OpenOptions> = std::sync::OnceLock::new();

/// The global options that say how stores are opened.
pub(crate) struct OpenArgs {
    pub cache_dir: Option<PathBuf>,
    pub no_cache: bool,
    pub read_only: bool,
    pub connections: Option<usize>,
    pub read_ahead: Option<u64>,
}

pub(crate) fn set_open_options(a: OpenArgs) {
    let mut o = vhdkit::store::OpenOptions::default();
    o.cache_dir = a.cache_dir;
    o.no_cache = a.no_cache;
    o.read_only = a.read_only;
    o.connections = a.connections;
    o.read_ahead = a.read_ahead;
    let _ = OPEN.set(o);
}

/// The snake_case name serde gives a value (`zstd`, `incremental`,
/// `differencing`), as the JSON output spells it: never a Rust debug name.
pub(crate) fn name(v: &impl serde::Serialize) -> String {
    use super::erased::Name;
    v.name()
}

/// Says what an operator should know about a store (its warnings).
pub(crate) fn warn_about(store: &Store) {
    for w in store.warnings() {
        note!("vhdkit: warning: {w}");
    }
}

/// After a read: says so if the store turned out read-only (its storage
/// refused the read's lease), which the open could not know.
fn warn_if_found_read_only(store: &Store) {
    let asked = OPEN.get().is_some_and(|o| o.read_only);
    if store.is_read_only() && !asked {
        for w in store.warnings().into_iter().filter(|w| w.contains("read-only")) {
            note!("vhdkit: warning: {w}");
        }
    }
}

/// Opens a store (a folder or a URL); an encrypted one with the key the
/// command line, the environment or the terminal gives (see `keys`).
pub(crate) fn open_store(location: &Path) -> Result<Store, Failure> {
    let mut options = OPEN.get_or_init(Default::default).clone();
    options.key = super::keys::given_key()?;
    options.key_id = super::keys::key_id();
    let store = match Store::open_with(location, &options) {
        Err(vhdkit::store::StoreError::KeyRequired { .. }) if options.key.is_none() => {
            options.key = Some(super::keys::key_for(location)?);
            Store::open_with(location, &options)?
        }
        other => other?,
    };
    warn_about(&store);
    if super::keys::encryption_required() && !store.is_encrypted() {
        return Err(Failure {
            code: 1,
            message: format!("{} is not encrypted (--require-encryption): refusing it", location.display()),
        });
    }
    Ok(store)
}

/// Opens a store without its key: an encrypted store can then only be
/// verified (structure, sizes, CRCs) and its keys listed.
pub(crate) fn open_store_keyless(location: &Path) -> Result<Store, Failure> {
    let mut options = OPEN.get_or_init(Default::default).clone();
    options.without_key = true;
    Ok(Store::open_with(location, &options)?)
}

/// `vhdkit store ...`
#[derive(Subcommand)]
pub(crate) enum StoreCommand {
    /// Create a store; chunk size and compression are fixed for its life.
    Init {
        /// A folder (which must not exist, or be empty) or a URL
        /// (s3://BUCKET/PREFIX: the bucket must exist, with nothing under PREFIX).
        store: PathBuf,
        /// Chunk size: a power of two from 64K to 4M.
        #[arg(long, value_parser = parse_size, default_value = "512K")]
        chunk_size: u32,
        /// none or zstd.
        #[arg(long, default_value = "none", value_parser = ["none", "zstd"])]
        compression: String,
        /// zstd level (1-22).
        #[arg(long, default_value_t = 3)]
        zstd_level: i32,
        /// Target pack size.
        #[arg(long, value_parser = parse_size, default_value = "64M")]
        pack_size: u32,
        /// Keep every object backups need immutable for this many days (S3
        /// Object Lock: the bucket must have it enabled); vacuum keeps
        /// extending it for live backups.
        #[arg(long, value_name = "DAYS")]
        object_lock_days: Option<u32>,
        /// governance (users allowed to bypass it may still delete) or
        /// compliance (nobody can, until the date passes).
        #[arg(long, default_value = "governance", value_parser = ["governance", "compliance"], requires = "object_lock_days")]
        lock_mode: String,
        /// Encrypt the store (AES-256-GCM, keyed chunk ids) under a
        /// passphrase (--password-file, VHDKIT_PASSWORD or the terminal) or
        /// --key-file.
        #[arg(long)]
        encrypt: bool,
        #[command(flatten)]
        argon2: super::keys::Argon2Args,
        /// Make the store even where the storage ignores conditional writes
        /// (If-None-Match: *), which init probes for and otherwise refuses:
        /// one writer at a time is then a convention, recorded in the store
        /// and repeated at every open.
        #[arg(long)]
        single_writer: bool,
        /// Create missing parent folders of a store folder (by default they
        /// must exist, so an unmounted share is not silently replaced by a
        /// folder on the local disk).
        #[arg(long)]
        parents: bool,
    },
    /// Rebuild the global index from the packs alone.
    Reindex {
        /// The store: a folder or a URL (s3://BUCKET/PREFIX).
        store: PathBuf,
        /// Wait for another maintenance run (merge, prune, vacuum, reindex)
        /// to end instead of failing with "busy"; backups never block it.
        #[arg(long)]
        wait: bool,
    },
}

pub(crate) fn store_command(cmd: StoreCommand) -> Result<u8, Failure> {
    match cmd {
        StoreCommand::Init {
            store,
            chunk_size,
            compression,
            zstd_level,
            pack_size,
            object_lock_days,
            lock_mode,
            encrypt,
            argon2,
            single_writer,
            parents,
        } => {
            let mut options = InitOptions::default();
            options.single_writer = single_writer;
            options.create_parents = parents;
            if let Some(key) = super::keys::init_key(encrypt)? {
                let mut e = vhdkit::store::Encryption::new(key);
                e.argon2 = argon2.params();
                options.encryption = Some(e);
            }
            options.object_lock = object_lock_days.map(|days| vhdkit::store::ObjectLock {
                days,
                mode: if lock_mode == "compliance" {
                    vhdkit::store::LockMode::Compliance
                } else {
                    vhdkit::store::LockMode::Governance
                },
            });
            options.chunk_size = chunk_size;
            options.compression = if compression == "zstd" { Compression::Zstd } else { Compression::None };
            options.zstd_level = zstd_level;
            options.pack_size = u64::from(pack_size);
            let s = Store::init(&store, &options)?;
            out!(
                "initialised {} (chunks {} KiB, compression {}, {}, store id {})",
                store.display(),
                s.config().chunk_size / 1024,
                name(&s.config().compression),
                if s.is_encrypted() { "encrypted" } else { "not encrypted" },
                s.config().store_id
            );
            warn_about(&s);
            Ok(0)
        }
        StoreCommand::Reindex { store, wait } => {
            let s = open_store(&store)?;
            let mut options = ReindexOptions::default();
            options.wait = wait;
            out!("{}", json(&s.reindex(&options)?)?);
            Ok(0)
        }
    }
}

/// Progress bars on stderr, one per disk of a job, only on a terminal.
struct Bars {
    multi: MultiProgress,
    bars: Mutex<BTreeMap<usize, ProgressBar>>,
    labels: Vec<String>,
}

impl Bars {
    /// A sink that draws bars labelled `labels` (one per item).
    fn sink(labels: Vec<String>) -> (ProgressSink, Arc<Bars>) {
        let target =
            if std::io::stderr().is_terminal() { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        let bars = Arc::new(Bars { multi: MultiProgress::with_draw_target(target), bars: Mutex::default(), labels });
        let b = bars.clone();
        (ProgressSink::new(move |p| b.show(p)), bars)
    }

    fn show(&self, p: Progress) {
        let Ok(mut bars) = self.bars.lock() else { return };
        let bar = bars.entry(p.item).or_insert_with(|| {
            let bar = self.multi.add(ProgressBar::new(p.bytes_total));
            let style = ProgressStyle::with_template(
                "{prefix:>12} [{bar:30}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            let what = match p.operation {
                Operation::Backup => "backup",
                Operation::Restore => "restore",
                Operation::Verify => "verify",
                Operation::Vacuum => "vacuum",
                _ => "export",
            };
            bar.set_style(style);
            bar.set_prefix(self.labels.get(p.item).cloned().unwrap_or_else(|| what.to_string()));
            bar
        });
        bar.set_length(p.bytes_total);
        bar.set_position(p.bytes_done);
        if p.bytes_done >= p.bytes_total && p.bytes_total > 0 {
            bar.finish();
        }
    }

    fn clear(&self) {
        let _ = self.multi.clear();
    }
}

/// `vhdkit backup`.
#[derive(Args)]
pub(crate) struct BackupArgs {
    /// The store: a folder or a URL (s3://BUCKET/PREFIX).
    store: PathBuf,
    /// The disk image(s): VHD, VHDX or a differencing chain's top (with
    /// --from raw, raw images or block devices). Several disks of one VM
    /// make one restore point.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// The job's name (a VM's or a disk's): incrementals continue the newest
    /// backup of the same name.
    #[arg(long)]
    name: String,
    /// Each disk's label in a multi-disk job (once per image, in order;
    /// default: the image's file name). Give stable labels: Hyper-V renames
    /// the running disk at every checkpoint. A disk whose label is new but
    /// whose chain holds the image an earlier job captured continues that
    /// disk's chain anyway, and says so.
    #[arg(long)]
    label: Vec<String>,
    /// A full backup even if an incremental is possible.
    #[arg(long)]
    full: bool,
    /// Changed byte ranges since the previous backup: our [{"offset","length"}], Hyper-V's
    /// {"ChangedByteOffsets","ChangedByteLengths","ProcessedByteLength"} or VMware's
    /// {"startOffset","length","changedArea"}, in UTF-8 or UTF-16 (PowerShell's files as
    /// they come). Once per image, in order.
    #[arg(long)]
    changed: Vec<PathBuf>,
    /// A change list whose tracker answered for only part of the disk
    /// (ProcessedByteLength short of its size, a CBT area smaller than it)
    /// is refused; with this, the part it did not cover is read as changed.
    #[arg(long)]
    unprocessed_as_changed: bool,
    /// The change tracker's token for the disk's state now (RCT id, CBT change id). Once per image.
    #[arg(long)]
    change_id: Vec<String>,
    /// Refuse the range list unless the previous backup stored this token
    /// (needs --changed). Once per image.
    #[arg(long)]
    since: Vec<String>,
    /// Back up even if the change information does not match the previous backup.
    #[arg(long)]
    force: bool,
    /// Merge into a full backup when the incremental chain grows past this.
    #[arg(long, default_value_t = 14)]
    max_chain: usize,
    /// A tag kept with the restore point: key=value (repeat for more).
    #[arg(long, value_parser = parse_tag)]
    tag: Vec<(String, String)>,
    /// A small file kept with the restore point (a VM's configuration); repeat for more.
    #[arg(long)]
    attach: Vec<PathBuf>,
    /// Read the images as raw disks (a snapshot device, a raw file) instead
    /// of sniffing VHD/VHDX.
    #[arg(long, value_parser = ["raw"])]
    from: Option<String>,
    /// Fail, committing nothing, if a source file changes while it is read
    /// (a running VM's disk without a checkpoint); by default the backup is
    /// kept with a warning, in the report and the job log.
    #[arg(long)]
    require_stable: bool,
    /// Back up a served backup with what a client wrote into this overlay
    /// (from `serve --overlay`): the one positional argument is then the
    /// backup, and the change set is the overlay's map.
    #[arg(long, conflicts_with_all = ["changed", "full", "from"])]
    overlay: Option<PathBuf>,
    /// Print the report as JSON (one disk: its report; several: the point's).
    #[arg(long)]
    json: bool,
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not key=value"))?;
    if k.is_empty() {
        return Err(format!("{s:?} has an empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// The `n`th of a per-image option given `count` times for `images` images.
fn per_image<T: Clone>(values: &[T], images: usize, what: &str) -> Result<Vec<Option<T>>, Failure> {
    match values.len() {
        0 => Ok(vec![None; images]),
        n if n == images => Ok(values.iter().cloned().map(Some).collect()),
        n => Err(Failure::usage(format!("{what} given {n} times for {images} images: once per image, in order"))),
    }
}

/// The backup a served backup plus its overlay makes: an incremental of
/// that backup when it is the newest of `--name` (its change set is the
/// overlay's map), else an incremental by hash comparison.
fn backup_overlay(args: &BackupArgs, overlay: &Path, cancel: &CancelToken) -> Result<u8, Failure> {
    let [spec] = args.images.as_slice() else {
        return Err(Failure::usage("--overlay backs up exactly one served backup"));
    };
    let spec = spec.to_string_lossy().into_owned();
    let s = open_store(&args.store)?;
    let reader = s.reader(&spec)?;
    let base_id = reader.id().clone();
    let size = vhdkit::VirtualDisk::info(&reader).virtual_size;
    let overlay = vhdkit::cow::CowOverlay::open(overlay, size)
        .map_err(|e| Failure::usage(format!("{}: {e}", overlay.display())))?;
    let overlay = Arc::new(overlay);
    let disk = vhdkit::cow::CowDisk::new(Arc::new(reader), overlay.clone())?;
    let newest = s.list()?.into_iter().filter(|b| b.name == args.name).map(|b| b.id).max();
    let mut opts = BackupOptions::new(args.name.clone());
    opts.force = args.force;
    opts.max_chain = args.max_chain;
    opts.cancel = cancel.clone();
    if newest.as_ref() == Some(&base_id) {
        opts.changes = Some(ChangeList::from_ranges(overlay.changed_ranges()));
    }
    let report = s.backup(&disk, &opts)?;
    if args.json {
        out!("{}", json(&report)?);
    } else {
        note!(
            "{} backup of {base_id} and its overlay ({}): {} new chunks",
            name(&report.kind),
            name(&report.change_source),
            report.new_chunks
        );
        out!("{}", report.id);
    }
    Ok(0)
}

/// A backup report's line for a person.
fn describe(r: &vhdkit::store::BackupReport) -> String {
    format!(
        "{} backup ({}): read {} MiB, {} new chunks ({} MiB), {} deduplicated, {} zero, stored {} MiB in {:.2} s",
        name(&r.kind),
        name(&r.change_source),
        r.bytes_read >> 20,
        r.new_chunks,
        r.new_bytes >> 20,
        r.dedup_chunks,
        r.zero_chunks,
        r.stored_bytes >> 20,
        r.seconds
    )
}

/// What a person should hear about one disk's backup besides its figures.
fn warn_report(r: &vhdkit::store::BackupReport) {
    if let Some(l) = &r.continues_label {
        note!(
            "vhdkit: disk {} continues the chain of disk {l}: its chain holds the image that backup captured",
            r.disk.as_deref().unwrap_or("?")
        );
    }
    for c in &r.source_changed {
        note!("vhdkit: warning: {c}; the backup is kept but may not be of one instant (--require-stable refuses it)");
    }
}

pub(crate) fn backup(options: &OpenOptions, args: BackupArgs, cancel: &CancelToken) -> Result<u8, Failure> {
    if let Some(overlay) = args.overlay.clone() {
        return backup_overlay(&args, &overlay, cancel);
    }
    let n = args.images.len();
    let changed = per_image(&args.changed, n, "--changed")?;
    let change_ids = per_image(&args.change_id, n, "--change-id")?;
    let sinces = per_image(&args.since, n, "--since")?;
    let given_labels = per_image(&args.label, n, "--label")?;
    if changed.iter().zip(&sinces).any(|(c, s)| c.is_none() && s.is_some()) {
        return Err(Failure::usage(
            "--since names the tracker state a --changed list starts from: give the list too (once per image)",
        ));
    }
    let lists = changed
        .into_iter()
        .map(|p| {
            p.map(|p| {
                let text = std::fs::read(&p).map_err(|e| Failure::usage(format!("{}: {e}", p.display())))?;
                ChangeList::from_json(&text).map_err(|e| Failure::usage(format!("{}: {e}", p.display())))
            })
            .transpose()
        })
        .collect::<Result<Vec<_>, Failure>>()?;
    let raw = args.from.is_some();
    let disks = args
        .images
        .iter()
        .map(|i| if raw { options.open_raw(i) } else { options.open(i) })
        .collect::<Result<Vec<_>, _>>()?;
    let lists: Vec<Option<ChangeList>> = lists
        .into_iter()
        .zip(&disks)
        .map(|(l, d)| l.map(|l| if args.unprocessed_as_changed { l.cover_rest(d.size()) } else { l }))
        .collect();
    let s = open_store(&args.store)?;
    let labels: Vec<String> = args
        .images
        .iter()
        .zip(given_labels)
        .map(|(p, l)| l.unwrap_or_else(|| p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()))
        .collect();
    let (sink, bars) = Bars::sink(labels.clone());
    let mut opts = BackupOptions::new(args.name);
    opts.full = args.full;
    opts.force = args.force;
    opts.max_chain = args.max_chain;
    opts.require_stable = args.require_stable;
    opts.tags = args.tag.into_iter().collect();
    opts.attachments = args.attach.iter().map(Attachment::from_file).collect::<Result<Vec<_>, _>>()?;
    opts.cancel = cancel.clone();
    opts.progress = sink;
    if n == 1 && args.label.is_empty() {
        opts.changes = lists.into_iter().next().flatten();
        opts.change_id = change_ids.into_iter().next().flatten();
        opts.since = sinces.into_iter().next().flatten();
        let result = s.backup(&disks[0], &opts);
        bars.clear();
        let report = result?;
        warn_report(&report);
        if args.json {
            out!("{}", json(&report)?);
        } else {
            note!("{}", describe(&report));
            out!("{}", report.id);
        }
        return Ok(0);
    }
    let mut jobs = Vec::with_capacity(n);
    for (((disk, label), changes), (change_id, since)) in
        disks.iter().zip(labels).zip(lists).zip(change_ids.into_iter().zip(sinces))
    {
        let mut job = DiskJob::new(label, disk);
        job.changes = changes;
        job.change_id = change_id;
        job.since = since;
        jobs.push(job);
    }
    let result = s.backup_point(&jobs, &opts);
    bars.clear();
    let report = result?;
    for r in &report.disks {
        warn_report(r);
    }
    if args.json {
        out!("{}", json(&report)?);
    } else {
        for (job, r) in jobs.iter().zip(&report.disks) {
            note!("{}: {} {}", job.label, r.id, describe(r));
        }
        out!("{}", report.point.map(|p| p.to_string()).unwrap_or_default());
    }
    Ok(0)
}

pub(crate) fn list(store: &Path, points: bool, json_out: bool) -> Result<u8, Failure> {
    let s = open_store(store)?;
    if points {
        let points = s.points()?;
        if json_out {
            out!("{}", json(&points)?);
            return Ok(0);
        }
        out!("{:<33} {:<20} {:>5} {:>11} tags", "point", "name", "disks", "attachments");
        for p in points {
            let tags: Vec<String> = p.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out!("{:<33} {:<20} {:>5} {:>11} {}", p.id, p.name, p.disks.len(), p.attachments.len(), tags.join(" "));
        }
        return Ok(0);
    }
    let backups = s.list()?;
    if json_out {
        out!("{}", json(&backups)?);
        return Ok(0);
    }
    out!("{:<33} {:<20} {:<12} {:>16} {:<16} parent", "id", "name", "kind", "virtual size", "disk");
    for b in backups {
        out!(
            "{:<33} {:<20} {:<12} {:>16} {:<16} {}",
            b.id,
            b.name,
            name(&b.kind),
            b.virtual_size,
            b.disk.unwrap_or_default(),
            b.parent.map(|p| p.to_string()).unwrap_or_default()
        );
    }
    Ok(0)
}

/// `vhdkit restore`.
#[derive(Args)]
pub(crate) struct RestoreArgs {
    /// The store: a folder or a URL (s3://BUCKET/PREFIX).
    store: PathBuf,
    /// A backup or restore point: id, name (the newest), or id prefix.
    backup: String,
    /// The output file (refused if it exists, unless --force); `-` streams
    /// raw to stdout; with --point, a folder (refused if not empty, unless
    /// --force); with --in-place, an existing file or block device.
    output: PathBuf,
    /// raw, vhd, vhd-fixed, vhdx or vhdx-fixed.
    #[arg(long = "to")]
    to: Target,
    /// Which disk of a restore point (its label).
    #[arg(long)]
    disk: Option<String>,
    /// Restore every disk and attachment of the restore point into the folder OUT.
    #[arg(long, conflicts_with_all = ["disk", "in_place"])]
    point: bool,
    /// Write raw over the existing file or block device OUT (every byte, zeros included).
    #[arg(long)]
    in_place: bool,
    /// With --in-place: the target already reads as zeros; write only data.
    #[arg(long, requires = "in_place")]
    assume_zeroed: bool,
    /// Replace an existing OUT file (or write into a --point folder that is not empty).
    #[arg(long)]
    force: bool,
    /// Block size of a VHD/VHDX output, e.g. 2M or 32M.
    #[arg(long, value_parser = parse_size)]
    block_size: Option<u32>,
    /// Print the report as JSON (not with OUT `-`, which is the data).
    #[arg(long)]
    json: bool,
}

/// Refuses, before any data is read, a restore that would destroy what it
/// was not asked to or that cannot be written: an existing OUT without
/// --force, a folder where a file goes, a missing or unwritable folder.
fn check_output(args: &RestoreArgs) -> Result<(), Failure> {
    let out = &args.output;
    if args.in_place {
        return match std::fs::metadata(out) {
            Ok(m) if m.is_dir() => {
                Err(Failure::usage(format!("{}: --in-place writes over a file or device, not a folder", out.display())))
            }
            Ok(_) => Ok(()),
            Err(e) => {
                Err(Failure::usage(format!("{}: --in-place needs an existing file or device: {e}", out.display())))
            }
        };
    }
    if args.point {
        if out.is_file() {
            return Err(Failure::usage(format!("{}: --point writes into a folder, and this is a file", out.display())));
        }
        if out.is_dir()
            && !args.force
            && std::fs::read_dir(out).map_err(|e| Failure::usage(format!("{}: {e}", out.display())))?.next().is_some()
        {
            return Err(Failure::usage(format!(
                "{} is not empty: restoring a point there could replace its files (--force to write anyway)",
                out.display()
            )));
        }
        let folder = if out.is_dir() { out.as_path() } else { out.parent().unwrap_or(Path::new(".")) };
        return writable_folder(if folder.as_os_str().is_empty() { Path::new(".") } else { folder });
    }
    match std::fs::metadata(out) {
        Ok(m) if m.is_dir() => {
            return Err(Failure::usage(format!("{} is a folder: name the file to restore to", out.display())));
        }
        Ok(_) if !args.force => {
            return Err(Failure::usage(format!(
                "{} exists: refusing to replace it (--force to replace)",
                out.display()
            )));
        }
        _ => {}
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    writable_folder(parent)
}

/// Whether files can be made in `folder`: it exists, is a folder, and
/// takes a file (made and removed at once: permissions alone do not say,
/// for root, a read-only mount or an ACL).
fn writable_folder(folder: &Path) -> Result<(), Failure> {
    if !folder.is_dir() {
        return Err(Failure::usage(format!("{} does not exist or is not a folder", folder.display())));
    }
    let probe = folder.join(format!(".vhdkit-write-test-{}", std::process::id()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(Failure { code: 1, message: format!("{} cannot be written: {e}", folder.display()) }),
    }
}

pub(crate) fn restore(args: RestoreArgs, cancel: &CancelToken) -> Result<u8, Failure> {
    let stream = args.output.as_os_str() == "-";
    if (stream || args.in_place) && args.to != Target::Raw {
        return Err(Failure::usage("streaming to stdout and --in-place write raw images: use --to raw"));
    }
    if !stream {
        check_output(&args)?;
    }
    let s = open_store(&args.store)?;
    let (sink, bars) = Bars::sink(Vec::new());
    let mut options = RestoreOptions::default();
    options.disk = args.disk.clone();
    options.export.block_size = args.block_size;
    // Checked up front, and again when the output is put in place: one
    // that appeared meanwhile is kept too.
    options.export.replace = args.force;
    options.export.cancel = cancel.clone();
    options.export.progress = sink;
    if args.point {
        let result = s.restore_point(&args.backup, &args.output, args.to, &options);
        bars.clear();
        let r = result?;
        if args.json {
            out!("{}", json(&r)?);
        } else {
            for d in &r.disks {
                note!("restored {} to {}", d.id, d.output.display());
            }
            for a in &r.attachments {
                note!("wrote attachment {}", a.display());
            }
        }
        return Ok(0);
    }
    let result = if stream {
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        s.restore_to_writer(&args.backup, &mut lock, Path::new("<stdout>"), &options)
    } else if args.in_place {
        options.in_place = if args.assume_zeroed { InPlace::AssumeZeroed } else { InPlace::WriteAll };
        s.restore_in_place(&args.backup, &args.output, &options)
    } else {
        s.restore(&args.backup, &args.output, args.to, &options)
    };
    bars.clear();
    warn_if_found_read_only(&s);
    let r = match result {
        // The reader of a stream went away: stop quietly.
        Err(e) if e.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe) => return Ok(0),
        other => other?,
    };
    if args.json && !stream {
        out!("{}", json(&r)?);
    } else {
        note!(
            "restored {} to {} ({} bytes virtual, {} bytes of data) in {:.2} s",
            r.id,
            r.output.display(),
            r.export.virtual_size,
            r.export.bytes_written,
            r.export.seconds
        );
    }
    Ok(0)
}

pub(crate) fn verify(store: &Path, mut options: VerifyOptions, no_key: bool, json_out: bool) -> Result<u8, Failure> {
    let s = if no_key { open_store_keyless(store)? } else { open_store(store)? };
    let (sink, bars) = Bars::sink(Vec::new());
    options.progress = sink;
    let result = s.verify(&options);
    bars.clear();
    let r = result?;
    warn_if_found_read_only(&s);
    if json_out {
        out!("{}", json(&r)?);
    } else {
        for d in &r.damaged_chunks {
            out!("damaged chunk {} in pack {}: {}", d.chunk, d.pack, d.reason);
        }
        for p in &r.problems {
            out!("problem: {p}");
        }
        for b in &r.damaged_backups {
            out!("damaged backup: {b}");
        }
        for p in &r.damaged_points {
            out!("damaged restore point: {p}");
        }
        if r.structure_only {
            out!("checked without the key: structure, sizes and CRCs only (no tags, no backup's map)");
        }
        if let Some(seed) = r.sample_seed {
            out!("sampled {} of {} packs (seed {seed})", r.packs_checked, r.packs_total);
        } else if r.packs_checked < r.packs_total {
            out!("read {} of {} packs (the rest were written before --since)", r.packs_checked, r.packs_total);
        }
        out!(
            "{}: {} packs, {} chunks, {} backups checked in {:.2} s",
            if r.ok { "ok" } else { "DAMAGE FOUND" },
            r.packs_checked,
            r.chunks_checked,
            r.backups_checked,
            r.seconds
        );
    }
    Ok(if r.ok { 0 } else { 1 })
}

/// `vhdkit copy`: opens both stores (the destination with its own key)
/// and copies. Exit 1 if any backup failed to copy.
pub(crate) fn copy(
    from: &Path,
    to: &Path,
    mut options: vhdkit::store::CopyOptions,
    dest_key_file: Option<&Path>,
    dest_password_file: Option<&Path>,
    json_out: bool,
) -> Result<u8, Failure> {
    let src = open_store(from)?;
    let dst = open_dest(to, dest_key_file, dest_password_file)?;
    let (sink, bars) = Bars::sink(Vec::new());
    options.progress = sink;
    let result = src.copy_to(&dst, &options);
    bars.clear();
    let r = result?;
    if json_out {
        out!("{}", json(&r)?);
    } else {
        for f in &r.failed {
            out!("failed: {}: {}", f.id, f.reason);
        }
        out!(
            "copied {} backups ({} restore points), skipped {}, failed {}: {} chunks, {} bytes moved in {:.2} s",
            r.backups_copied.len(),
            r.points_copied.len(),
            r.backups_skipped.len(),
            r.failed.len(),
            r.chunks_moved,
            r.bytes_moved,
            r.seconds
        );
    }
    Ok(if r.failed.is_empty() { 0 } else { 1 })
}

/// The destination of a copy, with its own key: `--dest-key-file`, else
/// `--dest-password-file`, else `VHDKIT_DEST_PASSWORD`; never the
/// source's key, and never a prompt (two passphrases typed in a row are
/// too easy to swap).
fn open_dest(to: &Path, key_file: Option<&Path>, password_file: Option<&Path>) -> Result<Store, Failure> {
    let mut options = OPEN.get_or_init(Default::default).clone();
    options.read_only = false;
    options.key = match (key_file, password_file) {
        (Some(k), _) => Some(vhdkit::store::StoreKey::read_key_file(k).map_err(|e| Failure::usage(e.to_string()))?),
        (None, Some(p)) => Some(vhdkit::store::StoreKey::passphrase(super::keys::read_password_file(p)?)),
        (None, None) => match std::env::var("VHDKIT_DEST_PASSWORD") {
            Ok(p) if !p.is_empty() => Some(vhdkit::store::StoreKey::passphrase(p)),
            _ => None,
        },
    };
    let store = Store::open_with(to, &options).map_err(|e| match e {
        vhdkit::store::StoreError::KeyRequired { .. } => Failure {
            code: 1,
            message: format!(
                "{} is encrypted: give --dest-key-file, --dest-password-file or VHDKIT_DEST_PASSWORD",
                to.display()
            ),
        },
        other => other.into(),
    })?;
    warn_about(&store);
    Ok(store)
}

pub(crate) fn stats(store: &Path, json_out: bool) -> Result<u8, Failure> {
    let s = open_store(store)?;
    let st = s.stats()?;
    warn_if_found_read_only(&s);
    if json_out {
        out!("{}", json(&st)?);
    } else {
        out!("backups:           {}", st.backups);
        out!("restore points:    {}", st.points);
        out!("logical bytes:     {}", st.logical_bytes);
        out!("stored bytes:      {}", st.stored_bytes);
        out!("chunks:            {}", st.chunks);
        out!("dedup ratio:       {:.2}", st.dedup_ratio);
        out!("compression ratio: {:.2}", st.compression_ratio);
    }
    Ok(0)
}

pub(crate) fn log(store: &Path, last: Option<usize>, json_out: bool) -> Result<u8, Failure> {
    let s = open_store(store)?;
    let mut entries = s.job_log()?;
    if let Some(n) = last {
        entries.drain(..entries.len().saturating_sub(n));
    }
    if json_out {
        out!("{}", json(&entries)?);
        return Ok(0);
    }
    for e in &entries {
        let report = &e["report"];
        let what = report["id"].as_str().or_else(|| report["point"].as_str()).unwrap_or("");
        out!(
            "{}  {:<13} {:<32} {}@{}",
            e["time"].as_str().unwrap_or("?"),
            e["op"].as_str().unwrap_or("?"),
            what,
            e["pid"],
            e["host"].as_str().unwrap_or("?")
        );
    }
    Ok(0)
}

pub(crate) fn merge(
    store: &Path,
    backup: &str,
    disk: Option<String>,
    wait: bool,
    json_out: bool,
) -> Result<u8, Failure> {
    let s = open_store(store)?;
    let mut options = MergeOptions::default();
    options.disk = disk;
    options.wait = wait;
    let r = s.merge(backup, &options)?;
    if json_out {
        out!("{}", json(&r)?);
    } else {
        out!("{} is now a full backup ({} manifests folded, {} data slots)", r.id, r.chain_length, r.data_slots);
    }
    Ok(0)
}

pub(crate) fn prune(
    store: &Path,
    name: &str,
    policy: Retention,
    dry_run: bool,
    wait: bool,
    json_out: bool,
) -> Result<u8, Failure> {
    let s = open_store(store)?;
    let mut options = PruneOptions::new(policy);
    options.dry_run = dry_run;
    options.wait = wait;
    let r = s.prune(name, &options)?;
    if json_out {
        out!("{}", json(&r)?);
    } else {
        let verb = if dry_run { "would" } else { "did" };
        for id in &r.merged {
            out!("{verb} merge {id} (its chain runs through a dropped backup)");
        }
        for p in &r.dropped_points {
            out!("{verb} drop restore point {p}");
        }
        for id in &r.dropped {
            out!("{verb} drop {id}");
        }
        out!("{} kept, {} dropped", r.kept.len(), r.dropped.len());
    }
    Ok(0)
}

pub(crate) fn vacuum(
    store: &Path,
    threshold: f64,
    (grace, keep_unfinished): (std::time::Duration, std::time::Duration),
    wait: bool,
    json_out: bool,
    cancel: &CancelToken,
) -> Result<u8, Failure> {
    let s = open_store(store)?;
    let (sink, bars) = Bars::sink(Vec::new());
    let mut options = VacuumOptions::default();
    options.threshold = threshold;
    options.grace = grace;
    options.keep_unfinished = keep_unfinished;
    options.wait = wait;
    options.cancel = cancel.clone();
    options.progress = sink;
    let result = s.vacuum(&options);
    bars.clear();
    let r = result?;
    if json_out {
        out!("{}", json(&r)?);
    } else {
        // Three things, said apart: what this run deleted (condemned by
        // earlier runs), what it condemned (deleted by a later run), and
        // the store's size, which grows while rewritten packs' old copies
        // wait out their grace period.
        out!(
            "deleted {} packs and {} other objects that earlier runs condemned: reclaimed {} bytes",
            r.packs_deleted,
            r.objects_deleted,
            r.bytes_reclaimed
        );
        if r.packs_condemned + r.objects_condemned > 0 {
            out!(
                "condemned {} packs and {} other objects: a vacuum deletes them after the grace period ({} s), once \
                 every lease held now has ended",
                r.packs_condemned,
                r.objects_condemned,
                grace.as_secs()
            );
        }
        if r.records_pending > 0 {
            out!(
                "{} earlier condemnation records still wait for their grace period or for leases held when they were made",
                r.records_pending
            );
        }
        out!(
            "rewrote {} packs into {}; {} live chunks; store {} -> {} bytes; {:.2} s",
            r.packs_rewritten,
            r.packs_written,
            r.live_chunks,
            r.bytes_before,
            r.bytes_after,
            r.seconds
        );
        if r.records_locked > 0 {
            out!("{} records are due but wait for their objects' Object Lock to end", r.records_locked);
        }
        if r.retention_extended > 0 {
            out!("extended the Object Lock of {} objects live backups need", r.retention_extended);
        }
    }
    Ok(0)
}
