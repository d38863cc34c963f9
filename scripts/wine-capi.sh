#!/usr/bin/env bash
# wine-capi.sh: builds vhdkit.dll (x86_64-pc-windows-gnu, debug), compiles the
# README's C example (examples/c/backup.c) against it with mingw-w64, and runs
# it under Wine: a full backup of a qemu-made VHDX, then an incremental from a
# Hyper-V change list. Fails unless the second is incremental and read only
# the changed chunks. The images are made on the Linux side (qemu-img).
# Needs what scripts/wine-test.sh needs, and qemu-img/qemu-io.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
# Without S3 (a folder store here), so the DLL shares the dependencies
# scripts/wine-test.sh built for CI's Windows leg.
cargo rustc --target x86_64-pc-windows-gnu --lib --no-default-features --features capi,mmap --crate-type cdylib
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
qemu-img create -q -f vhdx "$work/base.vhdx" 64M
qemu-io -f vhdx -c "write -P 0x11 0 8M" -c "write -P 0x22 20M 3M" "$work/base.vhdx" >/dev/null
cp "$work/base.vhdx" "$work/changed.vhdx"
qemu-io -f vhdx -c "write -P 0x33 1M 64k" -c "write -P 0x44 40M 1M" "$work/changed.vhdx" >/dev/null
echo '{"ChangedByteOffsets":[1048576,41943040],"ChangedByteLengths":[65536,1048576],"ProcessedByteLength":67108864}' \
    >"$work/changes.json"
out=target/x86_64-pc-windows-gnu/debug
x86_64-w64-mingw32-gcc -std=c11 -Wall -Wextra -Werror -O2 -Iinclude -o "$work/backup.exe" examples/c/backup.c \
    "$out/libvhdkit.dll.a"
cp "$out/vhdkit.dll" "$work/"
# The prefix and shim scripts/wine-test.sh made (run it first).
export WINEPREFIX="$here/target/wine/prefix" WINEDEBUG=-all
cd "$work"
full=$(wine backup.exe store vm base.vhdx)
incremental=$(wine backup.exe store vm changed.vhdx changes.json)
echo "full: $full"
echo "incremental: $incremental"
grep -q '"kind":"full"' <<<"$full"
# Three 512 KiB chunks: the one holding the 64 KiB change, and the two
# the 1 MiB change covers.
grep -q '"kind":"incremental"' <<<"$incremental"
grep -q '"bytes_read":1572864' <<<"$incremental"
echo "the C example ran against vhdkit.dll under Wine"
