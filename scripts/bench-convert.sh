#!/usr/bin/env bash
# bench-convert.sh [DIR] [ROUNDS]: times `vhdkit convert` against `qemu-img convert` on the same
# dense 2 GiB dynamic VHDX (made once in DIR from random bytes), alternating the tools round by
# round, and prints medians and ratios measured in the same run. The source stays in the page
# cache, so this measures the tools, not the disk. Two pairings are fair:
#   vhdkit (flushes before rename)      vs  qemu-img -t writeback (flushes on close)
#   vhdkit --no-sync                    vs  qemu-img default (-t unsafe: no flush)
set -euo pipefail
dir=${1:-/tmp/vhdkit-bench}
rounds=${2:-5}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$dir"
cd "$here"
cargo build -q --release --example vhdkit
vhdkit=$here/target/release/examples/vhdkit
src=$dir/dense.vhdx
if [ ! -f "$src" ]; then
    head -c $((2 << 30)) /dev/urandom > "$dir/dense.raw"
    qemu-img convert -O vhdx -o subformat=dynamic "$dir/dense.raw" "$src"
    rm "$dir/dense.raw"
fi
cat "$src" > /dev/null

# name | command (OUT is replaced by the output path)
cases=(
    "vhdkit raw|$vhdkit convert $src OUT --to raw"
    "qemu-img raw writeback|qemu-img convert -t writeback -O raw $src OUT"
    "vhdkit raw no-sync|$vhdkit convert --no-sync $src OUT --to raw"
    "qemu-img raw unsafe|qemu-img convert -O raw $src OUT"
    "vhdkit vhdx|$vhdkit convert $src OUT --to vhdx"
    "qemu-img vhdx writeback|qemu-img convert -t writeback -O vhdx $src OUT"
    "vhdkit vhdx no-sync|$vhdkit convert --no-sync $src OUT --to vhdx"
    "qemu-img vhdx unsafe|qemu-img convert -O vhdx $src OUT"
)
declare -A times
for ((r = 0; r < rounds; r++)); do
    for c in "${cases[@]}"; do
        name=${c%%|*}
        cmd=${c#*|}
        out=$dir/out
        rm -f "$out"
        sync
        t0=$(date +%s.%N)
        ${cmd//OUT/$out} 2>/dev/null
        t1=$(date +%s.%N)
        times[$name]="${times[$name]:-} $(echo "$t1 - $t0" | bc)"
    done
done
rm -f "$dir/out"
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf '%-26s %10s %10s\n' case "median s" "GiB/s"
declare -A med
for c in "${cases[@]}"; do
    name=${c%%|*}
    m=$(echo "${times[$name]}" | median)
    med[$name]=$m
    printf '%-26s %10.3f %10.2f\n' "$name" "$m" "$(echo "2 / $m" | bc -l)"
done
echo
for pair in "raw:writeback" "raw no-sync:unsafe" "vhdx:writeback" "vhdx no-sync:unsafe"; do
    ours=${pair%%:*}
    theirs=${pair#*:}
    fmt=${ours%% *}
    q="qemu-img $fmt $theirs"
    printf 'vhdkit %-12s / %-26s throughput ratio %.2f\n' "$ours" "$q" "$(echo "${med[$q]} / ${med[vhdkit $ours]}" | bc -l)"
done
