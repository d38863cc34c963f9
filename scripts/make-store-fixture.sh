#!/usr/bin/env bash
# make-store-fixture.sh VHDKIT OUT: writes the committed fixture stores that
# tests/store_fixture.rs reads with every later build, so the store format
# can never drift unnoticed. VHDKIT is the vhdkit binary to write them with
# (the build of the day they were made); OUT is tests/fixtures/stores.
#
# Two stores, plain and encrypted (under the key file key.bin), each with a
# full backup, an incremental merged into a full generation (manifest ~1),
# a later incremental on top of it, and a two-disk restore point with a tag
# and an attachment. The disks are made here from a fixed recipe, and
# expected.json records their SHA-256 (of the disks, never of a restore),
# with the ids the stores gave the backups. Small: 64 KiB chunks of
# repeated text and zeros, zstd.
set -euo pipefail
vhdkit=$(realpath "$1")
out=$2
rm -rf "$out"
mkdir -p "$out"
out=$(realpath "$out")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Disks: 256 KiB of repeated lines and zeros; each version changes a little.
python3 - "$work" <<'EOF'
import hashlib, json, os, sys
work = sys.argv[1]
def disk(seed, size=256 * 1024):
    # Each 64 KiB chunk distinct, all of them compressible; some zero.
    d = bytearray(size)
    for c in range(size // 65536):
        if (c + seed) % 3 == 1:
            continue
        line = f"vhdkit fixture {seed} chunk {c}: the quick brown fox\n".encode()
        block = (line * (65536 // len(line) + 1))[:65536]
        d[c * 65536:(c + 1) * 65536] = block
    return bytes(d)
versions = {"v1": disk(1), "v2": disk(2)}
v3 = bytearray(versions["v2"])
v3[130 * 1024:130 * 1024 + 5000] = b"x" * 5000
versions["v3"] = bytes(v3)
versions["data"] = disk(7, 128 * 1024)
digests = {}
for name, b in versions.items():
    with open(os.path.join(work, name + ".raw"), "wb") as f:
        f.write(b)
    digests[name] = hashlib.sha256(b).hexdigest()
with open(os.path.join(work, "vm.cfg"), "wb") as f:
    f.write(b"<vm name='fixture'/>\n")
digests["vm.cfg"] = hashlib.sha256(b"<vm name='fixture'/>\n").hexdigest()
json.dump(digests, open(os.path.join(work, "digests.json"), "w"), indent=1, sort_keys=True)
EOF

# A key file of fixed bytes, committed with the encrypted store.
python3 -c 'import sys; sys.stdout.buffer.write(bytes(range(32)))' >"$out/key.bin"

one_store() {
    local store=$1 init=$2; shift 2
    local disk="$work/disk.raw"
    # shellcheck disable=SC2086
    "$vhdkit" "$@" store init "$store" --chunk-size 64K --compression zstd --pack-size 1M $init >/dev/null
    cp "$work/v1.raw" "$disk"
    local full inc merged top point
    full=$("$vhdkit" "$@" backup "$store" --from raw "$disk" --name disk 2>/dev/null | tail -n1)
    cp "$work/v2.raw" "$disk"
    inc=$("$vhdkit" "$@" backup "$store" --from raw "$disk" --name disk 2>/dev/null | tail -n1)
    "$vhdkit" "$@" merge "$store" "$inc" >/dev/null
    cp "$work/v3.raw" "$disk"
    top=$("$vhdkit" "$@" backup "$store" --from raw "$disk" --name disk 2>/dev/null | tail -n1)
    point=$("$vhdkit" "$@" backup "$store" --from raw "$work/v3.raw" "$work/data.raw" --label os --label data \
        --name vm --tag site=lab --attach "$work/vm.cfg" 2>/dev/null | tail -n1)
    echo "{\"full\": \"$full\", \"merged\": \"$inc\", \"top\": \"$top\", \"point\": \"$point\"}"
}

plain=$(one_store "$out/plain" "")
encrypted=$(one_store "$out/encrypted" --encrypt --key-file "$out/key.bin")
# Nothing a reader needs lives in tmp/ or locks/; keep the folders (empty
# folders are not committed, and the store recreates them).
find "$out" -path '*/locks/*' -delete
find "$out" -path '*/tmp/*' -delete

python3 - "$work/digests.json" "$out/expected.json" "$plain" "$encrypted" "$("$vhdkit" --version)" <<'EOF'
import json, sys
digests = json.load(open(sys.argv[1]))
expected = {
    "made_by": sys.argv[5],
    "disks": {"full": digests["v1"], "merged": digests["v2"], "top": digests["v3"],
              "point_os": digests["v3"], "point_data": digests["data"], "attachment": digests["vm.cfg"]},
    "plain": json.loads(sys.argv[3]),
    "encrypted": json.loads(sys.argv[4]),
}
json.dump(expected, open(sys.argv[2], "w"), indent=1, sort_keys=True)
EOF
du -sh "$out"
