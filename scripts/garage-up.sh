#!/usr/bin/env bash
# garage-up.sh DIR: starts a one-node Garage cluster (a real, distributed S3
# server: `cargo install garage`) on loopback ports, with its files in DIR,
# makes a bucket `vhdkit-test` and a key that may use it, and prints
#   pid=PID
#   endpoint=http://127.0.0.1:PORT
#   key_id=GK...
#   secret=...
# The caller stops it with `kill PID`. tests/store_garage.rs runs it when
# `garage` is on the PATH (or GARAGE names the binary).
set -euo pipefail
dir=$(realpath -m "$1")
garage=${GARAGE:-garage}
mkdir -p "$dir/meta" "$dir/data"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
rpc=$(free_port); s3=$(free_port); admin=$(free_port)
cat >"$dir/garage.toml" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(python3 -c 'import secrets; print(secrets.token_hex(32))')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin"
admin_token = "$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
EOF
g() { "$garage" -c "$dir/garage.toml" "$@"; }
g server >"$dir/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' ERR
for _ in $(seq 100); do
    g status >/dev/null 2>&1 && break
    sleep 0.2
done
node=$(g node id -q 2>/dev/null | cut -d@ -f1)
g layout assign -z dc1 -c 1G "$node" >/dev/null
g layout apply --version 1 >/dev/null
g bucket create vhdkit-test >/dev/null
keys=$(g key create vhdkit-test)
key_id=$(printf '%s\n' "$keys" | awk -F': *' '/Key ID/ {print $2; exit}')
secret=$(printf '%s\n' "$keys" | awk -F': *' '/Secret key/ {print $2; exit}')
g bucket allow --read --write --owner vhdkit-test --key "$key_id" >/dev/null
echo "pid=$pid"
echo "endpoint=http://127.0.0.1:$s3"
echo "key_id=$key_id"
echo "secret=$secret"
