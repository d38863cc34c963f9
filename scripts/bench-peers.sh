#!/usr/bin/env bash
# bench-peers.sh [DIR] [ROUNDS]: vhdkit against its peers on the same disk, in the same run.
#
# The disk is ../shared/tools/perfdisk.sh's: a 3 GiB dynamic VHDX holding ext4 filled with system
# libraries, a copy with ~1 % scattered changes, and those changes as ranges.json. Each round runs
# every tool once, alternating, with the image in the page cache and every store or repository on
# the same file system; medians and same-run ratios are printed, since absolute times on a shared
# machine mean little. Needs qemu-img, b3sum, restic and borg (apt: qemu-utils restic borgbackup;
# cargo install b3sum); tools that are missing are skipped.
set -euo pipefail
dir=${1:-/tmp/vhdkit-peers}
rounds=${2:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
perfdisk=${PERFDISK:-$here/../shared/tools/perfdisk.sh}
mkdir -p "$dir"
bash "$perfdisk" "$dir" >/dev/null
cd "$here"
cargo build -q --release --example vhdkit
vhdkit=$here/target/release/examples/vhdkit
disk=$dir/disk.vhdx
disk2=$dir/disk2.vhdx
cat "$disk" "$disk2" >/dev/null
have() { command -v "$1" >/dev/null; }
export RESTIC_PASSWORD=bench BORG_PASSPHRASE= BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes

declare -A times rss
# run NAME CMD...: times one command (wall seconds and peak RSS in KiB).
run() {
    local name=$1
    shift
    sync
    local log out
    log=$(mktemp)
    # -o: the tool's own stderr is discarded, time's report is kept apart.
    /usr/bin/time -o "$log" -f '%e %M' "$@" >/dev/null 2>&1
    out=$(tail -n 1 "$log")
    rm -f "$log"
    times[$name]="${times[$name]:-} ${out% *}"
    rss[$name]="${rss[$name]:-} ${out#* }"
}

for ((r = 0; r < rounds; r++)); do
    if have b3sum; then run "b3sum (2 threads)" b3sum --num-threads 2 "$disk"; fi
    rm -rf "$dir/store"
    "$vhdkit" store init "$dir/store" >/dev/null
    run "vhdkit backup (full)" "$vhdkit" backup "$dir/store" "$disk" --name disk
    rm -rf "$dir/store-mmap"
    "$vhdkit" store init "$dir/store-mmap" >/dev/null
    run "vhdkit backup --mmap (full)" "$vhdkit" backup --mmap "$dir/store-mmap" "$disk" --name disk
    run "vhdkit backup (1% ranges)" "$vhdkit" backup "$dir/store" "$disk2" --name disk --changed "$dir/ranges.json" --force
    run "vhdkit backup (1% hash)" "$vhdkit" backup "$dir/store" "$disk2" --name disk
    rm -f "$dir/restored.raw" "$dir/qemu.raw"
    run "vhdkit restore to raw" "$vhdkit" restore "$dir/store" disk "$dir/restored.raw" --to raw --force
    if have qemu-img; then run "qemu-img convert -O raw" qemu-img convert -t writeback -O raw "$disk2" "$dir/qemu.raw"; fi
    if have restic; then
        rm -rf "$dir/restic"
        restic init -q -r "$dir/restic" >/dev/null
        run "restic backup" restic backup -q -r "$dir/restic" "$disk"
    fi
    if have borg; then
        rm -rf "$dir/borg"
        borg init -e none "$dir/borg" >/dev/null
        run "borg create" borg create "$dir/borg::a" "$disk"
    fi
done
cmp -s "$dir/restored.raw" "$dir/qemu.raw" && echo "(restore checked: equal to qemu-img's raw view of disk2.vhdx)"

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A med
printf '\n%-28s %10s %12s\n' tool "median s" "peak RSS MiB"
for name in "b3sum (2 threads)" "vhdkit backup (full)" "vhdkit backup --mmap (full)" "vhdkit backup (1% ranges)" "vhdkit backup (1% hash)" \
    "vhdkit restore to raw" "qemu-img convert -O raw" "restic backup" "borg create"; do
    [ -n "${times[$name]:-}" ] || continue
    med[$name]=$(echo "${times[$name]}" | median)
    printf '%-28s %10.2f %12.0f\n' "$name" "${med[$name]}" "$(echo "$(echo "${rss[$name]}" | median) / 1024" | bc -l)"
done
ratio() { [ -n "${med[$1]:-}" ] && [ -n "${med[$2]:-}" ] && printf '%-62s %8.2f\n' "$3" "$(echo "${med[$1]} / ${med[$2]}" | bc -l)"; return 0; }
echo
ratio "restic backup" "vhdkit backup (full)" "full backup: restic time / vhdkit time (target >= 15)"
ratio "borg create" "vhdkit backup (full)" "full backup: borg time / vhdkit time (target >= 15)"
ratio "b3sum (2 threads)" "vhdkit backup (full)" "full backup: b3sum time / vhdkit time (hash-rate share)"
ratio "restic backup" "vhdkit backup --mmap (full)" "full backup --mmap: restic time / vhdkit time"
ratio "borg create" "vhdkit backup --mmap (full)" "full backup --mmap: borg time / vhdkit time"
ratio "vhdkit backup (1% ranges)" "vhdkit backup (full)" "incremental (ranges) time / full time (target < 0.05)"
ratio "vhdkit backup (1% hash)" "vhdkit backup (full)" "incremental (hash) time / full time"
ratio "qemu-img convert -O raw" "vhdkit restore to raw" "restore: qemu-img convert time / vhdkit restore time (target >= 1)"
