#!/usr/bin/env bash
# End-to-end checks of a real `fdfs up` cluster from outside Rust:
#   a. a real browser (system chromium driven by playwright-core) uses the gateway's upload page;
#   b. schemathesis checks the gateway against openapi.yaml, and every documented route is served;
#   c. the real nginx serves a storage node's files with deploy/nginx/fdfs-storage.conf;
#   d. the cluster dashboard (GET /dashboard) in the browser: every member shown, a frozen member turns offline;
#   e. real tus clients (tus-js-client from npm, tuspy from PyPI) upload, break off and resume through /tus/;
#   f. the example Django shop in the browser: its list page and admin load thumbnails only (bytes counted);
#   g. the S3 door: a browser form upload by presigned POST (boto3's policy) in Chromium, and forms it refuses.
# Installs what it lacks (Debian: chromium, nginx, nodejs/npm; npm: playwright-core; pip: schemathesis, tuspy,
# boto3 and the example shop's requirements in e2e/.venv), builds `fdfs` (debug), starts the cluster, prints `PASS`/`FAIL` lines and ends with exactly one
# line `e2e: N passed, M failed`; exit code 1 if anything failed. The cluster and nginx are always stopped.
#
# Environment: FDFS_E2E_MAX_EXAMPLES (schemathesis examples per operation, default 100),
# FDFS_E2E_KEEP=1 keeps the temp dir (logs, screenshots) for inspection.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
SCHEMATHESIS_VERSION="4.32.5"
MAX_EXAMPLES="${FDFS_E2E_MAX_EXAMPLES:-100}"
CHROMIUM=/usr/bin/chromium

passed=0
failed=0
pass() { echo "PASS $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*"; failed=$((failed + 1)); }
log() { echo "[e2e] $*" >&2; }
# A step everything else needs failed: count it, print the summary, stop (the trap cleans up).
abort() {
    fail "$*"
    echo "e2e: $passed passed, $failed failed"
    exit 1
}

WORK="$(mktemp -d "${TMPDIR:-/tmp}/fdfs-e2e.XXXXXX")"
UP_PID=""
NGINX_PID=""

cleanup() {
    local rc=$?
    if [[ -n "$NGINX_PID" ]] && kill -0 "$NGINX_PID" 2>/dev/null; then
        kill -TERM "$NGINX_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$NGINX_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$NGINX_PID" 2>/dev/null || true
    fi
    if [[ -n "$UP_PID" ]] && kill -0 "$UP_PID" 2>/dev/null; then
        kill -TERM "$UP_PID" 2>/dev/null || true
        for _ in $(seq 200); do kill -0 "$UP_PID" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$UP_PID" 2>/dev/null; then
            log "fdfs up did not stop within 20s, killing it"
            kill -KILL "$UP_PID" 2>/dev/null || true
        fi
        wait "$UP_PID" 2>/dev/null || true
    fi
    if [[ "${FDFS_E2E_KEEP:-}" == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------- installs
apt_updated=""
apt_install() {
    if [[ -z "$apt_updated" ]]; then
        log "apt-get update"
        apt-get update -qq >&2
        apt_updated=1
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

want=()
[[ -x "$CHROMIUM" ]] || want+=(chromium)
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || want+=(nginx)
command -v node >/dev/null 2>&1 || want+=(nodejs)
command -v npm >/dev/null 2>&1 || want+=(npm)
if ((${#want[@]})); then apt_install "${want[@]}" || abort "setup: apt-get install ${want[*]}"; fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

if [[ ! -f "$HERE/node_modules/playwright-core/package.json" || ! -f "$HERE/node_modules/tus-js-client/package.json" ]]; then
    log "npm ci (playwright-core; no browser download)"
    (cd "$HERE" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund >&2) || abort "setup: npm ci"
fi

VENV="$HERE/.venv"
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    log "pip install schemathesis==$SCHEMATHESIS_VERSION into $VENV"
    if ! python3 -m venv "$VENV" >&2; then
        # Debian's own python3 needs python3-venv for this.
        apt_install python3-venv || abort "setup: apt-get install python3-venv"
        python3 -m venv "$VENV" >&2 || abort "setup: python3 -m venv"
    fi
    "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" >&2 \
        || abort "setup: pip install schemathesis==$SCHEMATHESIS_VERSION"
fi

TUSPY_VERSION="1.1.0"
if ! "$VENV/bin/python" -c 'import tusclient' 2>/dev/null; then
    log "pip install tuspy==$TUSPY_VERSION into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "tuspy==$TUSPY_VERSION" >&2 \
        || abort "setup: pip install tuspy==$TUSPY_VERSION"
fi

BOTO3_VERSION="1.44.18"
if ! "$VENV/bin/python" -c "import boto3, sys; sys.exit(boto3.__version__ != '$BOTO3_VERSION')" 2>/dev/null; then
    log "pip install boto3==$BOTO3_VERSION into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "boto3==$BOTO3_VERSION" >&2 \
        || abort "setup: pip install boto3==$BOTO3_VERSION"
fi

# The example shop (Django, Pillow, the fdfs client) for its browser check.
if ! "$VENV/bin/python" -c 'import django, PIL, fdfs_http.django' 2>/dev/null; then
    log "pip install the example shop's requirements into $VENV"
    (cd "$ROOT/examples/django-shop" && "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements.txt >&2) \
        || abort "setup: pip install -r examples/django-shop/requirements.txt"
fi

# `--setup`: only the installs (.ci/prepare runs them while cargo builds).
if [[ "${1:-}" == --setup ]]; then
    log "setup done"
    exit 0
fi

# ------------------------------------------------------------------------------------------------ build
log "cargo build -p fdfs"
(cd "$ROOT" && cargo build -q -p fdfs >&2) || abort "build: cargo build -p fdfs"
FDFS="${CARGO_TARGET_DIR:-$ROOT/target}/debug/fdfs"

# ---------------------------------------------------------------------------------------------- helpers
# A base port P with P..P+19 free (fdfs up: gateway P, tracker P+1, storage P+10..), and one more free port.
free_base_port() {
    python3 - "$@" <<'EOF'
import random, socket, sys
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        return True
    except OSError:
        return False
    finally:
        s.close()
span = int(sys.argv[1])
for _ in range(200):
    # Below the ephemeral range (32768+), so no outgoing connection takes a port between this check and the bind.
    p = random.randrange(20000, 32700 - span)
    if all(free(p + i) for i in range(span)):
        print(p)
        sys.exit(0)
sys.exit("no free port range")
EOF
}

# wait_for DESCRIPTION SECONDS COMMAND...: poll COMMAND until it succeeds or the deadline passes.
wait_for() {
    local what="$1" secs="$2"
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${secs}s waiting for $what"
            return 1
        fi
        sleep 0.2
    done
}

# -------------------------------------------------------------------------------------------- the cluster
PORT="$(free_base_port 20)"
GATEWAY="http://127.0.0.1:$PORT"
DATA="$WORK/cluster"
log "starting fdfs up --port $PORT --data $DATA --s3-port 0"
"$FDFS" up --data "$DATA" --port "$PORT" --s3-port 0 >"$WORK/up.out" 2>"$WORK/up.err" &
UP_PID=$!
up_ready() { kill -0 "$UP_PID" && grep -q "^fdfs cluster is up" "$WORK/up.out"; }
if wait_for "the cluster" 120 up_ready && curl -fsS "$GATEWAY/health" >/dev/null; then
    pass "cluster: fdfs up serves $GATEWAY"
else
    sed 's/^/    | /' "$WORK/up.out" "$WORK/up.err" >&2 || true
    for f in "$DATA"/logs/*.log; do [[ -f "$f" ]] && { echo "--- $f" >&2; tail -20 "$f" >&2; }; done
    abort "cluster: fdfs up did not become ready"
fi

# ---------------------------------------------------------------------------------------------- a. browser
mkdir -p "$WORK/browser"
if node "$HERE/browser.test.mjs" "$GATEWAY" "$WORK/browser" >"$WORK/browser.out" 2>&1; then b_ok=1; else b_ok=0; fi
while IFS= read -r line; do
    case "$line" in
        PASS\ *) pass "${line#PASS }" ;;
        FAIL\ *) fail "${line#FAIL }" ;;
        *) echo "    | $line" >&2 ;;
    esac
done <"$WORK/browser.out"
if ((b_ok == 0)) && ! grep -q '^FAIL' "$WORK/browser.out"; then fail "browser: node exited with an error"; fi
[[ -f "$WORK/browser/upload-page.png" ]] && log "screenshot: $WORK/browser/upload-page.png"

# --------------------------------------------------------------------------------------- b. OpenAPI
if "$VENV/bin/python" "$HERE/routes_check.py" "$ROOT/openapi.yaml" "$GATEWAY" >"$WORK/routes.out" 2>&1; then
    r_ok=1
else
    r_ok=0
fi
while IFS= read -r line; do
    case "$line" in
        PASS\ *) pass "${line#PASS }" ;;
        FAIL\ *) fail "${line#FAIL }" ;;
        *) echo "    | $line" >&2 ;;
    esac
done <"$WORK/routes.out"
if ((r_ok == 0)) && ! grep -q '^FAIL' "$WORK/routes.out"; then fail "routes: checker exited with an error"; fi

log "schemathesis (max $MAX_EXAMPLES examples per operation)"
if (cd "$WORK" && NO_COLOR=1 PYTHONPATH="$HERE" SCHEMATHESIS_HOOKS=schemathesis_hooks "$VENV/bin/schemathesis" run "$ROOT/openapi.yaml" \
    --url "$GATEWAY" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples "$MAX_EXAMPLES" --seed 20261125 --workers 1 --request-timeout 30 \
    --no-color >"$WORK/schemathesis.out" 2>&1); then
    pass "openapi: schemathesis conformance ($(grep -Eo '[0-9]+ generated, [0-9]+ passed' "$WORK/schemathesis.out" | head -1))"
else
    fail "openapi: schemathesis conformance (output below)"
    grep -v "^ *$" "$WORK/schemathesis.out" | tail -150 | cut -c1-400 | sed 's/^/    | /' >&2
fi

# Second pass: the file routes pinned to a real file, so their success answers are checked against the spec.
fid_json="$(curl -sS -T "$HERE/package.json" "$GATEWAY/upload/schemathesis.json" || true)"
pinned="$("$VENV/bin/python" -c 'import json,sys; print(json.loads(sys.argv[1])["file_id"])' "$fid_json" 2>/dev/null || true)"
if [[ "$pinned" =~ ^[^/]+/M[0-9A-F]{2}/[0-9A-F]{2}/[0-9A-F]{2}/[^/]+$ ]]; then
    IFS=/ read -r FDFS_E2E_GROUP FDFS_E2E_STORE_PATH FDFS_E2E_DIR1 FDFS_E2E_DIR2 FDFS_E2E_NAME <<<"$pinned"
    export FDFS_E2E_GROUP FDFS_E2E_STORE_PATH FDFS_E2E_DIR1 FDFS_E2E_DIR2 FDFS_E2E_NAME
    if (cd "$WORK" && NO_COLOR=1 PYTHONPATH="$HERE" SCHEMATHESIS_HOOKS=schemathesis_hooks "$VENV/bin/schemathesis" --config-file "$HERE/schemathesis-file.toml" run \
        "$ROOT/openapi.yaml" --url "$GATEWAY" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
        --include-path-regex '\{name\}' --exclude-method DELETE --mode positive \
        --max-examples "$MAX_EXAMPLES" --seed 20261125 --workers 1 --request-timeout 30 \
        --no-color >"$WORK/schemathesis-file.out" 2>&1); then
        pass "openapi: schemathesis on an existing file ($(grep -Eo '[0-9]+ generated, [0-9]+ passed' "$WORK/schemathesis-file.out" | head -1))"
    else
        fail "openapi: schemathesis on an existing file (output below)"
        grep -v "^ *$" "$WORK/schemathesis-file.out" | tail -150 | cut -c1-400 | sed 's/^/    | /' >&2
    fi
else
    fail "openapi: upload for the pinned pass failed: $fid_json"
fi

# ---------------------------------------------------------------------------------- e. real tus clients
# (before c and d: d kills a storage node)
for check in "node $HERE/tus.test.mjs" "$VENV/bin/python $HERE/tus_py_check.py"; do
    name="${check##*/}"
    if $check "$GATEWAY" >"$WORK/$name.out" 2>&1; then t_ok=1; else t_ok=0; fi
    while IFS= read -r line; do
        case "$line" in
            PASS\ *) pass "${line#PASS }" ;;
            FAIL\ *) fail "${line#FAIL }" ;;
            *) echo "    | $line" >&2 ;;
        esac
    done <"$WORK/$name.out"
    if ((t_ok == 0)) && ! grep -q '^FAIL' "$WORK/$name.out"; then fail "tus: $name exited with an error"; fi
done

# ------------------------------------------------------------------------------------------------ c. nginx
NGX="$WORK/nginx"
mkdir -p "$NGX/temp" "$NGX/logs" "$NGX/conf.d"
NGX_PORT="$(free_base_port 1)"
# Upload first, then point nginx at a member of group1 that holds the file.
head -c 300000 /dev/urandom >"$WORK/blob.bin"
up_json="$(curl -sS -T "$WORK/blob.bin" "$GATEWAY/upload/blob.png?group=group1" || true)"
fid="$("$VENV/bin/python" -c 'import json,sys; print(json.loads(sys.argv[1])["file_id"])' "$up_json" 2>/dev/null || true)"
rel="${fid#group1/M00/}"
holder_on_disk() { ls "$DATA"/storage-g1-m*/data/"$rel" 2>/dev/null | head -1 | grep -q .; }
if [[ "$fid" == group1/M00/* ]] && wait_for "the file on a group1 member" 30 holder_on_disk; then
    holder="$(ls "$DATA"/storage-g1-m*/data/"$rel" | head -1)"
    STORE="${holder%/data/$rel}"
    pass "nginx: uploaded $fid for the nginx checks"
else
    fail "nginx: upload for the nginx checks failed: $up_json"
    STORE="$DATA/storage-g1-m1"
fi
NODE_URL="$(awk -v s="$STORE" '$NF == s { for (i = 1; i <= NF; i++) if ($i ~ /^http:/) print $i }' "$WORK/up.out")"
NODE_ADDR="${NODE_URL#http://}"
log "nginx on 127.0.0.1:$NGX_PORT serves $STORE (node $NODE_ADDR)"
sed -e "s|@LISTEN@|127.0.0.1:$NGX_PORT|g" -e "s|@GROUP@|group1|g" -e "s|@STORE_PATH@|$STORE|g" \
    -e "s|@NODE@|$NODE_ADDR|g" "$ROOT/deploy/nginx/fdfs-storage.conf" >"$NGX/conf.d/fdfs-storage.conf"
# A second server block for the other member of group1: a file it does not hold (yet) comes from its node.
OTHER_STORE="$(ls -d "$DATA"/storage-g1-m* | grep -vx "$STORE" | head -1)"
OTHER_URL="$(awk -v s="$OTHER_STORE" '$NF == s { for (i = 1; i <= NF; i++) if ($i ~ /^http:/) print $i }' "$WORK/up.out")"
NGX_PORT2="$(free_base_port 1)"
sed -e "s|@LISTEN@|127.0.0.1:$NGX_PORT2|g" -e "s|@GROUP@|group1|g" -e "s|@STORE_PATH@|$OTHER_STORE|g" \
    -e "s|@NODE@|${OTHER_URL#http://}|g" "$ROOT/deploy/nginx/fdfs-storage.conf" >"$NGX/conf.d/fdfs-storage-2.conf"
# nginx's workers run as an unprivileged user, as in production (www-data on Debian): they can read the store
# path only because fdfs stores files 0644 and directories 0755. Only this test's own private temp dir (mktemp
# makes it 0700) is opened for traversal on the way to the store paths.
NGX_USER=""
if [[ "$(id -u)" == 0 ]]; then
    NGX_WORKER=www-data
    id -u "$NGX_WORKER" >/dev/null 2>&1 || NGX_WORKER=nobody
    NGX_USER="user $NGX_WORKER;"
    for d in "$DATA" "$WORK"; do chmod o+x "$d"; done
    chown -R "$NGX_WORKER" "$NGX/temp"
    log "nginx workers run as $NGX_WORKER"
fi
cat >"$NGX/nginx.conf" <<EOF
$NGX_USER
daemon off;
master_process on;
worker_processes 1;
pid $NGX/nginx.pid;
error_log $NGX/logs/error.log warn;
events { worker_connections 64; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log $NGX/logs/access.log;
    client_body_temp_path $NGX/temp/body;
    proxy_temp_path $NGX/temp/proxy;
    fastcgi_temp_path $NGX/temp/fastcgi;
    uwsgi_temp_path $NGX/temp/uwsgi;
    scgi_temp_path $NGX/temp/scgi;
    sendfile on;
    include $NGX/conf.d/*.conf;
}
EOF
"$NGINX" -p "$NGX" -c "$NGX/nginx.conf" -e "$NGX/logs/error.log" >"$NGX/stdout" 2>&1 &
NGINX_PID=$!
NGINX_URL="http://127.0.0.1:$NGX_PORT"
if wait_for "nginx" 20 curl -s -o /dev/null "$NGINX_URL/"; then
    pass "nginx: starts with deploy/nginx/fdfs-storage.conf"
    code="$(curl -s -o "$WORK/blob.got" -D "$WORK/blob.hdr" -w '%{http_code}' "$NGINX_URL/$fid")"
    if [[ "$code" == 200 ]] && cmp -s "$WORK/blob.bin" "$WORK/blob.got"; then
        pass "nginx: GET /$fid returns the uploaded bytes"
    else
        fail "nginx: GET /$fid answered $code or other bytes"
    fi
    if grep -qi '^content-type: image/png' "$WORK/blob.hdr"; then pass "nginx: Content-Type image/png"; else
        fail "nginx: Content-Type: $(grep -i '^content-type' "$WORK/blob.hdr" | tr -d '\r')"; fi
    if grep -qi '^cache-control: .*immutable' "$WORK/blob.hdr"; then pass "nginx: immutable Cache-Control"; else
        fail "nginx: no immutable Cache-Control"; fi
    # The same validators as the node: its ETag (the file name), and conditional requests answered alike.
    nginx_etag="$(grep -i '^etag:' "$WORK/blob.hdr" | tr -d '\r' | cut -d' ' -f2-)"
    node_etag="$(curl -s -o /dev/null -D - "$NODE_URL/$fid" | grep -i '^etag:' | tr -d '\r' | cut -d' ' -f2-)"
    node_lm="$(curl -s -o /dev/null -D - "$NODE_URL/$fid" | grep -i '^last-modified:' | tr -d '\r' | cut -d' ' -f2-)"
    if [[ -n "$nginx_etag" && "$nginx_etag" == "$node_etag" && "$nginx_etag" == "\"${fid##*/}\"" ]]; then
        pass "nginx: the node's ETag ($nginx_etag)"
    else
        fail "nginx: ETag $nginx_etag, node's $node_etag"
    fi
    code="$(curl -s -o /dev/null -w '%{http_code}' -H "If-None-Match: $node_etag" "$NGINX_URL/$fid")"
    if [[ "$code" == 304 ]]; then pass "nginx: If-None-Match with the node's ETag -> 304"; else
        fail "nginx: If-None-Match answered $code"; fi
    code="$(curl -s -o /dev/null -w '%{http_code}' -H "If-Modified-Since: $node_lm" "$NGINX_URL/$fid")"
    if [[ "$code" == 304 ]]; then pass "nginx: If-Modified-Since with the node's Last-Modified -> 304"; else
        fail "nginx: If-Modified-Since answered $code"; fi
    # `?attname=` (fastdfs-nginx-module's): saved under that name, by nginx and by the node alike.
    cd_nginx="$(curl -s -o /dev/null -D - "$NGINX_URL/$fid?attname=caf%C3%A9%20logo.png" | grep -i '^content-disposition:' | tr -d '\r')"
    cd_node="$(curl -s -o /dev/null -D - "$NODE_URL/$fid?attname=caf%C3%A9%20logo.png" | grep -i '^content-disposition:' | tr -d '\r')"
    if [[ "$cd_nginx" == *"filename*=UTF-8''caf%C3%A9%20logo.png"* && "$cd_node" == *"filename*=UTF-8''caf%C3%A9%20logo.png"* ]]; then
        pass "nginx: ?attname= gives Content-Disposition, as the node does"
    else
        fail "nginx: ?attname= gave '$cd_nginx', the node '$cd_node'"
    fi
    # GETs of files the node served itself (metrics), to tell its answers from nginx's.
    node_gets() {
        curl -s "$NODE_URL/metrics" | awk '/^fdfs_http_requests_total[{]/ && /method="GET"/ && /route="[/][{][*]path[}]"/ { s += $NF } END { print s + 0 }'
    }
    # Thumbnails: a missing `<name>_150x150.png` falls through nginx's 404 to the node, which renders and stores
    # it (a size of `fdfs up`'s default thumbnail_sizes); the next read is nginx's own, from disk (the node
    # serves no GET for it).
    "$VENV/bin/python" - "$WORK/logo.png" <<'PY'
import struct, sys, zlib
w = h = 64
rows = b"".join(b"\0" + b"".join(bytes((x * 4, y * 4, 128, 255 if x < 32 else 0)) for x in range(w)) for y in range(h))
def chunk(t: bytes, d: bytes) -> bytes:
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
ihdr = struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
open(sys.argv[1], "wb").write(png)
PY
    logo_json="$(curl -sS -T "$WORK/logo.png" "$GATEWAY/upload/logo.png?group=group1" || true)"
    logo="$("$VENV/bin/python" -c 'import json,sys; print(json.loads(sys.argv[1])["file_id"])' "$logo_json" 2>/dev/null || true)"
    thumb="${logo%.png}_150x150.png"
    if [[ "$logo" == group1/M00/* ]] && wait_for "the logo on nginx's member" 30 test -f "$STORE/data/${logo#group1/M00/}"; then
        code="$(curl -s -o "$WORK/thumb.got" -D "$WORK/thumb.hdr" -w '%{http_code}' "$NGINX_URL/$thumb")"
        if [[ "$code" == 200 ]] && grep -qi '^content-type: image/png' "$WORK/thumb.hdr" \
            && [[ "$(head -c 4 "$WORK/thumb.got" | tail -c 3)" == PNG ]]; then
            pass "nginx: first GET of a thumbnail is rendered by the node (200 image/png)"
        else
            fail "nginx: first GET of $thumb answered $code"
        fi
        gets_before="$(node_gets)"
        code="$(curl -s -o /dev/null -D "$WORK/thumb2.hdr" -w '%{http_code}' "$NGINX_URL/$thumb")"
        if [[ "$code" == 200 ]] && test -f "$STORE/data/${thumb#group1/M00/}" && [[ "$(node_gets)" == "$gets_before" ]]; then
            pass "nginx: the stored thumbnail is then served by nginx from disk"
        else
            fail "nginx: second GET of $thumb answered $code ($(grep -i '^etag' "$WORK/thumb2.hdr" | tr -d '\r'))"
        fi
    else
        fail "nginx: upload of the thumbnail master failed: $logo_json"
    fi
    # Range.
    code="$(curl -s -o "$WORK/range.got" -D "$WORK/range.hdr" -w '%{http_code}' -H 'Range: bytes=1000-1999' "$NGINX_URL/$fid")"
    if [[ "$code" == 206 ]] && cmp -s "$WORK/range.got" <(tail -c +1001 "$WORK/blob.bin" | head -c 1000) \
        && grep -qi '^content-range: bytes 1000-1999/300000' "$WORK/range.hdr"; then
        pass "nginx: Range bytes=1000-1999 -> 206 with the right bytes"
    else
        fail "nginx: Range answered $code"
    fi
    code="$(curl -s -o /dev/null -w '%{http_code}' -H 'Range: bytes=400000-' "$NGINX_URL/$fid")"
    if [[ "$code" == 416 ]]; then pass "nginx: unsatisfiable Range -> 416"; else fail "nginx: unsatisfiable Range answered $code"; fi
    # Metadata files are never served: give the file metadata so `<name>-m` exists on disk.
    curl -sS -o /dev/null -X PUT -H 'content-type: application/json' -d '{"owner":"e2e"}' "$GATEWAY/meta/$fid" || true
    if wait_for "the metadata file" 30 test -f "$STORE/data/$rel-m"; then
        code="$(curl -s -o /dev/null -w '%{http_code}' "$NGINX_URL/$fid-m")"
        if [[ "$code" == 404 ]]; then pass "nginx: metadata file $fid-m not served (404)"; else
            fail "nginx: metadata file $fid-m answered $code"; fi
    else
        fail "nginx: no metadata file appeared at $STORE/data/$rel-m"
    fi
    # Anything that is not a file ID, and every way of climbing out of data/, is refused.
    dir="${fid%/*}"
    name="${fid##*/}"
    bad_paths=(
        "/$dir/../../../../.fdfs/db"
        "/$dir/%2e%2e/%2e%2e/%2e%2e/%2e%2e/.fdfs/db"
        "/$dir/..%2F..%2F..%2F..%2F.fdfs%2Fdb"
        "/group1/M00/../../../../../../etc/passwd"
        "/group1/M00/%2e%2e/%2e%2e/%2e%2e/etc/passwd"
        "/$dir/..%5C..%5C$name"
        "/$dir/$name%00.png"
        "/.fdfs/db"
        "/group1/M00/.fdfs/db"
        "/$dir/"
        "/group1/M00/"
        "/$dir/$name/.."
        "/data/$rel"
    )
    for p in "${bad_paths[@]}"; do
        code="$(curl -s --path-as-is -o "$WORK/bad.got" -w '%{http_code}' "$NGINX_URL$p")"
        if [[ "$code" =~ ^4 ]] && ! cmp -s "$WORK/bad.got" "$WORK/blob.bin"; then
            pass "nginx: $p refused ($code)"
        else
            fail "nginx: $p answered $code"
        fi
    done
    code="$(curl -s -o /dev/null -w '%{http_code}' -X DELETE "$NGINX_URL/$fid")"
    if [[ "$code" == 405 ]]; then pass "nginx: DELETE refused (405)"; else fail "nginx: DELETE answered $code"; fi
    # The other member's nginx: from its own disk if replicated, else through its node (error_page 404 -> @node).
    code="$(curl -s -o "$WORK/other.got" -w '%{http_code}' "http://127.0.0.1:$NGX_PORT2/$fid")"
    if [[ "$code" == 200 ]] && cmp -s "$WORK/blob.bin" "$WORK/other.got"; then
        if [[ -f "$OTHER_STORE/data/$rel" ]]; then how="from its disk"; else how="through its node"; fi
        pass "nginx: the other member's nginx serves the file ($how)"
    else
        fail "nginx: the other member's nginx answered $code for $fid"
    fi
    fake="${fid%/*}/AAAAAAAAAAAAAAAAAAAAAAAAAAA000000"
    code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$NGX_PORT2/$fake")"
    if [[ "$code" == 404 ]]; then pass "nginx: an unknown file is 404 through the node"; else
        fail "nginx: unknown file $fake answered $code"; fi
else
    fail "nginx: did not start"
    sed 's/^/    | /' "$NGX/stdout" "$NGX/logs/error.log" >&2 || true
fi

# --------------------------------------------------------------------------------------- f. example shop
# The example shop as its README runs it, against this cluster: six products with multi-megabyte pictures, then
# its list page and the admin's product list in Chromium, counting the image bytes the browser loads: thumbnails
# only, never the pictures as uploaded. Before the dashboard, which freezes a storage node.
SHOP="$ROOT/examples/django-shop"
SHOP_WORK="$WORK/shop"
mkdir -p "$SHOP_WORK/media"
shop_env=(env FDFS_GATEWAY="$GATEWAY" SHOP_DB="$SHOP_WORK/db.sqlite3" SHOP_MEDIA_ROOT="$SHOP_WORK/media"
    DJANGO_SUPERUSER_PASSWORD=shop-e2e-pw PYTHONUNBUFFERED=1)
shop_manage() { (cd "$SHOP" && "${shop_env[@]}" "$VENV/bin/python" manage.py "$@"); }
if shop_manage migrate --noinput >"$SHOP_WORK/migrate.log" 2>&1 \
    && shop_manage createsuperuser --noinput --username admin --email admin@example.com >>"$SHOP_WORK/migrate.log" 2>&1; then
    masters="$(shop_manage shell -c '
import io, random
from django.core.files.base import ContentFile
from PIL import Image
from catalog.models import Product
total = 0
for i in range(6):
    rnd = random.Random(i)
    img = Image.frombytes("RGB", (2400, 1600), rnd.randbytes(2400 * 1600 * 3))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    total += buf.tell()
    Product.objects.create(name=f"product {i}", price=10 + i, image=ContentFile(buf.getvalue(), name=f"p{i}.jpg"))
print(total)
' 2>"$SHOP_WORK/products.log" | tail -1)"
    SHOP_PORT="$(free_base_port 1)"
    (cd "$SHOP" && exec "${shop_env[@]}" "$VENV/bin/python" manage.py runserver --noreload "127.0.0.1:$SHOP_PORT") \
        >"$SHOP_WORK/runserver.log" 2>&1 &
    SHOP_PID=$!
    if [[ "$masters" =~ ^[0-9]+$ ]] && wait_for "the example shop" 60 curl -sf -o /dev/null "http://127.0.0.1:$SHOP_PORT/"; then
        pass "shop: six products with $((masters / 1024 / 1024)) MiB of pictures; runserver up"
        node "$HERE/shop.test.mjs" "http://127.0.0.1:$SHOP_PORT" "$masters" admin shop-e2e-pw >"$WORK/shop.out" 2>&1 || true
        while IFS= read -r line; do
            case "$line" in
                PASS\ *) pass "${line#PASS }" ;;
                FAIL\ *) fail "${line#FAIL }" ;;
                *) echo "    | $line" >&2 ;;
            esac
        done <"$WORK/shop.out"
        grep -q '^PASS' "$WORK/shop.out" || fail "shop: the browser check printed no result"
    else
        fail "shop: products or runserver failed: $(tail -5 "$SHOP_WORK/products.log" "$SHOP_WORK/runserver.log")"
    fi
    kill "$SHOP_PID" 2>/dev/null || true
    wait "$SHOP_PID" 2>/dev/null || true
else
    fail "shop: migrate/createsuperuser failed: $(tail -5 "$SHOP_WORK/migrate.log")"
fi

# ------------------------------------------------------------------------------- g. S3 form upload (POST)
# The S3 door of this cluster: boto3 signs a POST policy, Chromium submits the form page with a chosen file.
S3_LINE="$(grep -E '^  s3 +http://' "$WORK/up.out" | head -1 || true)"
S3_URL="$(awk '{ print $2 }' <<<"$S3_LINE")"
S3_ACCESS="$(sed -nE 's/.*access key ([^ ,]+),.*/\1/p' <<<"$S3_LINE")"
S3_SECRET="$(sed -nE 's/.*secret key ([^ ;]+);.*/\1/p' <<<"$S3_LINE")"
s3_ready() { [[ "$(curl -s -o /dev/null -w '%{http_code}' "$S3_URL/")" =~ ^[1-4] ]]; }
mkdir -p "$WORK/s3post"
if [[ -n "$S3_URL" && -n "$S3_ACCESS" && -n "$S3_SECRET" ]] && wait_for "the S3 door" 60 s3_ready \
    && "$VENV/bin/python" "$HERE/s3_post_form.py" "$S3_URL" "$S3_ACCESS" "$S3_SECRET" "$WORK/s3post" \
        >"$WORK/s3post/form.log" 2>&1; then
    node "$HERE/s3post.test.mjs" "$WORK/s3post" "$WORK/s3post" >"$WORK/s3post.out" 2>&1 || true
    while IFS= read -r line; do
        case "$line" in
            PASS\ *) pass "${line#PASS }" ;;
            FAIL\ *) fail "${line#FAIL }" ;;
            *) echo "    | $line" >&2 ;;
        esac
    done <"$WORK/s3post.out"
    grep -q '^PASS' "$WORK/s3post.out" || fail "s3 form: the browser check printed no result"
else
    fail "s3 form: no S3 door or no form ('$S3_LINE'): $(tail -5 "$WORK/s3post/form.log" 2>/dev/null)"
fi

# -------------------------------------------------------------------------------------------- d. dashboard
# Last, because it freezes a storage node (group2's second member) that the checks above rely on (SIGSTOP:
# `fdfs up` restarts a killed one, checked after it).
VICTIM_STORE="$DATA/storage-g2-m2"
VICTIM_ADDR="$(awk -v s="$VICTIM_STORE" '$NF == s { for (i = 1; i <= NF; i++) if ($i ~ /^http:/) print substr($i, 8) }' "$WORK/up.out")"
# The node is a child of our `fdfs up`, found by its store path.
VICTIM_PID="$(pgrep -P "$UP_PID" -f -- "$VICTIM_STORE( |$)" | head -1 || true)"
mkdir -p "$WORK/dashboard"
if [[ -n "$VICTIM_PID" && -n "$VICTIM_ADDR" ]]; then
    if node "$HERE/dashboard.test.mjs" "$GATEWAY" "$WORK/dashboard" "$VICTIM_PID" "$VICTIM_ADDR" \
        >"$WORK/dashboard.out" 2>&1; then d_ok=1; else d_ok=0; fi
    while IFS= read -r line; do
        case "$line" in
            PASS\ *) pass "${line#PASS }" ;;
            FAIL\ *) fail "${line#FAIL }" ;;
            *) echo "    | $line" >&2 ;;
        esac
    done <"$WORK/dashboard.out"
    if ((d_ok == 0)) && ! grep -q '^FAIL' "$WORK/dashboard.out"; then fail "dashboard: node exited with an error"; fi
    [[ -f "$WORK/dashboard/dashboard.png" ]] && log "screenshots: $WORK/dashboard/dashboard.png, dashboard-offline.png"
else
    fail "dashboard: cannot find the process of $VICTIM_STORE (pid '$VICTIM_PID', addr '$VICTIM_ADDR')"
fi
# `fdfs up` restarts a server that dies, and says so.
if [[ -n "$VICTIM_PID" ]]; then
    kill -CONT "$VICTIM_PID" 2>/dev/null || true
    kill -KILL "$VICTIM_PID" 2>/dev/null || true
    if wait_for "fdfs up to restart storage-g2-m2" 30 grep -q "storage-g2-m2 restarted" "$WORK/up.err" \
        && wait_for "the restarted node" 30 curl -sf -o /dev/null "http://$VICTIM_ADDR/livez"; then
        pass "cluster: a killed storage node is restarted by fdfs up on its address"
    else
        fail "cluster: storage-g2-m2 was not restarted: $(tail -5 "$WORK/up.err")"
    fi
fi

# ------------------------------------------------------------------------------------------------ result
if ! kill -0 "$UP_PID" 2>/dev/null; then fail "cluster: fdfs up died during the checks"; fi
echo "e2e: $passed passed, $failed failed"
((failed == 0))
