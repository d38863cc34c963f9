//! 4 KiB random reads of a backup through `BackupReader::read_at`, timed:
//! the Rust side of scripts/bench-capi.sh (examples/c/bench_reads.c is the
//! C side, with the same offsets). One untimed pass warms the caches, then
//! COUNT reads are timed, at 4 KiB-aligned offsets in the first SPAN bytes
//! (default, or 0: the whole disk).
//!
//! usage: cargo run --release --example bench_reads STORE SPEC COUNT SEED [SPAN]

use std::time::Instant;

use vhdkit::VirtualDisk;
use vhdkit::store::{OpenOptions, Store};

/// xorshift64, as the C side.
fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 && args.len() != 6 {
        eprintln!("usage: bench_reads STORE SPEC COUNT SEED [SPAN]");
        std::process::exit(2);
    }
    let (count, seed): (u64, u64) = (args[3].parse()?, args[4].parse()?);
    let mut open = OpenOptions::default();
    open.read_only = true;
    let store = Store::open_with(&args[1], &open)?;
    let reader = store.reader(&args[2])?;
    let span: Option<u64> = args.get(5).map(|s| s.parse()).transpose()?;
    let size = span.filter(|s| *s > 0).map_or(reader.size(), |s| s.min(reader.size())); // 0: the whole disk
    let mut buf = [0u8; 4096];
    let mut sum = 0u64;
    let mut elapsed = 0.0;
    for _pass in 0..2 {
        let mut s = seed;
        let t0 = Instant::now();
        for i in 0..count {
            let offset = next(&mut s) % (size / 4096) * 4096;
            reader.read_at(&mut buf, offset)?;
            sum += u64::from(buf[(i % 4096) as usize]);
        }
        elapsed = t0.elapsed().as_secs_f64();
    }
    println!("ns_per_read {:.1} (checksum {sum})", elapsed * 1e9 / count as f64);
    Ok(())
}
