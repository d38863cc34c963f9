//! Back up an image into a store (full the first time, incremental after),
//! list the store, and restore the newest backup of that name.
//!
//! `cargo run --example backup_restore -- STORE IMAGE NAME OUT.vhdx`

use vhdkit::export::{ExportOptions, Target};
use vhdkit::store::{BackupOptions, InitOptions, Store};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [store_dir, image, name, out] = args.as_slice() else {
        return Err("usage: backup_restore STORE IMAGE NAME OUT.vhdx".into());
    };

    // Open the store, or create one (512 KiB chunks, no compression).
    let store = match Store::open(store_dir) {
        Ok(s) => s,
        Err(_) => Store::init(store_dir, &InitOptions::default())?,
    };

    // The source: any VHD/VHDX (or differencing chain), read-only.
    let disk = vhdkit::open(image)?;

    // Back it up, showing progress; incremental when a backup of `name`
    // exists (a checkpoint child of that image reads only its own blocks;
    // otherwise chunks are compared by hash).
    let progress = |p: vhdkit::store::Progress| eprint!("\r{} / {} bytes", p.bytes_done, p.bytes_total);
    let options = BackupOptions { name: name.clone(), progress: Some(&progress), ..Default::default() };
    let report = store.backup(&disk, &options)?;
    eprintln!();
    println!(
        "{} backup {} ({:?}): read {} bytes, stored {} new chunks, {} already stored",
        if report.parent.is_some() { "incremental" } else { "full" },
        report.id,
        report.change_source,
        report.bytes_read,
        report.new_chunks,
        report.dedup_chunks
    );

    for b in store.list()? {
        println!("  {} {:<12} {:?} {} bytes", b.id, b.name, b.kind, b.virtual_size);
    }

    // Restore the newest backup of `name`; every chunk is checked as read.
    let restored = store.restore(name, out.as_ref(), Target::Vhdx, &ExportOptions::default())?;
    println!("restored {} to {out} in {:.2} s", restored.id, restored.export.seconds);
    Ok(())
}
