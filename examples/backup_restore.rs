//! Back up an image into a store (full the first time, incremental after),
//! optionally from a change tracker's range list, with Ctrl-C cancelling and
//! progress on stderr; then restore the newest backup of that name.
//!
//! `cargo run --example backup_restore -- STORE IMAGE NAME OUT.vhdx [CHANGES.json]`

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use vhdkit::export::Target;
use vhdkit::store::{BackupOptions, ChangeList, InitOptions, ProgressSink, RestoreOptions, Store};
use vhdkit::{CancelToken, ErrorKind};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (store_dir, image, name, out, changes) = match args.as_slice() {
        [s, i, n, o] => (s, i, n, o, None),
        [s, i, n, o, c] => (s, i, n, o, Some(c)),
        _ => return Err("usage: backup_restore STORE IMAGE NAME OUT.vhdx [CHANGES.json]".into()),
    };

    // Open the store; create it only if there is none there. Any other
    // failure (a damaged config, a permission problem) is reported, not
    // papered over with a new store.
    let store = match Store::open(store_dir) {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::NotFound => Store::init(store_dir, &InitOptions::default())?,
        Err(e) => return Err(e.into()),
    };

    // The source: any VHD/VHDX (or differencing chain), read-only.
    let disk = vhdkit::open(image)?;

    // Ctrl-C sets the flag; the backup checks it between chunks and then
    // fails with `Cancelled`, having committed nothing.
    let flag = Arc::new(AtomicBool::new(false));
    let seen = flag.clone();
    ctrlc::set_handler(move || seen.store(true, std::sync::atomic::Ordering::SeqCst))?;

    let mut options = BackupOptions::new(name.as_str());
    options.cancel = CancelToken::from_flag(flag);
    options.progress = ProgressSink::new(|p| eprint!("\r{} / {} bytes", p.bytes_done, p.bytes_total));
    // A tracker's list (ours, Hyper-V RCT or VMware CBT JSON): only the
    // chunks it touches are read. Without one, a checkpoint child reads its
    // own blocks and anything else is compared by hash.
    if let Some(path) = changes {
        options.changes = Some(ChangeList::from_json(&std::fs::read(path)?)?);
    }
    let report = match store.backup(&disk, &options) {
        Err(e) if e.kind() == ErrorKind::Cancelled => return Err("cancelled; nothing was committed".into()),
        other => other?,
    };
    eprintln!();
    println!(
        "{:?} backup {} ({:?}): read {} bytes, stored {} new chunks, {} already stored",
        report.kind, report.id, report.change_source, report.bytes_read, report.new_chunks, report.dedup_chunks
    );
    for b in store.list()? {
        println!("  {} {:<12} {:?} {} bytes", b.id, b.name, b.kind, b.virtual_size);
    }

    // Restore the newest backup of `name`; every chunk is checked as read.
    let restored = store.restore(name, out.as_ref(), Target::Vhdx, &RestoreOptions::default())?;
    println!("restored {} to {out} in {:.2} s", restored.id, restored.export.seconds);
    Ok(())
}
