#!/usr/bin/env bash
# bench-nbd.sh PERF_DIR [ROUNDS]
#
# Instant restore against a plain restore, on the perfdisk's backup:
#   1. `qemu-img convert -f raw -O raw -t writeback nbd://...` from
#      `vhdkit serve`, against `vhdkit restore --to raw` of the same backup
#      (both write a sparse raw file and flush it); the rounds alternate
#      and swap which goes first, so drift in the disk's speed falls on
#      both. Prints each time and the restore/convert ratio (above 1: the
#      export is faster).
#   2. random 4 KiB reads through the export from a freshly started server
#      (cold block cache), against pread of the restored raw file at the
#      same offsets (scripts/nbd-latency.py): p50/p90/p99/max.
#
#   PERF_DIR  made by shared/tools/perfdisk.sh (disk.vhdx is backed up).
#   ROUNDS    convert/restore pairs (default 5).
#
# Environment: VHDKIT (default target/release/examples/vhdkit),
# COMPRESSION (the store's, default zstd), OUT (default a temporary folder,
# removed on exit). Needs qemu-img and python3.
set -euo pipefail

usage() { echo "usage: $0 PERF_DIR [ROUNDS]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
PERF=$(cd "$1" && pwd)
ROUNDS=${2:-5}
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || usage
[ -f "$PERF/disk.vhdx" ] || { echo "$PERF/disk.vhdx is missing (make it with perfdisk.sh)" >&2; exit 1; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VHDKIT=${VHDKIT:-$HERE/../target/release/examples/vhdkit}
[ -x "$VHDKIT" ] || { echo "no vhdkit binary at $VHDKIT (cargo build --release --example vhdkit)" >&2; exit 1; }
command -v qemu-img >/dev/null || { echo "qemu-img is not installed" >&2; exit 1; }

if [ -n "${OUT:-}" ]; then mkdir -p "$OUT"; KEEP=1; else OUT=$(mktemp -d); KEEP=0; fi
SERVER=
cleanup() {
  if [ -n "$SERVER" ]; then kill -INT "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; fi
  if [ "$KEEP" = 0 ]; then rm -rf "$OUT"; fi
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }

# Starts `vhdkit serve` on a free loopback port; sets SERVER and PORT.
start_server() {
  PORT=$(port)
  "$VHDKIT" serve "$OUT/store" "$ID" --listen "127.0.0.1:$PORT" >"$OUT/serve.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" 2>/dev/null && return
    sleep 0.1
  done
  echo "the server did not start: $(cat "$OUT/serve.log")" >&2
  exit 1
}
stop_server() { kill -INT "$SERVER"; wait "$SERVER" || true; SERVER=; }

"$VHDKIT" store init "$OUT/store" --compression "${COMPRESSION:-zstd}" >/dev/null 2>&1
ID=$("$VHDKIT" backup "$OUT/store" "$PERF/disk.vhdx" --name perf 2>/dev/null | tail -n 1)
"$VHDKIT" restore "$OUT/store" "$ID" "$OUT/ref.raw" --to raw --force >/dev/null 2>&1
echo "backup $ID of $PERF/disk.vhdx ($(stat -c %s "$OUT/ref.raw") bytes), store ${COMPRESSION:-zstd}"

start_server
qemu-img compare -q -f raw -F raw "nbd://127.0.0.1:$PORT" "$OUT/ref.raw" ||
  { echo "the export differs from the restored file" >&2; exit 1; }

convert() {
  rm -f "$OUT/q.raw"
  local t0; t0=$(now)
  qemu-img convert -f raw -O raw -t writeback "nbd://127.0.0.1:$PORT" "$OUT/q.raw"
  echo "$(now) - $t0" | bc
}
restore() {
  rm -f "$OUT/v.raw"
  local t0; t0=$(now)
  "$VHDKIT" restore "$OUT/store" "$ID" "$OUT/v.raw" --to raw --force >/dev/null 2>&1
  echo "$(now) - $t0" | bc
}

printf '%-6s %10s %10s %8s\n' round convert restore ratio
ratios=()
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then c=$(convert); v=$(restore); else v=$(restore); c=$(convert); fi
  ratio=$(echo "scale=3; $v / $c" | bc)
  ratios+=("$ratio")
  printf '%-6s %9.2fs %9.2fs %8s\n' "$r" "$c" "$v" "$ratio"
done
cmp -s "$OUT/q.raw" "$OUT/ref.raw" || { echo "the converted copy differs from the restored file" >&2; exit 1; }
python3 -c "import statistics, sys; r=[float(x) for x in sys.argv[1:]]; print(f'restore time / convert time: median {statistics.median(r):.3f}, geomean {statistics.geometric_mean(r):.3f}')" "${ratios[@]}"
stop_server

echo
start_server
python3 "$HERE/nbd-latency.py" 127.0.0.1 "$PORT" "$OUT/ref.raw" "${READS:-2000}"
stop_server
