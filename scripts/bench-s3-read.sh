#!/usr/bin/env bash
# bench-s3-read.sh PERF_DIR [ROUNDS] [DELAYS_MS]
#
# Times reads back from object storage: vhdkit against restic restoring and
# checking the same disk from the same local S3 server (moto), directly and
# behind scripts/delay-proxy.py, which holds every request DELAY ms as a
# distant endpoint would. Prints per-round times, peak memory, requests and
# the vhdkit/restic time ratios.
#
#   PERF_DIR   made by shared/tools/perfdisk.sh (disk.vhdx is what is read)
#   ROUNDS     rounds per delay (default 3)
#   DELAYS_MS  space-separated delays (default "0 20")
#
# Environment: VHDKIT (default target/release/examples/vhdkit), OUT (reports;
# default PERF_DIR/bench-s3-read-<timestamp>), CONNECTIONS (vhdkit's
# --connections values to time, default "16"; the first is the one compared).
# Needs: moto_server, python3 with boto3, restic, qemu-img, GNU time.
#
# Set up once, not timed: a vhdkit store (zstd) and a restic repository
# (compression auto), each holding one backup of disk.vhdx.
# Timed, per round and delay, the two tools interleaved and the first one
# swapping each round, so the machine's drift falls on both:
#   restore  vhdkit `restore --to vhdx` / `restic restore`, each followed by
#            `sync -f` on its output inside the timed command (both tools'
#            output durable, as vhdkit's own flush makes it)
#   verify   vhdkit `verify` (every record) / `restic check --read-data`
#   copy     vhdkit `copy` / `restic copy`, S3 to a fresh bucket on the same
#            server (restic's made with --copy-chunker-params, so both dedup)
# The first round's outputs are compared with the source: restic's file
# byte for byte, vhdkit's VHDX by `qemu-img compare`. Requests are counted
# from moto's access log, the same way for both.

set -euo pipefail

usage() { echo "usage: $0 PERF_DIR [ROUNDS] [DELAYS_MS]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 3 ] || usage
PERF=$(cd "$1" && pwd)
ROUNDS=${2:-3}
DELAYS=${3:-0 20}
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || usage
[ -f "$PERF/disk.vhdx" ] || { echo "$PERF/disk.vhdx is missing (make it with perfdisk.sh)" >&2; exit 1; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VHDKIT=${VHDKIT:-$HERE/../target/release/examples/vhdkit}
CONNECTIONS=${CONNECTIONS:-16}
[ -x "$VHDKIT" ] || { echo "no vhdkit binary at $VHDKIT (cargo build --release --example vhdkit)" >&2; exit 1; }
for tool in moto_server restic python3 qemu-img /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "$tool is not installed" >&2; exit 1; }
done

OUT=${OUT:-$PERF/bench-s3-read-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
WORK=$(mktemp -d -p "$PERF")  # restored files (same disk as the source); removed on exit
MOTO_PID= PROXY_PID=
cleanup() {
  for pid in $PROXY_PID $MOTO_PID; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
MOTO_PORT=$(free_port)
MOTO_LOG=$OUT/moto.log
moto_server -H 127.0.0.1 -p "$MOTO_PORT" >"$MOTO_LOG" 2>&1 &
MOTO_PID=$!
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true
export RESTIC_PASSWORD=bench
DIRECT=http://127.0.0.1:$MOTO_PORT

s3() {  # create BUCKET | ping
  python3 - "$@" <<'PY'
import sys, boto3
c = boto3.client("s3", endpoint_url=sys.argv[2], region_name="us-east-1")
if sys.argv[1] == "create":
    c.create_bucket(Bucket=sys.argv[3])
else:
    c.list_buckets()
PY
}
for _ in $(seq 60); do
  kill -0 "$MOTO_PID" 2>/dev/null || { echo "moto_server exited" >&2; cat "$MOTO_LOG" >&2; exit 1; }
  s3 ping "$DIRECT" 2>/dev/null && break
  sleep 0.5
done

requests_so_far() { grep -c '" [0-9][0-9][0-9] ' "$MOTO_LOG" || true; }

# timed NAME COMMAND...: sets SECS, RSS_MIB, REQS (see bench-s3.sh).
timed() {
  local name=$1; shift
  local before start end rss_kib
  before=$(requests_so_far)
  start=$EPOCHREALTIME
  if ! /usr/bin/time -f '%M' -o "$OUT/$name.time" "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"; then
    echo "$name failed: $*" >&2; tail -20 "$OUT/$name.err" >&2; exit 1
  fi
  end=$EPOCHREALTIME
  SECS=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')
  read -r rss_kib <"$OUT/$name.time"
  RSS_MIB=$((rss_kib / 1024))
  REQS=$(( $(requests_so_far) - before ))
}

# --- set up: one backup in each tool, straight to moto -----------------------
echo "setting up: vhdkit store and restic repository of $PERF/disk.vhdx"
export AWS_ENDPOINT_URL=$DIRECT
s3 create "$DIRECT" vkstore; s3 create "$DIRECT" rsrepo
"$VHDKIT" --no-cache store init s3://vkstore/store --compression zstd >"$OUT/setup.out"
"$VHDKIT" --no-cache backup s3://vkstore/store "$PERF/disk.vhdx" --name vm >>"$OUT/setup.out"
mkdir -p "$WORK/src"
cp --reflink=auto "$PERF/disk.vhdx" "$WORK/src/disk.vhdx"
restic -r "s3:$DIRECT/rsrepo" init >>"$OUT/setup.out"
(cd "$WORK/src" && restic -r "s3:$DIRECT/rsrepo" backup disk.vhdx >>"$OUT/setup.out")
rm -rf "$WORK/src"
DATA=$("$VHDKIT" --no-cache stats s3://vkstore/store --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["logical_bytes"])' 2>/dev/null || echo 0)

# --- rounds ------------------------------------------------------------------
TSV=$OUT/results.tsv
printf 'delay_ms\tround\top\ttool\tseconds\trss_MiB\trequests\n' >"$TSV"
row() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$TSV"; }

vk_restore() {  # delay round connections
  local out=$WORK/vk.vhdx name="vk-restore-c$3-d$1-r$2"
  rm -f "$out"
  timed "$name" sh -c "'$VHDKIT' --no-cache --connections $3 restore s3://vkstore/store vm '$out' --to vhdx && sync -f '$out'"
  row "$1" "$2" restore "vhdkit-c$3" "$SECS" "$RSS_MIB" "$REQS"
  if [ "$2" = 1 ] && [ "$3" = "${CONNECTIONS%% *}" ]; then
    qemu-img compare -q "$PERF/disk.vhdx" "$out" || { echo "vhdkit's restore differs from the source" >&2; exit 1; }
  fi
  rm -f "$out"
}
rs_restore() {  # delay round
  local dir=$WORK/rs
  rm -rf "$dir"
  export RESTIC_CACHE_DIR=$WORK/restic-cache
  timed "rs-restore-d$1-r$2" sh -c "restic -r 's3:$AWS_ENDPOINT_URL/rsrepo' restore latest --target '$dir' && sync -f '$dir/disk.vhdx'"
  row "$1" "$2" restore restic "$SECS" "$RSS_MIB" "$REQS"
  if [ "$2" = 1 ]; then
    cmp "$PERF/disk.vhdx" "$dir/disk.vhdx" || { echo "restic's restore differs from the source" >&2; exit 1; }
  fi
  rm -rf "$dir"
}
vk_copy() {  # delay round: S3 -> S3, into a fresh store
  local b=vkcopy-d$1-r$2
  s3 create "$DIRECT" "$b"
  "$VHDKIT" --no-cache store init "s3://$b/store" --compression zstd >>"$OUT/setup.out"
  timed "vk-copy-d$1-r$2" "$VHDKIT" --no-cache --connections "${CONNECTIONS%% *}" copy s3://vkstore/store "s3://$b/store" --json
  row "$1" "$2" copy vhdkit "$SECS" "$RSS_MIB" "$REQS"
}
rs_copy() {  # delay round: restic copy into a fresh repository with the same chunker
  local b=rscopy-d$1-r$2
  s3 create "$DIRECT" "$b"
  export RESTIC_CACHE_DIR=$WORK/restic-cache RESTIC_FROM_PASSWORD=bench
  restic -r "s3:$AWS_ENDPOINT_URL/$b" init --from-repo "s3:$AWS_ENDPOINT_URL/rsrepo" --copy-chunker-params >>"$OUT/setup.out"
  timed "rs-copy-d$1-r$2" restic -r "s3:$AWS_ENDPOINT_URL/$b" copy --from-repo "s3:$AWS_ENDPOINT_URL/rsrepo"
  row "$1" "$2" copy restic "$SECS" "$RSS_MIB" "$REQS"
}
vk_verify() {
  timed "vk-verify-d$1-r$2" "$VHDKIT" --no-cache --connections "${CONNECTIONS%% *}" verify s3://vkstore/store --json
  row "$1" "$2" verify vhdkit "$SECS" "$RSS_MIB" "$REQS"
}
rs_verify() {
  export RESTIC_CACHE_DIR=$WORK/restic-cache
  timed "rs-verify-d$1-r$2" restic -r "s3:$AWS_ENDPOINT_URL/rsrepo" check --read-data
  row "$1" "$2" verify restic "$SECS" "$RSS_MIB" "$REQS"
}

for d in $DELAYS; do
  if [ "$d" = 0 ]; then
    export AWS_ENDPOINT_URL=$DIRECT
  else
    PROXY_PORT=$(free_port)
    python3 "$HERE/delay-proxy.py" "$PROXY_PORT" "$MOTO_PORT" "$d" &
    PROXY_PID=$!
    sleep 1
    export AWS_ENDPOINT_URL=http://127.0.0.1:$PROXY_PORT
  fi
  for r in $(seq "$ROUNDS"); do
    if (( r % 2 )); then
      for c in $CONNECTIONS; do vk_restore "$d" "$r" "$c"; done; rs_restore "$d" "$r"; vk_verify "$d" "$r"; rs_verify "$d" "$r"
      vk_copy "$d" "$r"; rs_copy "$d" "$r"
    else
      rs_restore "$d" "$r"; for c in $CONNECTIONS; do vk_restore "$d" "$r" "$c"; done; rs_verify "$d" "$r"; vk_verify "$d" "$r"
      rs_copy "$d" "$r"; vk_copy "$d" "$r"
    fi
    echo "delay $d ms, round $r/$ROUNDS done"
  done
  if [ -n "$PROXY_PID" ]; then kill "$PROXY_PID"; wait "$PROXY_PID" 2>/dev/null || true; PROXY_PID=; fi
done

echo
column -t -s $'\t' "$TSV"
echo
FIRST=vhdkit-c${CONNECTIONS%% *}
python3 - "$TSV" "$FIRST" "$DATA" <<'PY'
import csv, math, sys
from collections import defaultdict
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
first, data = sys.argv[2], int(sys.argv[3] or 0)
by = defaultdict(dict)
for r in rows:
    tool = "vhdkit" if r["tool"] in (first, "vhdkit") else r["tool"]
    by[(r["delay_ms"], r["op"], r["round"])][tool] = r
for (delay, op) in sorted({(d, o) for d, o, _ in by}):
    ratios, vreq = [], []
    for (d, o, rnd), tools in by.items():
        if (d, o) == (delay, op) and "vhdkit" in tools and "restic" in tools:
            ratios.append(float(tools["vhdkit"]["seconds"]) / float(tools["restic"]["seconds"]))
            vreq.append((int(tools["vhdkit"]["requests"]), int(tools["restic"]["requests"])))
    if ratios:
        g = math.exp(sum(map(math.log, ratios)) / len(ratios))
        per_gib = ""
        if op == "restore" and data:
            gib = data / 2**30
            per_gib = ", requests per GiB of disk data: vhdkit %.0f, restic %.0f" % (
                sum(v for v, _ in vreq) / len(vreq) / gib, sum(r for _, r in vreq) / len(vreq) / gib)
        print(f"delay {delay} ms, {op}: vhdkit/restic time {g:.3f} (geometric mean of {len(ratios)} rounds){per_gib}")
PY
echo "raw table: $TSV"
