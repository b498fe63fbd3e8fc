"""PyPI's FastDFS client `fastdfs-client` against fdfs's FastDFS door (46-byte addresses, as in IPv6-capable
FastDFS builds), as an application would use it, with the same files checked over HTTP through the gateway.

Not driven here because the library cannot send them on Python 3 (it packs `str` where `struct` needs `bytes`,
against any server): metadata and slave uploads. storage/tests/fastdfs.rs covers both byte by byte, and
node_client.js covers metadata through the npm library.

Usage: python python_client.py TRACKER_HOST:PORT GATEWAY_URL   (run by check.sh)
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from fastdfs_client import FastdfsClient


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    """One HTTP request (redirects followed); status and body."""
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return int(r.status), bytes(r.read())
    except urllib.error.HTTPError as e:
        return int(e.code), bytes(e.read())


def eventually(what: str, check: Any) -> None:
    """Poll `check()` until it is true (deadline 60 s)."""
    deadline = time.monotonic() + 60
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def main(tracker: str, gateway: str) -> None:
    host, port = tracker.rsplit(":", 1)
    client = FastdfsClient({"host_tuple": (host,), "port": int(port), "timeout": 30, "name": "fdfs"}, ssl=False)

    # Upload over FastDFS; the same bytes come back over HTTP under the same ID.
    data = os.urandom(300_000)
    uploaded = client.upload_by_buffer(data, "bin")
    file_id = str(uploaded["Remote file_id"])
    assert file_id.startswith("group1/M00/") and file_id.endswith(".bin"), file_id
    assert http("GET", f"{gateway}/{file_id}") == (200, data)

    # Whole and ranged downloads over FastDFS.
    assert client.download_to_buffer(file_id)["Content"] == data
    assert client.download_to_buffer(file_id, 1000, 777)["Content"] == data[1000:1777]

    # Upload over HTTP, download over FastDFS.
    http_data = os.urandom(100_000)
    status, body = http("PUT", f"{gateway}/upload/notes.txt", http_data)
    assert status == 200, body
    http_id = str(json.loads(body)["file_id"])
    assert client.download_to_buffer(http_id)["Content"] == http_data

    # The monitor view.
    groups = client.list_all_groups()
    assert groups["Groups count"] == 1, groups

    # Delete over FastDFS: gone on every member once the delete reaches it.
    client.delete_file(file_id)
    cluster = json.loads(http("GET", f"{gateway}/cluster")[1])
    members = [m["public_url"] for m in cluster["groups"][0]["members"]]
    assert len(members) == 2, members
    for base in members:
        eventually(f"the delete to reach {base}", lambda base=base: http("GET", f"{base}/{file_id}")[0] == 404)
    print("PyPI fastdfs-client: upload, download (whole, ranged), HTTP both ways, list groups, delete: ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
