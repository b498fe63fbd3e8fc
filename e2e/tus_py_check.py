"""A real Python tus client (tuspy, from PyPI) against the gateway's /tus/.

usage: python tus_py_check.py GATEWAY_URL

A 3 MiB upload in 1 MiB chunks: one client sends a chunk and goes away, a second client that only knows the upload
URL finishes it; GET /tus/{id} must give the file's JSON with the right size and CRC32 and the file must download.
Prints PASS/FAIL lines; exit code 1 if anything failed.
"""

from __future__ import annotations

import io
import json
import sys
import urllib.request
import zlib

from tusclient import client as tus_client

CHUNK = 1 << 20


def main() -> int:
    base = sys.argv[1].rstrip("/")
    data = bytes((i * 13 + (i >> 9)) & 0xFF for i in range(3 * CHUNK + 99))
    failed = 0

    def report(ok: bool, what: str) -> None:
        nonlocal failed
        if ok:
            print(f"PASS tuspy: {what}")
        else:
            failed += 1
            print(f"FAIL tuspy: {what}")

    first = tus_client.TusClient(f"{base}/tus/").uploader(
        file_stream=io.BytesIO(data), chunk_size=CHUNK, metadata={"filename": "tuspy.bin"}
    )
    first.upload_chunk()
    url = first.url
    report(isinstance(url, str) and "/tus/" in url, f"created {url} and sent one chunk")

    second = tus_client.TusClient(f"{base}/tus/").uploader(file_stream=io.BytesIO(data), chunk_size=CHUNK, url=url)
    report(second.offset == CHUNK, f"a new client resumes at {second.offset}")
    second.upload()
    report(second.offset == len(data), "the new client finished the upload")

    with urllib.request.urlopen(url, timeout=30) as resp:
        result = json.loads(resp.read())
    want = f"{zlib.crc32(data):08x}"
    report(
        result.get("size") == len(data) and result.get("crc32") == want,
        f"GET /tus/{{id}}: {result.get('file_id')} size {result.get('size')} crc32 {result.get('crc32')}",
    )
    with urllib.request.urlopen(f"{base}/{result['file_id']}", timeout=30) as resp:
        report(resp.read() == data, "the file downloads with the same bytes")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
