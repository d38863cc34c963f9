#!/usr/bin/env bash
# bench-capi.sh [ROUNDS]
#
# What the C ABI costs, on the perfdisk (../shared/tools/perfdisk.sh):
#   backup  a full backup of disk.vhdx by examples/c/backup.c (linked to the
#           installed libvhdkit.so) against `vhdkit backup` (the Rust CLI),
#           each into a fresh store made by `vhdkit store init`, the same
#           durable work (both are the library's backup), in alternating
#           rounds (the first tool swaps each round); ratio = CLI time / C
#           time (1.0: the same speed; above 0.95 is the goal)
#   reads   4 KiB random reads of that backup through vhdkit_reader_read_at
#           from C (examples/c/bench_reads.c) against BackupReader::read_at
#           from Rust (examples/bench_reads.rs), the same offsets, a warm-up
#           pass then timed reads, alternating; ratio = C ns / Rust ns
#           (within 1.10 is the goal). Twice: COUNT reads in the first 8 MiB
#           (held in the reader's chunk cache, so the call's own cost shows),
#           and COUNT/10 over the whole disk (each a chunk fetched, verified
#           and decompressed)
#
# Environment: PERF (default ${TMPDIR:-/tmp}/vhdkit-perf, made if missing),
# PREFIX (default target/capi-prefix, installed by scripts/capi-install.sh),
# COUNT (reads per round, default 200000). Needs qemu-img, mke2fs, cc.
set -euo pipefail
ROUNDS=${1:-3}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PERF=${PERF:-${TMPDIR:-/tmp}/vhdkit-perf}
PREFIX=${PREFIX:-$HERE/target/capi-prefix}
COUNT=${COUNT:-200000}
cd "$HERE"
bash "${VHDKIT_SHARED:-$HERE/../shared}/tools/perfdisk.sh" "$PERF" >/dev/null
cargo build --quiet --release --example vhdkit --example bench_reads
./scripts/capi-install.sh "$PREFIX" >/dev/null 2>&1
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
pc() { PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig" pkg-config "$@" vhdkit; }
# shellcheck disable=SC2046
cc -std=c11 -O2 -o "$OUT/backup" examples/c/backup.c $(pc --cflags --libs)
# shellcheck disable=SC2046
cc -std=c11 -O2 -o "$OUT/bench_reads" examples/c/bench_reads.c $(pc --cflags --libs)
export LD_LIBRARY_PATH="$PREFIX/lib"
VHDKIT=target/release/examples/vhdkit
secs() { local s=$EPOCHREALTIME; "$@" >/dev/null 2>"$OUT/err" || { cat "$OUT/err" >&2; exit 1; }; awk -v a="$s" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }

echo "full backup of $PERF/disk.vhdx ($(du -h "$PERF/disk.vhdx" | cut -f1) file, 3 GiB virtual)"
printf 'round\tC s\tCLI s\tratio CLI/C\n'
ratios=()
for round in $(seq "$ROUNDS"); do
    c() { rm -rf "$OUT/sc"; "$VHDKIT" store init "$OUT/sc" >/dev/null; C=$(secs "$OUT/backup" "$OUT/sc" vm "$PERF/disk.vhdx"); }
    cli() { rm -rf "$OUT/sr"; "$VHDKIT" store init "$OUT/sr" >/dev/null; R=$(secs "$VHDKIT" backup "$OUT/sr" "$PERF/disk.vhdx" --name vm); }
    if [ $((round % 2)) -eq 1 ]; then c; cli; else cli; c; fi
    ratio=$(awk -v c="$C" -v r="$R" 'BEGIN { printf "%.3f", r / c }')
    ratios+=("$ratio")
    printf '%s\t%s\t%s\t%s\n' "$round" "$C" "$R" "$ratio"
done
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
echo "backup: median ratio CLI/C $(median "${ratios[@]}") over $ROUNDS rounds"

reads() { # COUNT SPAN LABEL
    echo
    echo "$1 random 4 KiB reads of that backup ($3), after a warm-up pass"
    printf 'round\tC ns/read\tRust ns/read\tratio C/Rust\n'
    ratios=()
    for round in $(seq "$ROUNDS"); do
        c() { C=$("$OUT/bench_reads" "$OUT/sr" vm "$1" "$round" "$2" | awk '{ print $2 }'); }
        rust() { R=$(target/release/examples/bench_reads "$OUT/sr" vm "$1" "$round" "$2" | awk '{ print $2 }'); }
        if [ $((round % 2)) -eq 1 ]; then c "$@"; rust "$@"; else rust "$@"; c "$@"; fi
        ratio=$(awk -v c="$C" -v r="$R" 'BEGIN { printf "%.3f", c / r }')
        ratios+=("$ratio")
        printf '%s\t%s\t%s\t%s\n' "$round" "$C" "$R" "$ratio"
    done
    echo "reads ($3): median ratio C/Rust $(median "${ratios[@]}") over $ROUNDS rounds"
}
reads "$COUNT" $((8 << 20)) "first 8 MiB, cached"
reads $((COUNT / 10)) 0 "whole disk"
