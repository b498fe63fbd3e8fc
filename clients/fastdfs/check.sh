#!/usr/bin/env bash
# FastDFS client libraries against fdfs's FastDFS door (CI runs this; so can you). Installs two independent
# FastDFS clients from their registries into target/ (npm `fdfs` into target/fastdfs-node, PyPI
# `fastdfs-client` into the venv target/fastdfs-venv, with ruff and mypy for the driver), builds `fdfs` (debug),
# then for each client starts `fdfs up --fastdfs-port 0` (one group, two members) with the IP width the client
# was written for and runs its driver: node_client.js (16-byte addresses) and python_client.py (46-byte
# addresses). Each driver uploads, downloads (whole and ranged) and deletes through its library and checks the
# same file over HTTP (bytes, ID, the delete reaching both members).
#
# Needs node/npm and python3 (with venv); installs are idempotent and pinned.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/clients/fastdfs"
VENV="$ROOT/target/fastdfs-venv"
NODE_DIR="$ROOT/target/fastdfs-node"
PY="$VENV/bin/python"

if [[ ! -x "$PY" ]]; then
    if ! python3 -m venv "$VENV"; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
        python3 -m venv "$VENV"
    fi
fi
"$PY" -m pip install -q --disable-pip-version-check "fastdfs-client==1.3.0" "mypy==2.4.1" "ruff==0.17.6"
if ! command -v npm >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
fi
if [[ ! -f "$NODE_DIR/node_modules/fdfs/package.json" ]]; then
    mkdir -p "$NODE_DIR"
    npm install --silent --no-audit --no-fund --prefix "$NODE_DIR" "fdfs@1.0.4"
fi
# `--setup`: only the installs (.ci/prepare runs them while cargo builds).
[[ ${1:-} == --setup ]] && exit 0
(cd "$ROOT" && cargo build -q -p fdfs)
FDFS="$ROOT/target/debug/fdfs"

echo "== clients/fastdfs: ruff, mypy"
(cd "$HERE" && "$VENV/bin/ruff" check . && "$VENV/bin/ruff" format --check . && "$VENV/bin/mypy")

UP_PID=""
WORK="$(mktemp -d)"
stop_cluster() {
    if [[ -n "$UP_PID" ]]; then
        kill "$UP_PID" 2>/dev/null || true
        wait "$UP_PID" 2>/dev/null || true
        UP_PID=""
    fi
}
cleanup() {
    stop_cluster
    rm -rf "$WORK"
}
trap cleanup EXIT

# Start `fdfs up` with FastDFS addresses of the given width; sets TRACKER (FastDFS address) and GATEWAY.
start_cluster() {
    local width="$1" dir="$WORK/cluster-$1"
    FDFS_FASTDFS_IP_WIDTH="$width" "$FDFS" up --port 0 --fastdfs-port 0 --groups 1 --members 2 \
        --data "$dir" >"$WORK/up-$width.out" 2>"$WORK/up-$width.err" &
    UP_PID=$!
    for _ in $(seq 240); do
        grep -q "ctrl-c stops the cluster" "$WORK/up-$width.out" && break
        if ! kill -0 "$UP_PID" 2>/dev/null; then
            cat "$WORK/up-$width.err"
            echo "fdfs up exited" >&2
            exit 1
        fi
        sleep 0.5
    done
    grep -q "ctrl-c stops the cluster" "$WORK/up-$width.out" || { cat "$WORK/up-$width.err"; exit 1; }
    TRACKER="$(awk '$1 == "tracker" { print $4 }' "$WORK/up-$width.out")"
    GATEWAY="$(awk '$1 == "gateway" { print $2 }' "$WORK/up-$width.out")"
    echo "cluster (ip width $width): gateway $GATEWAY, FastDFS tracker $TRACKER"
}

echo "== npm fdfs@1.0.4 (16-byte addresses)"
start_cluster 16
NODE_PATH="$NODE_DIR/node_modules" node "$HERE/node_client.js" "$TRACKER" "$GATEWAY"
stop_cluster

echo "== PyPI fastdfs-client==1.3.0 (46-byte addresses)"
start_cluster 46
"$PY" "$HERE/python_client.py" "$TRACKER" "$GATEWAY"
stop_cluster
echo "== clients/fastdfs: ok"
