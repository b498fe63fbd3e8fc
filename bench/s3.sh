#!/usr/bin/env bash
# The fdfs S3 door next to SeaweedFS's S3 gateway, side by side in one run: PutObject and GetObject of 4 KiB and
# 1 MiB at the same concurrency, one table with req/s, latency and server CPU per request.
#
#   bash bench/s3.sh                 # about 2 minutes after the builds
#   SECS=20 CONC=32 bash bench/s3.sh
#
# Knobs (environment):
#   SECS=8          seconds of each timed run
#   CONC=16         concurrent clients (connections)
#   THREADS=1       client threads (s3load and loadgen)
#   SIZES="4k 1m"   object sizes
#   WORK=target/bench   where the data, logs, venv and loadgen build go
#   FDFS_BIN= / S3LOAD= / LG= / WEED=   use these binaries instead of building or installing them
#   SKIP_FSYNC=1    leave out the SeaweedFS runs with fsync configured on the bucket
#   KEEP=1          keep $WORK/run (data and logs) after the run
#   PROFILE=1       `perf record -e cpu-clock` the fdfs servers during the 4 KiB PutObject run; a flat profile
#                   (by process, then the gateway's and the storage nodes' top symbols) goes to
#                   $WORK/profile-s3-put-4k.txt
#
# The systems, both keeping 2 copies of every object, both checking SigV4 on every request:
#   fdfs       `fdfs up --s3-port P`, the default layout: 1 tracker, 2 groups x 2 storage nodes (write quorum 2:
#              a PUT answers once the file is fsynced on both members of its group and its key is in the
#              gateway's namespace, flushed), 1 gateway with the S3 door.
#   SeaweedFS  `weed server -s3` (master, volume server, filer, S3 gateway in one process) with
#              defaultReplication 001, plus a second `weed volume` on the same master so that 001 can be met;
#              identities from an `-s3.config` JSON. It does not fsync by default; the `sw-fsync` rows write
#              to a second bucket whose filer path is configured `fs.configure -fsync`.
# The clients, the same for both systems:
#   PutObject  s3load (bench/s3load): closed loop, one keep-alive connection per worker, every request signed
#              (SigV4 in the Authorization header, UNSIGNED-PAYLOAD), a distinct body per request.
#   GetObject  loadgen get --urls: presigned GET URLs (SigV4 query) of the objects the PUT run stored.
# Server CPU per request (cpu_us) is the user + system time of the servers' processes (and their children)
# over the run, divided by the successful requests.
set -euo pipefail

SECS=${SECS:-8}
CONC=${CONC:-16}
THREADS=${THREADS:-1}
SIZES=${SIZES:-4k 1m}
NAME=s3
WORK=${WORK:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/bench}
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

AK=benchaccesskey
SK=benchsecretkey0123456789abcdefghijklmnop

# ---------------------------------------------------------------- install and build
install_seaweed
build_loadgen
build_fdfs release
if [[ -z ${S3LOAD:-} ]]; then
    log "building s3load (release)"
    cargo build -q --release -p s3load
    S3LOAD=$ROOT/target/release/s3load
fi
fresh_run
RESULTS=$RUN/results
mkdir -p "$RESULTS"

# `run LABEL PIDS CMD...`: CMD's RESULT line to $RESULTS/LABEL, with cpu_us (server CPU per successful request of
# PIDS and their children) appended.
run() {
    local label=$1 pids=$2 rc=0 before after ok us gw0 gw1
    shift 2
    log "run $label"
    gw0=$(gw_ticks)
    before=$(cpu_ticks $pids)
    "$@" --threads "$THREADS" >"$RESULTS/$label.txt" 2>"$RESULTS/$label.err" || rc=$?
    after=$(cpu_ticks $pids)
    gw1=$(gw_ticks)
    [[ $rc == 0 ]] || log "$label: exit $rc: $(head -3 "$RESULTS/$label.err")"
    grep '^RESULT' "$RESULTS/$label.txt" >"$RESULTS/$label" || echo "RESULT err=1" >"$RESULTS/$label"
    ok=$(res "$label" ok)
    us=$(awk -v b="$before" -v a="$after" -v n="${ok:-0}" -v hz="$(getconf CLK_TCK)" \
        'BEGIN { if (n > 0) printf "%.0f", (a - b) * 1e6 / hz / n }')
    [[ -n $us ]] && sed -i "1s/\$/ cpu_us=$us/" "$RESULTS/$label"
    us=$(awk -v b="$gw0" -v a="$gw1" -v n="${ok:-0}" -v hz="$(getconf CLK_TCK)" \
        'BEGIN { if (n > 0) printf "%.0f", (a - b) * 1e6 / hz / n }')
    [[ $label != fdfs-* || -z $us ]] || sed -i "1s/\$/ gw_cpu_us=$us/" "$RESULTS/$label"
    if [[ -s $RESULTS/$label.err ]]; then head -3 "$RESULTS/$label.err" | sed "s/^/[$NAME] $label: /" >&2; fi
}
# CPU ticks of the fdfs gateway alone (part of the fdfs figure).
gw_ticks() { awk '{ print $14 + $15 }' "/proc/${PID_fdfs_gw:-0}/stat" 2>/dev/null || echo 0; }
res() {
    awk -v k="$2" '/^RESULT/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) print kv[2] } }' \
        "$RESULTS/$1" 2>/dev/null | head -1
}

# ---------------------------------------------------------------- fdfs
log "starting fdfs up (default layout) with the S3 door"
FD_S3=$(free_port)
LD_PRELOAD=${FDFS_PRELOAD:-} NO_COLOR=1 RUST_LOG=${RUST_LOG:-warn} "$FDFS_BIN" up --data "$RUN/fdfs" --port 0 \
    --s3-port "$FD_S3" --s3-access-key "$AK" --s3-secret-key "$SK" --no-restart \
    >"$RUN/logs/fdfs-up.out" 2>"$RUN/logs/fdfs-up.log" &
PIDS+=($!)
PID_fdfs=$!
for _ in $(seq 900); do
    grep -qE '^ *s3 +http' "$RUN/logs/fdfs-up.out" 2>/dev/null && break
    kill -0 "$PID_fdfs" 2>/dev/null || die "fdfs up exited; see $RUN/logs/fdfs-up.log"
    sleep 0.1
done
grep -qE '^ *s3 +http' "$RUN/logs/fdfs-up.out" || die "fdfs up did not get ready"
log "fdfs up: $(head -1 "$RUN/logs/fdfs-up.out")"
FD_EP=http://127.0.0.1:$FD_S3
PID_fdfs_gw=$(pgrep -P "$PID_fdfs" -f 'fdfs gateway' | head -1 || true)

# ---------------------------------------------------------------- SeaweedFS
log "starting SeaweedFS: weed server -s3 (defaultReplication 001) and a second volume server"
SW_DIR=$RUN/sw
mkdir -p "$SW_DIR/server" "$SW_DIR/v2"
cat >"$RUN/sw-s3.json" <<EOF
{"identities": [{"name": "bench", "credentials": [{"accessKey": "$AK", "secretKey": "$SK"}],
                 "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
EOF
SWM=$(free_port) SWM_G=$(free_port) SWV=$(free_port) SWV_G=$(free_port) SWF=$(free_port) SWF_G=$(free_port)
SW_S3=$(free_port) SW_S3_G=$(free_port)
"$WEED" server -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$SW_DIR/server" \
    -master.port="$SWM" -master.port.grpc="$SWM_G" -master.defaultReplication=001 -master.volumeSizeLimitMB=1024 \
    -master.telemetry=false -volume.port="$SWV" -volume.port.grpc="$SWV_G" -volume.max=16 \
    -filer.port="$SWF" -filer.port.grpc="$SWF_G" \
    -s3 -s3.port="$SW_S3" -s3.port.grpc="$SW_S3_G" -s3.port.iceberg=0 -s3.port.lance=0 -s3.config="$RUN/sw-s3.json" \
    >"$RUN/logs/sw-server.log" 2>&1 &
PIDS+=($!)
PID_sw=$!
wait_http "http://127.0.0.1:$SWM/cluster/status" "SeaweedFS master"
"$WEED" volume -ip=127.0.0.1 -ip.bind=127.0.0.1 -port="$(free_port)" -port.grpc="$(free_port)" -dir="$SW_DIR/v2" \
    -max=16 -mserver="127.0.0.1:$SWM.$SWM_G" >"$RUN/logs/sw-volume2.log" 2>&1 &
PIDS+=($!)
PID_swv2=$!
SW_EP=http://127.0.0.1:$SW_S3
wait_http "$SW_EP/" "SeaweedFS S3 gateway"
SW_PIDS="$PID_sw $PID_swv2"

# Buckets: s3load's CreateBucket, retried while a door is still starting (ours answers 503 until its namespace
# is built; SeaweedFS's volumes grow on the first write).
bucket() {
    local ep=$1 b=$2
    for _ in $(seq 300); do
        "$S3LOAD" bucket --endpoint "$ep" --bucket "$b" --access-key "$AK" --secret-key "$SK" 2>/dev/null && return
        sleep 0.2
    done
    "$S3LOAD" bucket --endpoint "$ep" --bucket "$b" --access-key "$AK" --secret-key "$SK" || die "CreateBucket $b at $ep"
}
bucket "$FD_EP" bench
bucket "$SW_EP" bench
if [[ -z ${SKIP_FSYNC:-} ]]; then
    bucket "$SW_EP" benchsync
    echo "fs.configure -locationPrefix=/buckets/benchsync/ -fsync -apply" |
        "$WEED" shell -master="127.0.0.1:$SWM.$SWM_G" -filer="127.0.0.1:$SWF.$SWF_G" >"$RUN/logs/sw-shell.log" 2>&1 ||
        die "weed shell fs.configure failed; see $RUN/logs/sw-shell.log"
    grep -q '"fsync": *true' "$RUN/logs/sw-shell.log" || log "warning: fs.configure did not echo fsync=true"
fi
# Wait until SeaweedFS takes a PUT (the master grows replicated volumes on the first assign).
for _ in $(seq 150); do
    "$S3LOAD" put --endpoint "$SW_EP" --bucket bench --access-key "$AK" --secret-key "$SK" --size 1k --n 1 -c 1 \
        --prefix warm- 2>/dev/null | grep -q 'ok=1 ' && break
    sleep 0.2
done

# ---------------------------------------------------------------- perf
# `profile NAME`: sample every fdfs server (gateway, storage nodes, tracker) for $SECS seconds in the background;
# `profile_done NAME` writes the flat profile: CPU share by process, then the top symbols of the gateway and of
# the storage nodes.
PERF_JOB=""
profile() {
    [[ -n ${PROFILE:-} ]] || return 0
    local kids
    kids=$(pgrep -P "$PID_fdfs" | paste -sd, -)
    perf record -q -e cpu-clock -F 499 -g -p "$PID_fdfs,$kids" -o "$WORK/perf-$1.data" -- sleep "$SECS" \
        >"$RUN/logs/perf-$1.log" 2>&1 &
    PERF_JOB=$!
}
profile_done() {
    [[ -n $PERF_JOB ]] || return 0
    wait "$PERF_JOB" || true
    PERF_JOB=""
    local data=$WORK/perf-$1.data storage
    storage=$(pgrep -P "$PID_fdfs" -f 'fdfs storage' | paste -sd, -)
    {
        echo "== processes"
        ps -o pid=,args= --ppid "$PID_fdfs" | cut -c1-60
        echo "== samples by process"
        perf script -i "$data" -F pid 2>/dev/null | sort | uniq -c | sort -rn
        echo "== gateway ($PID_fdfs_gw): top symbols, % of its samples"
        perf report -i "$data" --pid "$PID_fdfs_gw" --percentage relative --no-children -g none --sort dso,symbol \
            --stdio 2>/dev/null | grep '%' | head -50
        echo "== storage nodes ($storage): top symbols, % of their samples"
        perf report -i "$data" --pid "$storage" --percentage relative --no-children -g none --sort dso,symbol \
            --stdio 2>/dev/null | grep '%' | head -40
    } >"$WORK/profile-$1.txt" || true
    log "profile of $1 in $WORK/profile-$1.txt"
}

# ---------------------------------------------------------------- runs
put() { # put LABEL PIDS ENDPOINT BUCKET SIZE
    run "$1" "$2" "$S3LOAD" put --endpoint "$3" --bucket "$4" --access-key "$AK" --secret-key "$SK" --size "$5" \
        --prefix "o$5-" --duration-s "$SECS" -c "$CONC" --out "$RUN/$1.urls"
}
get() { # get LABEL PIDS URLS SIZE
    run "$1" "$2" "$LG" get --urls "$3" --duration-s "$SECS" -c "$CONC" --verify-size "$4"
}
for size in $SIZES; do
    [[ $size == 4k ]] && profile s3-put-4k
    put "fdfs-put-$size" "$PID_fdfs" "$FD_EP" bench "$size"
    [[ $size == 4k ]] && profile_done s3-put-4k
    put "sw-put-$size" "$SW_PIDS" "$SW_EP" bench "$size"
    [[ -n ${SKIP_FSYNC:-} ]] || put "sw-fsync-put-$size" "$SW_PIDS" "$SW_EP" benchsync "$size"
    get "fdfs-get-$size" "$PID_fdfs" "$RUN/fdfs-put-$size.urls" "$size"
    get "sw-get-$size" "$SW_PIDS" "$RUN/sw-put-$size.urls" "$size"
done

# ---------------------------------------------------------------- table
{
    echo
    echo "S3 PutObject / GetObject, c=$CONC, ${SECS}s each, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "  fdfs: $("$FDFS_BIN" --version 2>/dev/null | head -1) ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
    echo "  SeaweedFS: $("$WEED" version 2>/dev/null | head -1)"
    # ratio LABEL KEY OTHER: LABEL's KEY over OTHER's (blank when OTHER did not run).
    ratio() { awk -v a="$(res "$1" "$2")" -v b="$(res "$3" "$2")" 'BEGIN { if (b > 0) printf "%.2f", a / b }'; }
    row='%-9s %-4s %5s %9s %8s %8s %5s %7s %7s %7s %9s %9s\n'
    # shellcheck disable=SC2059
    printf "$row" system op size req/s p50_ms p99_ms err cpu_us rps/sw cpu/sw rps/swfs cpu/swfs
    for size in $SIZES; do
        for op in put get; do
            for sys in fdfs sw sw-fsync; do
                label=$sys-$op-$size
                [[ -f $RESULTS/$label ]] || continue
                # shellcheck disable=SC2059
                printf "$row" "$sys" "$op" "$size" "$(res "$label" rps)" "$(res "$label" p50_ms)" \
                    "$(res "$label" p99_ms)" "$(res "$label" err)" "$(res "$label" cpu_us)" \
                    "$(ratio "$label" rps "sw-$op-$size")" "$(ratio "$label" cpu_us "sw-$op-$size")" \
                    "$(ratio "$label" rps "sw-fsync-$op-$size")" "$(ratio "$label" cpu_us "sw-fsync-$op-$size")"
            done
        done
    done
    printf '  of which the fdfs gateway (cpu_us):'
    for size in $SIZES; do for op in put get; do printf ' %s %s %s;' "$op" "$size" "$(res "fdfs-$op-$size" gw_cpu_us)"; done; done
    echo
    echo "  client cpu_pct (of one core), s3load puts / loadgen gets:"
    for f in "$RESULTS"/*-*-*; do
        case $f in *.txt | *.err | *.urls) continue ;; esac
        printf '    %-22s %s%%\n' "$(basename "$f")" "$(res "$(basename "$f")" cpu_pct)"
    done
} | tee "$WORK/s3-table.txt"
log "table in $WORK/s3-table.txt, raw results in $RESULTS (kept with KEEP=1)"
