#!/usr/bin/env bash
# concurrent-dups.sh DIR [RUNS]: how many chunks concurrent backup processes store twice.
#
# Three backups start at once into one store (the perfdisk, its 1 %-changed copy, and a small
# disk), as three separate processes. Processes do not share what they are storing: each sees only
# index files committed before it started, so content both meet before either commits is stored by
# both. The script counts duplicate records (index entries beyond the first for a chunk id) and
# their share of the stored records, then vacuums and counts again.
set -eu
dir=${1:?usage: concurrent-dups.sh DIR [RUNS]}
runs=${2:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
bin="$here/target/release/examples/vhdkit"
[ -x "$bin" ] || (cd "$here" && cargo build --release --example vhdkit)
bash "$here/../shared/tools/perfdisk.sh" "$dir" >/dev/null
if [ ! -f "$dir/small.vhdx" ]; then
  qemu-img create -q -f vhdx "$dir/small.vhdx" 256M
  qemu-io -f vhdx -c "write -P 0x5c 0 64M" "$dir/small.vhdx" >/dev/null
fi
count() {
  python3 - "$1" <<'PY'
import os, sys
root = sys.argv[1]
seen, records = {}, 0
for name in os.listdir(os.path.join(root, "index")):
    data = open(os.path.join(root, "index", name), "rb").read()
    n = int.from_bytes(data[8:16], "little")
    for i in range(n):
        e = data[16 + 64 * i: 16 + 64 * (i + 1)]
        seen[e[:32]] = seen.get(e[:32], 0) + 1
        records += 1
dups = records - len(seen)
print(f"{records} records, {len(seen)} distinct chunks, {dups} duplicates ({100 * dups / max(records, 1):.1f} %)")
PY
}
for run in $(seq "$runs"); do
  store="$dir/dups-store"
  rm -rf "$store"
  "$bin" store init "$store" >/dev/null
  "$bin" backup "$store" "$dir/disk.vhdx" --name a >/dev/null &
  "$bin" backup "$store" "$dir/disk2.vhdx" --name b >/dev/null &
  "$bin" backup "$store" "$dir/small.vhdx" --name c >/dev/null &
  wait
  echo "run $run, after the backups: $(count "$store")"
  "$bin" vacuum "$store" >/dev/null
  echo "run $run, after vacuum:      $(count "$store")"
  "$bin" verify "$store" | tail -n 1
done
