#!/usr/bin/env bash
# bench-crypt.sh PERF_DIR [ROUNDS] [PARTS]
#
# ROUNDS (even, default 6): each pair runs once per round, and which side
# goes first alternates; ratios are geometric means over the rounds.
#
# The per-chunk pipeline (hash, compress, seal) against what bounds it, every
# pair timed in the same round, alternating which goes first, on the same
# cores and file system (the machine's speed drifts; only same-run ratios
# mean anything). PARTS (default "crypt zstd restic levels") picks:
#
#   crypt   full backup into a fresh encrypted store against the same backup
#           into a fresh plain store, compression none and zstd, on the
#           perfdisk and on a dense 2 GiB disk of random bytes
#           (PERF_DIR/dense.vhdx, made once by qemu-img); then restore of
#           each to raw (both flush), and streamed to /dev/null (decoding
#           alone: the output file's writing is the same work on both sides
#           and the noisiest part). Prints encrypted/plain throughput.
#   zstd    a full backup into a fresh zstd store at level L against
#           `zstd -L -T2` of the same image file, flushed like our packs
#           (L = 1 and 3). Prints vhdkit/zstd throughput.
#   restic  a full backup into a fresh zstd-3 store against `restic backup`
#           (repository v2, compression auto) of the same file, both on the
#           same file system; prints time ratio and stored sizes.
#   levels  stored size and backup time for zstd levels 1 to 9 on the
#           perfdisk, and stored size on every image of the corpus.
#
# Environment: VHDKIT (default target/release/examples/vhdkit), OUT (where
# stores go; default PERF_DIR/bench-crypt), CORPUS (default
# ../shared/corpus). Needs qemu-img, zstd, restic, python3.
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: $0 PERF_DIR [ROUNDS] [PARTS]" >&2; exit 2; }
PERF=$(cd "$1" && pwd)
ROUNDS=${2:-6}
[ $((ROUNDS % 2)) = 0 ] || { echo "ROUNDS must be even: each side goes first equally often" >&2; exit 2; }
PARTS=${3:-crypt zstd restic levels}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VHDKIT=${VHDKIT:-$HERE/../target/release/examples/vhdkit}
CORPUS=${CORPUS:-$HERE/../../shared/corpus}
OUT=${OUT:-$PERF/bench-crypt}
[ -x "$VHDKIT" ] || { echo "no vhdkit at $VHDKIT (cargo build --release --example vhdkit)" >&2; exit 1; }
mkdir -p "$OUT"
KEY=$OUT/key
[ -f "$KEY" ] || head -c 32 /dev/urandom >"$KEY"
export RESTIC_PASSWORD=bench

if [ ! -f "$PERF/dense.vhdx" ]; then
  head -c $((2 << 30)) /dev/urandom >"$OUT/dense.raw"
  qemu-img convert -f raw -O vhdx -o subformat=dynamic "$OUT/dense.raw" "$PERF/dense.vhdx"
  rm "$OUT/dense.raw"
fi
cat "$PERF/disk.vhdx" "$PERF/dense.vhdx" >/dev/null

# secs CMD...: wall seconds of one command (its output discarded). Dirty
# pages of earlier runs are written back first, so they do not land on
# this one.
secs() {
  local t0 t1
  sync
  t0=$(date +%s.%N)
  # A failed command is no timing: stop the script (set -e does not reach
  # inside the $(...) that calls this).
  "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; kill -TERM $$; exit 1; }
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc
}
stat_mb() { du -sb "$1" | awk '{printf "%.1f", $1 / 1048576}'; }
# The geometric mean of ratios: with rounds alternating which side goes
# first, order effects cancel.
geomean() { python3 -c 'import statistics, sys; print(f"{statistics.geometric_mean(float(x) for x in sys.argv[1:]):.3f}")' "$@"; }

# store NAME COMPRESSION LEVEL ENCRYPT: a fresh store.
store() {
  rm -rf "$OUT/$1"
  local enc=()
  [ "$4" = 1 ] && enc=(--encrypt --key-file "$KEY")
  "$VHDKIT" store init "$OUT/$1" --compression "$2" --zstd-level "$3" "${enc[@]}" >/dev/null
}
key_of() { [ "$1" = 1 ] && echo "--key-file $KEY" || true; }

if [[ " $PARTS " == *" crypt "* ]]; then
  echo "== encrypted against plain (throughput ratio enc/plain, geometric mean over rounds; above 1: encrypted is faster)"
  echo "   restore: to a raw file (flushed), and streamed to /dev/null (decoding alone)"
  for disk in disk dense; do
    for comp in none zstd; do
      b=(); r=(); d=()
      for ((i = 0; i < ROUNDS; i++)); do
        declare -A tb tr td
        order=(0 1); [ $((i % 2)) = 1 ] && order=(1 0)
        for enc in "${order[@]}"; do
          store "s$enc" "$comp" 3 "$enc"
          # shellcheck disable=SC2046
          tb[$enc]=$(secs "$VHDKIT" backup "$OUT/s$enc" "$PERF/$disk.vhdx" --name d $(key_of "$enc"))
        done
        for enc in "${order[@]}"; do
          # Every output gone before each run: the page cache holds the same.
          rm -f "$OUT"/r?.raw
          # shellcheck disable=SC2046
          tr[$enc]=$(secs "$VHDKIT" restore "$OUT/s$enc" d "$OUT/r$enc.raw" --to raw --force $(key_of "$enc"))
          if [ "$i" = 0 ]; then
            qemu-img compare -q -f raw -F vhdx "$OUT/r$enc.raw" "$PERF/$disk.vhdx" ||
              { echo "the restore differs from the image" >&2; exit 1; }
          fi
        done
        rm -f "$OUT"/r?.raw
        for enc in "${order[@]}"; do
          # shellcheck disable=SC2046
          td[$enc]=$(secs sh -c "'$VHDKIT' restore '$OUT/s$enc' d - --to raw $(key_of "$enc") >/dev/null")
        done
        b+=("$(echo "scale=4; ${tb[0]} / ${tb[1]}" | bc)")
        r+=("$(echo "scale=4; ${tr[0]} / ${tr[1]}" | bc)")
        d+=("$(echo "scale=4; ${td[0]} / ${td[1]}" | bc)")
        printf '  %-5s %-4s round %d: backup plain %6.2fs enc %6.2fs | restore plain %6.2fs enc %6.2fs | to /dev/null plain %5.2fs enc %5.2fs\n' \
          "$disk" "$comp" "$i" "${tb[0]}" "${tb[1]}" "${tr[0]}" "${tr[1]}" "${td[0]}" "${td[1]}"
      done
      printf '%-5s %-4s backup %s   restore %s   restore to /dev/null %s   (enc/plain, %d rounds)\n' \
        "$disk" "$comp" "$(geomean "${b[@]}")" "$(geomean "${r[@]}")" "$(geomean "${d[@]}")" "$ROUNDS"
    done
  done
fi

if [[ " $PARTS " == *" zstd "* ]]; then
  echo "== zstd store against zstd -T2 of the same file, both flushed (throughput ratio vhdkit/zstd)"
  for level in 1 3; do
    ratios=()
    for ((i = 0; i < ROUNDS; i++)); do
      run_v() { store z zstd "$level" 0; secs "$VHDKIT" backup "$OUT/z" "$PERF/disk.vhdx" --name d; }
      run_z() { rm -f "$OUT/z.zst"; secs sh -c "zstd -q -T2 -$level '$PERF/disk.vhdx' -o '$OUT/z.zst' && sync '$OUT/z.zst'"; }
      if [ $((i % 2)) = 0 ]; then tv=$(run_v); tz=$(run_z); else tz=$(run_z); tv=$(run_v); fi
      ratios+=("$(echo "scale=4; $tz / $tv" | bc)")
      printf '  level %d round %d: vhdkit %6.2fs (%s MiB)  zstd %6.2fs (%s MiB)\n' "$level" "$i" "$tv" \
        "$(stat_mb "$OUT/z/packs")" "$tz" "$(stat_mb "$OUT/z.zst")"
    done
    printf 'level %d: vhdkit/zstd throughput %s (geometric mean of %d)\n' "$level" "$(geomean "${ratios[@]}")" "$ROUNDS"
  done
fi

if [[ " $PARTS " == *" restic "* ]]; then
  echo "== zstd-3 store against restic backup (compression auto); throughput ratio vhdkit/restic"
  ratios=()
  for ((i = 0; i < ROUNDS; i++)); do
    run_v() { store z zstd 3 0; secs "$VHDKIT" backup "$OUT/z" "$PERF/disk.vhdx" --name d; }
    run_r() {
      rm -rf "$OUT/restic"
      restic init -q --repository-version 2 -r "$OUT/restic" >/dev/null 2>&1 ||
        { echo "failed: restic init" >&2; kill -TERM $$; exit 1; }
      secs restic backup -q --no-cache -r "$OUT/restic" "$PERF/disk.vhdx"
    }
    if [ $((i % 2)) = 0 ]; then tv=$(run_v); trs=$(run_r); else trs=$(run_r); tv=$(run_v); fi
    ratios+=("$(echo "scale=4; $trs / $tv" | bc)")
    printf '  round %d: vhdkit %6.2fs (%s MiB stored)  restic %6.2fs (%s MiB stored)\n' "$i" "$tv" \
      "$(stat_mb "$OUT/z")" "$trs" "$(stat_mb "$OUT/restic")"
  done
  printf 'vhdkit/restic throughput %s (geometric mean of %d)\n' "$(geomean "${ratios[@]}")" "$ROUNDS"
fi

if [[ " $PARTS " == *" levels "* ]]; then
  echo "== zstd level: stored MiB and backup seconds on the perfdisk; stored share on the corpus"
  printf '%-6s %10s %10s %14s\n' level stored_MiB seconds corpus_ratio
  tmp=$(mktemp -d)
  # The corpus's images, decompressed once.
  find "$CORPUS" -type f \( -name '*.vhd*' \) | while read -r f; do
    case $f in
      *.gz) gzip -dc "$f" >"$tmp/$(basename "${f%.gz}")" ;;
      *.bz2) bzip2 -dc "$f" >"$tmp/$(basename "${f%.bz2}")" ;;
      *) cp "$f" "$tmp/" ;;
    esac
  done
  for level in 1 2 3 4 5 6 7 9; do
    store z zstd "$level" 0
    t=$(secs "$VHDKIT" backup "$OUT/z" "$PERF/disk.vhdx" --name d)
    size=$(stat_mb "$OUT/z/packs")
    store c zstd "$level" 0
    logical=0
    for img in "$tmp"/*; do
      if "$VHDKIT" backup "$OUT/c" "$img" --name "$(basename "$img")" >/dev/null 2>&1; then :; fi
    done
    corpus=$("$VHDKIT" stats "$OUT/c" --json | python3 -c 'import json,sys; print("%.3f" % json.load(sys.stdin)["compression_ratio"])')
    printf '%-6s %10s %10.2f %14s\n' "$level" "$size" "$t" "$corpus"
  done
  rm -rf "$tmp"
fi
