//! The store commands: init, backup, list, restore, verify, stats, reindex.

use std::io::{IsTerminal, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Subcommand;
use serde::Deserialize;
use vhdkit::disk::OpenOptions;
use vhdkit::export::{ExportOptions, Target};
use vhdkit::store::{BackupOptions, Compression, InitOptions, Progress, Store, StoreError};

use super::{Failure, parse_size};

/// `vhdkit store ...`
#[derive(Subcommand)]
pub(crate) enum StoreCommand {
    /// Create a store; chunk size and compression are fixed for its life.
    Init {
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
    },
    /// Rebuild the global index from the packs alone.
    Reindex { store: PathBuf },
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure { code: 1, message: e.to_string() }
    }
}

pub(crate) fn store_command(cmd: StoreCommand) -> Result<u8, Failure> {
    match cmd {
        StoreCommand::Init { store, chunk_size, compression, zstd_level, pack_size } => {
            let compression = if compression == "zstd" { Compression::Zstd } else { Compression::None };
            let options = InitOptions { chunk_size, compression, zstd_level, pack_size: u64::from(pack_size) };
            let s = Store::init(&store, &options)?;
            println!(
                "initialised {} (chunks {} KiB, compression {:?}, store id {})",
                store.display(),
                s.config().chunk_size / 1024,
                s.config().compression,
                s.config().store_id
            );
            Ok(0)
        }
        StoreCommand::Reindex { store } => {
            let s = Store::open(&store)?;
            let r = s.reindex(false)?;
            println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            Ok(0)
        }
    }
}

/// A progress line on stderr, only when stderr is a terminal.
pub(crate) struct ProgressLine {
    started: Instant,
    what: String,
    enabled: bool,
}

impl ProgressLine {
    pub(crate) fn new(what: &str) -> Self {
        ProgressLine { started: Instant::now(), what: what.to_string(), enabled: std::io::stderr().is_terminal() }
    }

    pub(crate) fn show(&self, p: Progress) {
        if !self.enabled || p.bytes_total == 0 {
            return;
        }
        let frac = p.bytes_done as f64 / p.bytes_total as f64;
        let width = 30;
        let filled = (frac * width as f64) as usize;
        let rate = p.bytes_done as f64 / self.started.elapsed().as_secs_f64().max(1e-3) / (1 << 20) as f64;
        eprint!(
            "\r{} [{}{}] {:5.1}% {:.1}/{:.1} GiB {:.0} MiB/s ",
            self.what,
            "=".repeat(filled),
            " ".repeat(width - filled),
            frac * 100.0,
            p.bytes_done as f64 / (1u64 << 30) as f64,
            p.bytes_total as f64 / (1u64 << 30) as f64,
            rate
        );
        let _ = std::io::stderr().flush();
    }

    pub(crate) fn done(&self) {
        if self.enabled {
            eprintln!();
        }
    }
}

#[derive(Deserialize)]
struct RangeJson {
    offset: u64,
    length: u64,
}

/// Reads `[{"offset": N, "length": N}, ...]`.
fn read_ranges(path: &Path) -> Result<Vec<Range<u64>>, Failure> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Failure { code: 2, message: format!("{}: {e}", path.display()) })?;
    let list: Vec<RangeJson> = serde_json::from_str(&text)
        .map_err(|e| Failure { code: 2, message: format!("{}: not a range list: {e}", path.display()) })?;
    list.into_iter()
        .map(|r| {
            r.offset.checked_add(r.length).map(|end| r.offset..end).ok_or_else(|| Failure {
                code: 2,
                message: format!("{}: range at {} overflows", path.display(), r.offset),
            })
        })
        .collect()
}

/// What `vhdkit backup` was asked.
pub(crate) struct BackupArgs {
    pub(crate) name: String,
    pub(crate) full: bool,
    pub(crate) changed: Option<PathBuf>,
    pub(crate) force: bool,
    pub(crate) max_chain: usize,
}

pub(crate) fn backup(
    options: &OpenOptions,
    store: &Path,
    image: &Path,
    args: BackupArgs,
    json: bool,
) -> Result<u8, Failure> {
    let s = Store::open(store)?;
    let disk = options.open(image)?;
    let changed = args.changed.map(|p| read_ranges(&p)).transpose()?;
    let line = ProgressLine::new("backup");
    let show = |p: Progress| line.show(p);
    let opts = BackupOptions {
        name: args.name,
        full: args.full,
        changed,
        force: args.force,
        max_chain: args.max_chain,
        progress: Some(&show),
        ..Default::default()
    };
    let report = s.backup(&disk, &opts)?;
    line.done();
    if json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        eprintln!(
            "{:?} backup ({}): read {} MiB, {} new chunks ({} MiB), {} deduplicated, {} zero, stored {} MiB in {:.2} s",
            report.kind,
            serde_json::to_value(report.change_source)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            report.bytes_read >> 20,
            report.new_chunks,
            report.new_bytes >> 20,
            report.dedup_chunks,
            report.zero_chunks,
            report.stored_bytes >> 20,
            report.seconds
        );
        println!("{}", report.id);
    }
    Ok(0)
}

pub(crate) fn list(store: &Path, json: bool) -> Result<u8, Failure> {
    let s = Store::open(store)?;
    let backups = s.list()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&backups).unwrap_or_default());
        return Ok(0);
    }
    println!("{:<33} {:<20} {:<12} {:>16} parent", "id", "name", "kind", "virtual size");
    for b in backups {
        println!(
            "{:<33} {:<20} {:<12} {:>16} {}",
            b.id,
            b.name,
            format!("{:?}", b.kind).to_lowercase(),
            b.virtual_size,
            b.parent.unwrap_or_default()
        );
    }
    Ok(0)
}

pub(crate) fn restore(store: &Path, backup: &str, out: &Path, to: Target, json: bool) -> Result<u8, Failure> {
    let s = Store::open(store)?;
    let r = s.restore(backup, out, to, &ExportOptions::default())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
    } else {
        eprintln!(
            "restored {} to {} ({} bytes virtual, {} bytes of data) in {:.2} s",
            r.id,
            out.display(),
            r.export.virtual_size,
            r.export.bytes_written,
            r.export.seconds
        );
    }
    Ok(0)
}

pub(crate) fn verify(store: &Path, json: bool) -> Result<u8, Failure> {
    let s = Store::open(store)?;
    let r = s.verify()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
    } else {
        for d in &r.damaged_chunks {
            println!("damaged chunk {} in pack {}: {}", d.chunk, d.pack, d.reason);
        }
        for p in &r.problems {
            println!("problem: {p}");
        }
        for b in &r.damaged_backups {
            println!("damaged backup: {b}");
        }
        println!(
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

pub(crate) fn stats(store: &Path, json: bool) -> Result<u8, Failure> {
    let s = Store::open(store)?;
    let st = s.stats()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&st).unwrap_or_default());
    } else {
        println!("backups:           {}", st.backups);
        println!("logical bytes:     {}", st.logical_bytes);
        println!("stored bytes:      {}", st.stored_bytes);
        println!("chunks:            {}", st.chunks);
        println!("dedup ratio:       {:.2}", st.dedup_ratio);
        println!("compression ratio: {:.2}", st.compression_ratio);
    }
    Ok(0)
}

pub(crate) fn merge(store: &Path, backup: &str, wait: bool, json: bool) -> Result<u8, Failure> {
    let s = Store::open(store)?;
    let r = s.merge(backup, wait)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
    } else {
        println!("{} is now a full backup ({} manifests folded, {} data slots)", r.id, r.chain_length, r.data_slots);
    }
    Ok(0)
}

pub(crate) fn prune(
    store: &Path,
    name: &str,
    policy: &vhdkit::store::Retention,
    dry_run: bool,
    wait: bool,
    json: bool,
) -> Result<u8, Failure> {
    let s = Store::open(store)?;
    let r = s.prune(name, policy, dry_run, wait)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
    } else {
        let verb = if dry_run { "would" } else { "did" };
        for id in &r.merged {
            println!("{verb} merge {id} (its chain runs through a dropped backup)");
        }
        for id in &r.dropped {
            println!("{verb} drop {id}");
        }
        println!("{} kept, {} dropped", r.kept.len(), r.dropped.len());
    }
    Ok(0)
}

pub(crate) fn vacuum(store: &Path, threshold: f64, wait: bool, json: bool) -> Result<u8, Failure> {
    let s = Store::open(store)?;
    let r = s.vacuum(&vhdkit::store::VacuumOptions { threshold, wait })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
    } else {
        println!(
            "reclaimed {} bytes ({} -> {}): {} packs deleted, {} rewritten, {} live chunks, {:.2} s",
            r.bytes_reclaimed,
            r.bytes_before,
            r.bytes_after,
            r.packs_deleted,
            r.packs_rewritten,
            r.live_chunks,
            r.seconds
        );
    }
    Ok(0)
}
