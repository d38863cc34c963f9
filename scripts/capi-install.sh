#!/usr/bin/env bash
# Builds vhdkit as a C library and installs it under PREFIX:
#   PREFIX/include/vhdkit.h
#   PREFIX/lib/libvhdkit.so.MAJOR.MINOR.PATCH, with the links libvhdkit.so.0
#     (its soname) and libvhdkit.so (for the linker)
#   PREFIX/lib/libvhdkit.a
#   PREFIX/lib/pkgconfig/vhdkit.pc
# what `cargo cinstall` would install (see README, "From C, C# and other
# languages", for why this script rather than cargo-c).
#
# usage: scripts/capi-install.sh PREFIX [--debug]
# The library is built once per profile in target/; rerunning is cheap.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${1:?usage: scripts/capi-install.sh PREFIX [--debug]}
profile=release
[[ ${2:-} == --debug ]] && profile=debug
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
abi_major=0   # the soname's number: bumped with an incompatible ABI
args=(--lib --features capi --crate-type cdylib,staticlib)
[[ $profile == release ]] && args+=(--release)
# rustc prints what a static link needs besides libvhdkit.a (the standard
# library's and the dependencies' system libraries) for the .pc file; cargo
# replays that note when the build is already fresh.
rustc_args=(--print native-static-libs)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
[[ $(uname -s) == Linux ]] && rustc_args+=(-C "link-arg=-Wl,-soname,libvhdkit.so.$abi_major")
cargo rustc "${args[@]}" -- "${rustc_args[@]}" 2> >(tee "$log" >&2)
static_libs=$(sed -n 's/.*native-static-libs: //p' "$log" | tail -1)
out=target/$profile
mkdir -p "$prefix/include" "$prefix/lib/pkgconfig"
prefix=$(cd "$prefix" && pwd)
install -m 644 include/vhdkit.h "$prefix/include/vhdkit.h"
install -m 644 "$out/libvhdkit.a" "$prefix/lib/libvhdkit.a"
install -m 755 "$out/libvhdkit.so" "$prefix/lib/libvhdkit.so.$version"
ln -sf "libvhdkit.so.$version" "$prefix/lib/libvhdkit.so.$abi_major"
ln -sf "libvhdkit.so.$abi_major" "$prefix/lib/libvhdkit.so"
cat > "$prefix/lib/pkgconfig/vhdkit.pc" <<PC
prefix=$prefix
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: vhdkit
Description: Read Hyper-V virtual disks (VHD, VHDX) and keep small, verified backups of them
Version: $version
Libs: -L\${libdir} -lvhdkit
Libs.private: ${static_libs:--lpthread -ldl -lm}
Cflags: -I\${includedir}
PC
echo "installed vhdkit $version into $prefix"
