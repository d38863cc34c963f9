#!/usr/bin/env bash
# Regenerates include/vhdkit.h from src/capi with cbindgen (cargo install
# cbindgen --locked). tests/capi_header.rs fails when the committed header
# differs from what this makes.
set -euo pipefail
cd "$(dirname "$0")/.."
cbindgen --config cbindgen.toml --quiet --output include/vhdkit.h src/capi/mod.rs
echo "include/vhdkit.h regenerated"
