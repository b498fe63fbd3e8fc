"""1 GiB through the S3 door in bounded memory: one object by a single PutObject, another by a multipart upload
with parallel parts, each served byte-identical by GetObject, by its storage-node URL and by nginx (in front of
the other member as deploy/nginx/fdfs-storage.conf puts it, serving the replica from disk), while every
process of the cluster (replication included) stays under
64 MiB of peak RSS (VmHWM). The bodies are generated as they are read, and every download is hashed as it
streams: the test never holds an object either. The size is FDFS_PY_BIG_FILE_MB (default 1024), as for
test_big_file.py."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import subprocess
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.client import Config

from fdfs_http import decode
from fdfs_http.testing import LocalCluster

REPO = Path(__file__).resolve().parents[3]
SIZE = int(os.environ.get("FDFS_PY_BIG_FILE_MB", "1024")) << 20
RSS_LIMIT = 64 << 20
PART = 16 << 20
CHUNK = 1 << 20


class Pattern(io.RawIOBase):
    """A seekable file object of `size` deterministic bytes, produced as they are read: 1 MiB blocks, each a
    rotation of one random block (so no two blocks are alike, and two seeds give two different files)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.pos = 0
        self.block = _block(seed)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        n = 0
        while n < len(view) and self.pos < self.size:
            index, at = divmod(self.pos, CHUNK)
            shift = (index * 7919) % CHUNK
            start = (shift + at) % CHUNK
            k = min(len(view) - n, self.size - self.pos, CHUNK - at, CHUNK - start)
            view[n : n + k] = self.block[start : start + k]
            n += k
            self.pos += k
        return n


def _block(seed: int) -> bytes:
    out = bytearray()
    x = seed or 1
    while len(out) < CHUNK:
        x = (x * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        out += x.to_bytes(8, "big")
    return bytes(out)


def crc_of(chunks: Iterable[bytes]) -> tuple[int, int]:
    """CRC32 and length of a stream of chunks."""
    crc = 0
    n = 0
    for chunk in chunks:
        crc = zlib.crc32(chunk, crc)
        n += len(chunk)
    return crc, n


def expected(seed: int) -> tuple[tuple[int, int], str]:
    """CRC32 and length of the pattern of `seed`, and its MD5 (hex)."""
    src = Pattern(SIZE, seed)
    md5 = hashlib.md5()

    def chunks() -> Iterator[bytes]:
        while chunk := src.read(CHUNK):
            md5.update(chunk)
            yield chunk

    crc = crc_of(chunks())
    return crc, md5.hexdigest()


def url_crc(url: str) -> tuple[int, int]:
    with httpx.stream("GET", url, timeout=120) as r:
        assert r.status_code == 200, (url, r.status_code, r.read())
        return crc_of(r.iter_raw(CHUNK))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def big(fdfs_bin: str, data_root: Path) -> Iterator[LocalCluster]:
    # Two members: the one an upload lands on replicates it to the other.
    with LocalCluster(fdfs_bin, data_root / "s3-big", groups=1, members=2, s3_port=0) as c:
        yield c


@pytest.fixture(scope="module")
def nginx(big: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """nginx in front of the second storage node (deploy/nginx/fdfs-storage.conf): its base URL."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(binary, os.X_OK):
        pytest.fail("no nginx: apt-get install nginx (as .ci/run does)")
    work = tmp_path_factory.mktemp("nginx")
    (work / "logs").mkdir()
    template = (REPO / "deploy" / "nginx" / "fdfs-storage.conf").read_text()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    m = big.members[1]
    server = template
    for placeholder, value in [
        ("@LISTEN@", f"127.0.0.1:{port}"),
        ("@GROUP@", m.group),
        ("@STORE_PATH@", m.data_dir),
        ("@NODE@", m.url.removeprefix("http://")),
    ]:
        server = server.replace(placeholder, value)
    # Workers run as the user we are (root: as root, so they read the temp dirs; e2e checks the unprivileged case).
    user = "user root;" if os.geteuid() == 0 else ""
    (work / "nginx.conf").write_text(
        f"""{user}
daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/logs/error.log warn;
events {{ worker_connections 64; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log off;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    sendfile on;
    {server}
}}
"""
    )
    proc = subprocess.Popen(
        [binary, "-p", str(work), "-c", str(work / "nginx.conf"), "-e", str(work / "logs" / "error.log")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(url)
                break
            except httpx.TransportError:
                assert proc.poll() is None, (work / "logs" / "error.log").read_text()
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def s3_client(c: LocalCluster) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=c.s3,
        aws_access_key_id=c.s3_access_key,
        aws_secret_access_key=c.s3_secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, read_timeout=300),
    )


def replicated(c: LocalCluster, file_id: str) -> None:
    """Wait until every member of the group holds the whole file on disk."""
    rel = file_id.split("/", 2)[2]
    deadline = time.monotonic() + 300
    for m in c.members:
        path = Path(m.data_dir, "data", rel)
        while not (path.exists() and path.stat().st_size == SIZE):
            assert time.monotonic() < deadline, f"{file_id} not replicated to {m.data_dir}"
            time.sleep(0.2)


def served_three_ways(c: LocalCluster, s3: Any, nginx: str, key: str, want: tuple[int, int]) -> str:
    """GetObject, the first storage node and nginx in front of the second (once the file is replicated there:
    from its disk) serve the object's bytes; its file ID."""
    got = s3.get_object(Bucket="big", Key=key)
    file_id = str(got["ResponseMetadata"]["HTTPHeaders"]["x-fdfs-file-id"])
    assert crc_of(got["Body"].iter_chunks(CHUNK)) == want
    assert url_crc(f"{c.members[0].url}/{file_id}") == want
    replicated(c, file_id)
    assert url_crc(f"{nginx}/{file_id}") == want
    return file_id


def test_one_gib_through_the_s3_door_in_bounded_memory(big: LocalCluster, nginx: str) -> None:
    s3 = s3_client(big)
    s3.create_bucket(Bucket="big")
    times = {}

    # One PutObject: one request with the whole body (botocore signs its SHA-256, the door checks it).
    t0 = time.monotonic()
    want, md5 = expected(1)
    put = s3.put_object(Bucket="big", Key="single.bin", Body=Pattern(SIZE, 1), ContentLength=SIZE)
    times["PutObject"] = time.monotonic() - t0
    assert put["ETag"] == f'"{md5}"'
    file_id = served_three_ways(big, s3, nginx, "single.bin", want)
    assert decode(file_id).size == SIZE and decode(file_id).crc32 == want[0]
    times["PutObject + reads"] = time.monotonic() - t0

    # A multipart upload: 16 MiB parts, 4 in flight (boto3's managed transfer), completed into one file.
    t0 = time.monotonic()
    want, _ = expected(2)
    cfg = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=4)
    s3.upload_fileobj(Pattern(SIZE, 2), "big", "multi.bin", Config=cfg)
    times["multipart"] = time.monotonic() - t0
    head = s3.head_object(Bucket="big", Key="multi.bin")
    assert head["ContentLength"] == SIZE
    assert head["ETag"].strip('"').endswith(f"-{SIZE // PART}"), head["ETag"]
    multi_id = served_three_ways(big, s3, nginx, "multi.bin", want)
    assert decode(multi_id).crc32 == want[0]
    times["multipart + reads"] = time.monotonic() - t0

    peaks = big.peak_rss()
    print(
        f"S3 {SIZE >> 20} MiB: "
        + ", ".join(f"{k} {v:.1f}s" for k, v in times.items())
        + "; peak RSS "
        + ", ".join(f"{name} {rss / 2**20:.1f} MiB" for name, rss in peaks.items())
    )
    assert set(peaks) >= {"up", "tracker-1", "gateway", "storage-g1-m1", "storage-g1-m2"}, peaks
    over = {name: rss for name, rss in peaks.items() if rss >= RSS_LIMIT}
    assert not over, f"over {RSS_LIMIT >> 20} MiB: {over}"
    s3.delete_object(Bucket="big", Key="single.bin")
    s3.delete_object(Bucket="big", Key="multi.bin")
    s3.delete_bucket(Bucket="big")
