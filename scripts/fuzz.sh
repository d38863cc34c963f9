#!/usr/bin/env bash
# fuzz.sh SECONDS [TARGET...]: runs each fuzz target (all by default) for SECONDS, two at a time,
# with debug assertions (so arithmetic overflow panics), address sanitizer, a 2 GiB RSS limit and
# the formats' dictionaries. Seeds come from scripts/fuzz-seeds.py when fuzz/corpus is missing.
# Prints executions per target; exits non-zero if any target found a crash (saved under
# fuzz/artifacts/TARGET/).
set -euo pipefail
seconds=${1:-60}
shift || true
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here/fuzz"
export RUSTC_BOOTSTRAP=1
if ! command -v cargo-fuzz >/dev/null; then
    cargo install cargo-fuzz --locked
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
if [ ! -d corpus ]; then
    python3 "$here/scripts/fuzz-seeds.py" "${VHDKIT_CORPUS:-$here/../shared/corpus}" corpus
fi
cat dict/vhd.dict dict/vhdx.dict > dict/all.dict
cargo fuzz build -a -O

run_one() {
    local t=$1 dict
    case $t in
        vhd_*) dict=dict/vhd.dict ;;
        vhdx_*) dict=dict/vhdx.dict ;;
        *) dict=dict/all.dict ;;
    esac
    mkdir -p "corpus/$t"
    local log
    log=$(mktemp)
    if cargo fuzz run -a -O "$t" "corpus/$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
        -timeout=10 -dict="$dict" -print_final_stats=1 >"$log" 2>&1; then
        printf '%-20s ok   %s executions\n' "$t" "$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')"
        rm -f "$log"
    else
        printf '%-20s FAILED (log: %s)\n' "$t" "$log"
        grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -5
        return 1
    fi
}

status=0
pids=()
for t in "${targets[@]}"; do
    run_one "$t" &
    pids+=($!)
    if [ ${#pids[@]} -ge "${FUZZ_JOBS:-2}" ]; then
        wait "${pids[0]}" || status=1
        pids=("${pids[@]:1}")
    fi
done
for p in "${pids[@]}"; do
    wait "$p" || status=1
done
exit $status
