"""Every operation in openapi.yaml is served by the running gateway (drift check).

usage: python routes_check.py OPENAPI_YAML GATEWAY_URL

Path parameters are filled from a real upload, so a file route must answer its documented success status, not
404; a route that the gateway lacks answers 404 `not_found` (or 405), which fails. Also every documented route's
status must be one the spec lists. Prints PASS/FAIL lines; exit code 1 if any failed.
"""

import json
import sys
import urllib.error
import urllib.request

import yaml


def request(method, url, body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def upload(base, name, data):
    status, _, body = request("PUT", f"{base}/upload/{name}", data, {"content-type": "application/octet-stream"})
    if status != 200:
        raise SystemExit(f"FAIL routes: setup upload answered {status}: {body[:200]!r}")
    return json.loads(body)["file_id"]


def main():
    spec_path, base = sys.argv[1], sys.argv[2].rstrip("/")
    spec = yaml.safe_load(open(spec_path))
    keep = upload(base, "routes-check.txt", b"route check\n")
    doomed = upload(base, "routes-check-delete.txt", b"route check, deleted\n")
    group, sp, d1, d2, name = keep.split("/")
    bodies = {
        "put": (b'{"k":"v"}', "application/json"),
        "patch": (b'{"k2":"v2"}', "application/json"),
        "post": (None, None),
    }
    # A resumable upload of 5 bytes for the /tus/{upload_id} routes (PATCH finishes it, then HEAD, GET, DELETE).
    status, tus_headers, _ = request(
        "POST", f"{base}/tus/", b"", {"tus-resumable": "1.0.0", "upload-length": "5"}
    )
    location = {k.lower(): v for k, v in tus_headers.items()}.get("location", "")
    if status != 201 or not location.startswith("/tus/"):
        raise SystemExit(f"FAIL routes: setup tus creation answered {status} location {location!r}")
    upload_id = location[len("/tus/"):]
    failed = 0
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in ("get", "head", "post", "put", "patch", "delete"):
                continue
            fid = doomed if method == "delete" else keep
            g, s, a, b, n = fid.split("/")
            url = base + (
                path.replace("{group}", g).replace("{store_path}", s).replace("{dir1}", a)
                .replace("{dir2}", b).replace("{name}", n).replace("{filename}", "routes-check-put.txt")
                .replace("{upload_id}", upload_id)
            )
            headers, body = {}, None
            if path == "/upload" and method == "post":
                boundary = "fdfsroutecheck"
                body = (
                    f"--{boundary}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"r.txt\"\r\n"
                    f"content-type: text/plain\r\n\r\nmultipart route check\r\n--{boundary}--\r\n"
                ).encode()
                headers["content-type"] = f"multipart/form-data; boundary={boundary}"
            elif path.startswith("/tus/"):
                headers["tus-resumable"] = "1.0.0"
                if method == "post":
                    headers["upload-length"] = "3"
                elif method == "patch":
                    body = b"hello"
                    headers["content-type"] = "application/offset+octet-stream"
                    headers["upload-offset"] = "0"
            elif path.startswith("/upload/"):
                body, headers["content-type"] = b"raw route check\n", "application/octet-stream"
            elif method in ("put", "patch"):
                body, ct = bodies[method]
                headers["content-type"] = ct
            status, resp_headers, resp_body = request(method.upper(), url, body, headers)
            documented = set(op.get("responses", {}))
            what = f"{method.upper()} {path}"
            # A route without an anonymous security option (e.g. PUT /import/..., API key or cluster secret)
            # is checked to refuse this credential-less request with 401.
            needs_auth = "security" in op and {} not in op["security"]
            problems = []
            if status in (404, 405):
                problems.append(f"answered {status} (route missing?) {resp_body[:120]!r}")
            if str(status) not in documented:
                problems.append(f"status {status} not in the spec's {sorted(documented)}")
            if needs_auth and status != 401:
                problems.append(f"needs credentials but answered {status} without them")
            if not needs_auth and not (200 <= status < 400):
                problems.append(f"not a success: {status} {resp_body[:120]!r}")
            if problems:
                failed += 1
                print(f"FAIL routes: {what}: {'; '.join(problems)}")
            else:
                print(f"PASS routes: {what} -> {status}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
