#!/usr/bin/env bash
# bench-fs.sh [ROUNDS]
#
# File-level restore against a whole-disk restore, from the same backup:
#   get      `vhdkit fs get STORE vm PART:/big.bin --to DIR` (a 100 MB file of
#            noise, on ext4 and on NTFS), durable (fs get syncs each file)
#   restore  `vhdkit restore STORE vm OUT --to raw` (flushed, as restore does)
#            of the whole disk: both file systems, each holding big.bin
# in alternating rounds (the first tool swaps each round), and prints each
# rate in MB of data per second and the ratio get/restore per round.
# Then lists a folder of 10,000 files on each file system, from the local
# store and from the same backup copied to moto's S3, with the time and the
# S3 requests each listing cost (counted from moto's access log).
#
# Environment: VHDKIT (default target/release/examples/vhdkit), OUT (default
# a temporary folder, removed). Needs: mke2fs, mkntfs and ntfs-3g (FUSE, as
# root), sfdisk, qemu-img, moto_server and python3 with boto3.
set -euo pipefail

ROUNDS=${1:-3}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VHDKIT=${VHDKIT:-$HERE/../target/release/examples/vhdkit}
[ -x "$VHDKIT" ] || { echo "no vhdkit binary at $VHDKIT (cargo build --release --example vhdkit)" >&2; exit 1; }
for tool in mke2fs mkntfs ntfs-3g sfdisk qemu-img moto_server python3; do
  command -v "$tool" >/dev/null || { echo "$tool is not installed" >&2; exit 1; }
done
KEEP=${OUT:-}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
MOTO_PID=
cleanup() {
  mountpoint -q "$OUT/mnt" 2>/dev/null && umount "$OUT/mnt"
  [ -n "$MOTO_PID" ] && kill "$MOTO_PID" 2>/dev/null
  [ -z "$KEEP" ] && rm -rf "$OUT"
  true
}
trap cleanup EXIT

echo "setting up in $OUT: two volumes with a 100 MB file and a folder of 10,000 files"
mkdir -p "$OUT/src/many" "$OUT/mnt"
head -c 100000000 /dev/urandom >"$OUT/src/big.bin"
python3 - "$OUT/src/many" <<'PY'
import os, sys
for i in range(10000):
    with open(os.path.join(sys.argv[1], f"file-{i:05}.txt"), "w") as f:
        f.write(f"file {i}\n")
PY
mke2fs -q -t ext4 -d "$OUT/src" -F "$OUT/ext.img" 160M
truncate -s 160M "$OUT/ntfs.img"
mkntfs -F -f -q "$OUT/ntfs.img" 2>/dev/null
ntfs-3g "$OUT/ntfs.img" "$OUT/mnt"
cp -r "$OUT/src/." "$OUT/mnt/"
umount "$OUT/mnt"
truncate -s 340M "$OUT/disk.raw"
printf 'label: gpt\nsize=160MiB, name=linux\nsize=160MiB, name=windows\n' | sfdisk -q "$OUT/disk.raw" >/dev/null
read -r EXT_AT NTFS_AT < <(sfdisk -J "$OUT/disk.raw" | python3 -c 'import json,sys; p=json.load(sys.stdin)["partitiontable"]["partitions"]; print(p[0]["start"], p[1]["start"])')
dd if="$OUT/ext.img" of="$OUT/disk.raw" bs=512 seek="$EXT_AT" conv=notrunc,sparse status=none
dd if="$OUT/ntfs.img" of="$OUT/disk.raw" bs=512 seek="$NTFS_AT" conv=notrunc,sparse status=none
qemu-img convert -f raw -O vhdx "$OUT/disk.raw" "$OUT/disk.vhdx"
rm -f "$OUT/disk.raw" "$OUT/ext.img" "$OUT/ntfs.img"
"$VHDKIT" store init "$OUT/store" >/dev/null
"$VHDKIT" backup "$OUT/store" "$OUT/disk.vhdx" --name vm >/dev/null
DISK_DATA=$("$VHDKIT" stats "$OUT/store" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["logical_bytes"])')

secs() { local s=$EPOCHREALTIME; "$@" >/dev/null 2>"$OUT/last.err" || { cat "$OUT/last.err" >&2; exit 1; }; awk -v a="$s" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }
rate() { awk -v n="$1" -v t="$2" 'BEGIN { printf "%.0f", n / t / 1e6 }'; }

printf '\nround\tget ext4 MB/s\tget NTFS MB/s\trestore MB/s\tratio ext4\tratio NTFS\n'
for round in $(seq "$ROUNDS"); do
  rm -rf "$OUT/got" "$OUT/restored.raw"
  get_both() {
    rm -rf "$OUT/got"
    G_EXT=$(secs "$VHDKIT" fs get "$OUT/store" vm linux:/big.bin --to "$OUT/got/ext")
    G_NTFS=$(secs "$VHDKIT" fs get "$OUT/store" vm windows:/big.bin --to "$OUT/got/ntfs")
  }
  restore() { rm -f "$OUT/restored.raw"; R=$(secs "$VHDKIT" restore "$OUT/store" vm "$OUT/restored.raw" --to raw); }
  if [ $((round % 2)) -eq 1 ]; then get_both; restore; else restore; get_both; fi
  cmp -s "$OUT/got/ext/big.bin" "$OUT/src/big.bin" && cmp -s "$OUT/got/ntfs/big.bin" "$OUT/src/big.bin" || { echo "fs get returned other bytes" >&2; exit 1; }
  ge=$(rate 100000000 "$G_EXT"); gn=$(rate 100000000 "$G_NTFS"); rr=$(rate "$DISK_DATA" "$R")
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$ge" "$gn" "$rr" \
    "$(awk -v a="$ge" -v b="$rr" 'BEGIN { printf "%.2f", a / b }')" "$(awk -v a="$gn" -v b="$rr" 'BEGIN { printf "%.2f", a / b }')"
done

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
moto_server -H 127.0.0.1 -p "$PORT" >"$OUT/moto.log" 2>&1 &
MOTO_PID=$!
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true AWS_ENDPOINT_URL=http://127.0.0.1:$PORT
for _ in $(seq 60); do
  python3 -c "import boto3; boto3.client('s3', endpoint_url='$AWS_ENDPOINT_URL').create_bucket(Bucket='fsbench')" 2>/dev/null && break
  sleep 0.5
done
"$VHDKIT" --no-cache store init s3://fsbench/store >/dev/null
"$VHDKIT" --no-cache copy "$OUT/store" s3://fsbench/store --all >/dev/null
requests() { grep -c '" [0-9][0-9][0-9] ' "$OUT/moto.log" || true; }

printf '\nlisting a folder of 10,000 files\tlocal store s\tS3 s\tS3 requests\tentries\n'
for part in linux windows; do
  L=$(secs "$VHDKIT" fs ls "$OUT/store" vm "$part:/many")
  before=$(requests)
  S=$(secs "$VHDKIT" --no-cache fs ls s3://fsbench/store vm "$part:/many")
  n=$("$VHDKIT" fs ls "$OUT/store" vm "$part:/many" | wc -l)
  printf '%s\t%s\t%s\t%s\t%s\n' "$part" "$L" "$S" "$(( $(requests) - before ))" "$n"
done
