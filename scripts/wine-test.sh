#!/usr/bin/env bash
# wine-test.sh [CARGO TEST ARGS...]: runs tests built for x86_64-pc-windows-gnu
# as Windows programs under Wine (CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER).
#
# Sets up, once, in target/wine: a Wine prefix, and in its system32 the
# ProcessPrng shim (scripts/wine/processprng.c, built with mingw-w64) that
# Debian 12's Wine 8 lacks and every Rust program needs. Needs wine64,
# gcc-mingw-w64-x86-64 and `rustup target add x86_64-pc-windows-gnu`.
#
# Example: scripts/wine-test.sh --features capi --lib --test corpus
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
wine_dir="$here/target/wine"
export WINEPREFIX="$wine_dir/prefix"
export WINEDEBUG=-all          # Wine's own chatter off; the tests' output stays
export WINEDLLOVERRIDES="mscoree,mshtml=;winemenubuilder.exe=d"  # no Mono/Gecko prompts
mkdir -p "$wine_dir"
shim="$wine_dir/bcryptprimitives.dll"
if [ ! -f "$shim" ] || [ "$here/scripts/wine/processprng.c" -nt "$shim" ]; then
    x86_64-w64-mingw32-gcc -O2 -shared -o "$shim" "$here/scripts/wine/processprng.c" \
        "$here/scripts/wine/processprng.def" -ladvapi32
fi
if [ ! -d "$WINEPREFIX/drive_c/windows/system32" ]; then
    wineboot --init >/dev/null 2>&1 || true
    wineserver --wait
fi
cp "$shim" "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll"
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=wine
cd "$here"
cargo test --target x86_64-pc-windows-gnu "$@"
