//! Open a VHD or VHDX (or a differencing chain), print what it is and its
//! allocation, and hash the bytes it holds.
//!
//! `cargo run --example read_disk -- IMAGE`

use std::hash::Hasher;

use vhdkit::ExtentState;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: read_disk IMAGE")?;

    // Read-only; parents are found through the image's locators and checked
    // by identity; a dirty VHDX log is replayed in memory.
    let disk = vhdkit::open(&path)?;
    for (depth, image) in disk.chain().enumerate() {
        println!(
            "depth {depth}: {} ({:?} {:?}, {} bytes, id {})",
            image.path.display(),
            image.format,
            image.subformat,
            image.virtual_size,
            image.identity
        );
        for warning in &image.warnings {
            println!("  warning: {warning}");
        }
    }

    // The allocation map says which ranges hold data; nothing else is read.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut data_bytes = 0u64;
    for extent in disk.extents(0..disk.size())? {
        if extent.state != ExtentState::Data {
            continue;
        }
        let mut offset = extent.offset;
        while offset < extent.offset + extent.length {
            let n = (extent.offset + extent.length - offset).min(buf.len() as u64) as usize;
            disk.read_at(&mut buf[..n], offset)?;
            hasher.write_u64(offset);
            hasher.write(&buf[..n]);
            offset += n as u64;
        }
        data_bytes += extent.length;
    }
    println!("{data_bytes} bytes of data of {}; hash {:016x}", disk.size(), hasher.finish());
    Ok(())
}
