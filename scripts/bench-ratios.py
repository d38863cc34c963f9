#!/usr/bin/env python3
"""bench-ratios.py [CRITERION_DIR]: ratios between benchmarks measured in the same run.

Reads criterion's estimates (target/criterion/GROUP/BENCH/new/estimates.json) and prints each
measurement against its baseline: machines here are noisy, so only same-run ratios mean anything.
"""
import json
import os
import sys

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "target", "criterion")

# (group, subject, baseline, what the ratio says)
PAIRS = [
    ("open", "vhdx_64tib_sparse", "baseline_read_bat_bytes", "open time / reading the BAT's bytes"),
    ("read", "baseline_raw_pread_4mib", "vhdx_read_at_4mib", "VHDX read throughput / raw pread throughput"),
    ("backup", "baseline_blake3_all_cores", "full_into_fresh_store", "fresh-store backup throughput / BLAKE3 on all cores"),
    ("backup", "baseline_write_and_fsync", "full_into_fresh_store", "fresh-store backup throughput / write + fsync of the same bytes"),
    ("backup", "baseline_blake3_all_cores", "full_of_stored_data", "backup of stored data throughput / BLAKE3 on all cores"),
    ("backup", "baseline_blake3_all_cores", "full_of_stored_data_mmap", "same, image memory-mapped (--mmap) / BLAKE3 on all cores"),
    ("backup_zstd", "baseline_zstd1_all_cores", "full_into_fresh_zstd1_store", "zstd-1 backup throughput / zstd-1 alone"),
    ("incremental", "ranges_1pct", "full_backup", "1 % incremental time / full backup time"),
    ("restore", "baseline_copy_raw", "restore_to_raw", "restore throughput / plain raw copy throughput"),
    ("crypt", "baseline_blake3_one_core", "seal_chunk_one_core", "AES-256-GCM seal throughput / BLAKE3, one core"),
    ("crypt", "baseline_blake3_one_core", "open_chunk_one_core", "open (tag, keyed BLAKE3) throughput / BLAKE3, one core"),
    ("backup_encrypted", "full_into_fresh_plain_store", "full_into_fresh_encrypted_store",
     "encrypted backup throughput / plain backup throughput"),
]


def mean_ns(group, bench):
    path = os.path.join(root, group, bench, "new", "estimates.json")
    try:
        with open(path) as f:
            return json.load(f)["mean"]["point_estimate"]
    except OSError:
        return None


for group, a, b, what in PAIRS:
    x, y = mean_ns(group, a), mean_ns(group, b)
    if x is None or y is None:
        print(f"{group:12} (not measured)  {what}")
        continue
    print(f"{group:12} {x / y:8.3f}  {what}")
for chunks in (1024, 4096, 16384):
    t = mean_ns("vacuum", f"chunks/{chunks}")
    if t is not None:
        print(f"vacuum       {t / 1e6:8.1f} ms for {chunks} chunks ({t / chunks / 1e3:.1f} us per chunk)")
