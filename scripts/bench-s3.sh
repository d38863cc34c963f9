#!/usr/bin/env bash
# bench-s3.sh PERF_DIR [ROUNDS]
#
# Times vhdkit against restic backing up the same disk to a local S3 server
# (moto), full and incremental, and prints per-round times, bucket bytes,
# request counts and the vhdkit/restic time ratios.
#
#   PERF_DIR  made by shared/tools/perfdisk.sh: disk.vhdx (the full backup),
#             disk2.vhdx (the same disk with ~1 % scattered changes) and
#             ranges.json (those changes as byte ranges, for --changed).
#   ROUNDS    how many rounds (default 3). Each round uses fresh buckets and
#             fresh local caches for both tools.
#
# Environment:
#   VHDKIT    the vhdkit binary (default: target/release/examples/vhdkit
#             beside this script; build it with
#             `cargo build --release --example vhdkit`).
#   OUT       where per-run reports, timings and the moto log are kept
#             (default: PERF_DIR/bench-s3-<timestamp>).
#
# Needs: moto_server, python3 with boto3, restic (0.14 or later, for
# compression), GNU time at /usr/bin/time.
#
# What is measured, per round:
#   vhdkit full   `store init --compression zstd`, then `backup` of disk.vhdx
#   restic full   `init` (repository v2: compression auto), then `backup` of
#                 PERF_DIR/cur.vhdx, a copy of disk.vhdx
#   vhdkit incr   `backup --changed ranges.json` of disk2.vhdx
#   restic incr   `backup` of PERF_DIR/cur.vhdx, now a copy of disk2.vhdx
#                 (restic picks its parent snapshot by path, so both of its
#                 backups name the same path)
# Only the backup commands are timed (wall clock); init and copies are not.
# The runs of one round interleave the two tools, and which tool goes first
# swaps from round to round, so drift in the machine's speed falls on both.
# Request counts come from moto's access log (one line per request), so they
# are counted the same way for both tools; vhdkit's own count (`requests` in
# its JSON report) is printed beside it. The disk images are read once before
# the first round so that every run starts from a warm page cache.

set -euo pipefail

usage() { echo "usage: $0 PERF_DIR [ROUNDS]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
PERF=$(cd "$1" && pwd)
ROUNDS=${2:-3}
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || usage
for f in disk.vhdx disk2.vhdx ranges.json; do
  [ -f "$PERF/$f" ] || { echo "$PERF/$f is missing (make it with perfdisk.sh)" >&2; exit 1; }
done

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VHDKIT=${VHDKIT:-$HERE/../target/release/examples/vhdkit}
[ -x "$VHDKIT" ] || { echo "no vhdkit binary at $VHDKIT (cargo build --release --example vhdkit)" >&2; exit 1; }
for tool in moto_server restic python3 /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "$tool is not installed" >&2; exit 1; }
done
python3 -c 'import boto3' 2>/dev/null || { echo "python3 lacks boto3" >&2; exit 1; }

OUT=${OUT:-$PERF/bench-s3-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
WORK=$(mktemp -d)   # local caches of both tools; removed on exit
CUR=$PERF/cur.vhdx  # the fixed path restic backs up
MOTO_PID=

# On any exit: stop our moto server (by its PID only) and remove temporaries.
cleanup() {
  if [ -n "$MOTO_PID" ]; then
    kill "$MOTO_PID" 2>/dev/null || true
    wait "$MOTO_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK" "$CUR"
}
trap cleanup EXIT

# --- the S3 server ---------------------------------------------------------

# A free TCP port on the loopback interface.
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ENDPOINT=http://127.0.0.1:$PORT
MOTO_LOG=$OUT/moto.log
moto_server -H 127.0.0.1 -p "$PORT" >"$MOTO_LOG" 2>&1 &
MOTO_PID=$!

# Credentials and endpoint for vhdkit (object_store), restic and boto3 alike.
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=$ENDPOINT AWS_ALLOW_HTTP=true
export RESTIC_PASSWORD=bench

# s3 COMMAND BUCKET: bucket chores through boto3.
#   create  make the bucket
#   bytes   print the total size of its objects
#   drop    delete its objects and the bucket (frees moto's memory)
#   ping    succeed once the server answers (BUCKET ignored)
s3() {
  python3 - "$@" <<'PY'
import os, sys, boto3
cmd, bucket = sys.argv[1], sys.argv[2]
c = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")
def objects():
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        yield from page.get("Contents", [])
if cmd == "ping":
    c.list_buckets()
elif cmd == "create":
    c.create_bucket(Bucket=bucket)
elif cmd == "bytes":
    print(sum(o["Size"] for o in objects()))
elif cmd == "drop":
    for o in list(objects()):
        c.delete_object(Bucket=bucket, Key=o["Key"])
    c.delete_bucket(Bucket=bucket)
PY
}

# Wait up to 30 s for moto to answer.
for _ in $(seq 60); do
  kill -0 "$MOTO_PID" 2>/dev/null || { echo "moto_server exited:" >&2; cat "$MOTO_LOG" >&2; exit 1; }
  s3 ping - 2>/dev/null && break
  sleep 0.5
done
s3 ping - || { echo "moto_server does not answer on $ENDPOINT" >&2; exit 1; }

# --- measuring -------------------------------------------------------------

# Requests moto has served so far (its access log has one line per request).
requests_so_far() { grep -c '" [0-9][0-9][0-9] ' "$MOTO_LOG" || true; }

# timed NAME COMMAND...: runs COMMAND with stdout to OUT/NAME.out and stderr
# to OUT/NAME.err, and sets SECS (wall clock, to the millisecond, from bash's
# clock: /usr/bin/time's %e has only 10 ms), RSS_MIB (peak resident set, from
# /usr/bin/time) and REQS (requests moto served meanwhile). Fails the script
# if COMMAND does.
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

# json_field FILE FIELD: one field of the JSON object in FILE (a vhdkit report).
json_field() {
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

run_vhdkit_full() {  # round
  local b=vhdkit-r$1 cache=$WORK/vhdkit-cache-$1
  s3 create "$b"
  "$VHDKIT" --cache-dir "$cache" store init "s3://$b/store" --compression zstd >"$OUT/vhdkit-init-$1.out"
  timed "vhdkit-full-$1" "$VHDKIT" --cache-dir "$cache" backup "s3://$b/store" --name vm --json "$PERF/disk.vhdx"
  VF_S[$1]=$SECS VF_RSS[$1]=$RSS_MIB VF_REQ[$1]=$REQS
  VF_BYTES[$1]=$(s3 bytes "$b")
}

run_vhdkit_incr() {  # round
  local b=vhdkit-r$1 cache=$WORK/vhdkit-cache-$1
  timed "vhdkit-incr-$1" "$VHDKIT" --cache-dir "$cache" backup "s3://$b/store" --name vm --json \
    --changed "$PERF/ranges.json" "$PERF/disk2.vhdx"
  VI_S[$1]=$SECS VI_REQ[$1]=$REQS
  VI_OWN_REQ[$1]=$(json_field "$OUT/vhdkit-incr-$1.out" requests)
  [ "$(json_field "$OUT/vhdkit-incr-$1.out" kind)" = incremental ] || { echo "vhdkit round $1: not an incremental" >&2; exit 1; }
  VI_BYTES[$1]=$(( $(s3 bytes "$b") - VF_BYTES[$1] ))
}

run_restic_full() {  # round
  local b=restic-r$1
  export RESTIC_CACHE_DIR=$WORK/restic-cache-$1
  s3 create "$b"
  restic -r "s3:$ENDPOINT/$b" init >"$OUT/restic-init-$1.out"
  cp --reflink=auto "$PERF/disk.vhdx" "$CUR"
  timed "restic-full-$1" restic -r "s3:$ENDPOINT/$b" backup --json "$CUR"
  RF_S[$1]=$SECS RF_RSS[$1]=$RSS_MIB RF_REQ[$1]=$REQS
  RF_BYTES[$1]=$(s3 bytes "$b")
}

run_restic_incr() {  # round
  local b=restic-r$1
  export RESTIC_CACHE_DIR=$WORK/restic-cache-$1
  cp --reflink=auto "$PERF/disk2.vhdx" "$CUR"
  timed "restic-incr-$1" restic -r "s3:$ENDPOINT/$b" backup --json "$CUR"
  RI_S[$1]=$SECS RI_REQ[$1]=$REQS
  RI_BYTES[$1]=$(( $(s3 bytes "$b") - RF_BYTES[$1] ))
}

declare -a VF_S VF_RSS VF_REQ VF_BYTES VI_S VI_REQ VI_OWN_REQ VI_BYTES
declare -a RF_S RF_RSS RF_REQ RF_BYTES RI_S RI_REQ RI_BYTES

echo "vhdkit: $VHDKIT"
echo "restic: $(restic version)"
echo "moto:   $ENDPOINT (pid $MOTO_PID), reports in $OUT"
cat "$PERF/disk.vhdx" "$PERF/disk2.vhdx" >/dev/null  # warm the page cache

for r in $(seq "$ROUNDS"); do
  # Odd rounds start with vhdkit, even rounds with restic.
  if (( r % 2 )); then
    run_vhdkit_full "$r"; run_restic_full "$r"; run_vhdkit_incr "$r"; run_restic_incr "$r"
  else
    run_restic_full "$r"; run_vhdkit_full "$r"; run_restic_incr "$r"; run_vhdkit_incr "$r"
  fi
  echo "round $r/$ROUNDS: full ${VF_S[r]} s vs ${RF_S[r]} s, incremental ${VI_S[r]} s vs ${RI_S[r]} s (vhdkit vs restic)"
  s3 drop "vhdkit-r$r"; s3 drop "restic-r$r"
done

# --- the table -------------------------------------------------------------

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }

TSV=$OUT/results.tsv
{
  printf 'round\tvk_full_s\trs_full_s\tfull_ratio\tvk_incr_s\trs_incr_s\tincr_ratio'
  printf '\tvk_full_MiB\trs_full_MiB\tvk_incr_MiB\trs_incr_MiB'
  printf '\tvk_full_req\trs_full_req\tvk_incr_req\tvk_incr_req_own\trs_incr_req\tvk_full_rss_MiB\trs_full_rss_MiB\n'
  for r in $(seq "$ROUNDS"); do
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s' "$r" "${VF_S[r]}" "${RF_S[r]}" "$(ratio "${VF_S[r]}" "${RF_S[r]}")" \
      "${VI_S[r]}" "${RI_S[r]}" "$(ratio "${VI_S[r]}" "${RI_S[r]}")"
    printf '\t%s\t%s\t%s\t%s' "$(mib "${VF_BYTES[r]}")" "$(mib "${RF_BYTES[r]}")" "$(mib "${VI_BYTES[r]}")" "$(mib "${RI_BYTES[r]}")"
    printf '\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "${VF_REQ[r]}" "${RF_REQ[r]}" "${VI_REQ[r]}" "${VI_OWN_REQ[r]}" "${RI_REQ[r]}" \
      "${VF_RSS[r]}" "${RF_RSS[r]}"
  done
} >"$TSV"

# Means of every column (the ratio columns: the mean of the per-round
# ratios, and their geometric mean below).
means=$(awk -F'\t' 'NR > 1 { n++; for (i = 2; i <= NF; i++) s[i] += $i }
  END { printf "mean"; for (i = 2; i <= NF; i++) printf "\t%.3f", s[i] / n; printf "\n" }' "$TSV")

echo
{ cat "$TSV"; echo "$means"; } | column -t -s $'\t'
echo
awk -F'\t' 'NR > 1 { n++; f += log($4); i += log($7) }
  END { printf "geometric mean ratio (vhdkit time / restic time): full %.3f, incremental %.3f over %d rounds\n", exp(f / n), exp(i / n), n }' "$TSV"
echo "columns: times in seconds; MiB are bucket bytes after the full backup and added by the incremental;"
echo "req are requests seen by moto (vk_incr_req_own: vhdkit's own count, which leaves out its job-log write);"
echo "rss is peak resident memory of the full backup. Raw table: $TSV"
