"""Every client method against a real cluster, sync and async, and the documented errors."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import subprocess
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from fdfs_http import AsyncClient, Client, FdfsError, NotFound, Unreachable, decode, slave_id
from fdfs_http.testing import LocalCluster

from .conftest import API_KEY, SECRET, SMALL_LIMIT


def content(n: int, seed: int = 1) -> bytes:
    return (seed.to_bytes(4, "big") + os.urandom(32)) * (n // 36) + b"x" * (n % 36)


def check_result(result: dict[str, object], data: bytes) -> str:
    fid = str(result["file_id"])
    info = decode(fid)
    assert info.size == len(data) == result["size"]
    assert info.crc32 == zlib.crc32(data)
    assert result["crc32"] == f"{zlib.crc32(data):08x}"
    return fid


def test_upload_from_bytes_path_file_object_and_chunks(client: Client, tmp_path: Path) -> None:
    data = content(300_000)
    fid = check_result(dict(client.upload(data, filename="a.bin")), data)
    assert fid.endswith(".bin")

    p = tmp_path / "photo.JPG"
    p.write_bytes(data)
    r = client.upload(p, meta={"author": "alice"})
    assert r["file_id"].endswith(".jpg") and r["content_type"] == "image/jpeg"
    assert r.get("filename") == "photo.JPG"
    check_result(dict(r), data)
    assert client.meta(r["file_id"]) == {"author": "alice"}

    with open(p, "rb") as f:
        f.seek(1000)  # from the current position, as file objects are read
        check_result(dict(client.upload(f)), data[1000:])

    # A non-seekable stream without a known size is sent chunked.
    r = client.upload(io.BufferedReader(io.BytesIO(data)), filename="s.txt")
    check_result(dict(r), data)
    r = client.upload(iter([data[:7], data[7:]]), filename="c.txt")
    check_result(dict(r), data)
    r = client.upload(b"", filename="empty")
    assert r["size"] == 0 and client.download(r["file_id"]) == b""


def test_upload_into_a_group(client: Client) -> None:
    for group in ["group1", "group2"]:
        r = client.upload(b"grouped", filename="g.txt", group=group)
        assert r["group"] == group and r["file_id"].startswith(group + "/")


def test_download_download_to_and_open(client: Client, tmp_path: Path) -> None:
    data = content(1_000_003)
    fid = client.upload(data, filename="d.bin")["file_id"]
    assert client.download(fid) == data

    out = tmp_path / "out.bin"
    assert client.download_to(fid, out) == len(data)
    assert out.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"], "no temp file left behind"
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask, "permissions as for any new file"
    buf = io.BytesIO()
    assert client.download_to(fid, buf) == len(data)
    assert buf.getvalue() == data

    with client.open(fid) as f:
        assert f.read(10) == data[:10]
        assert f.tell() == 10
        f.seek(500_000)
        assert f.read(5) == data[500_000:500_005]
        f.seek(-3, os.SEEK_END)
        assert f.read() == data[-3:]
        f.seek(0)
        assert f.read() == data


def wait_gone(client: Client, fid: str, timeout: float = 30.0) -> None:
    """Wait until no member of the group answers for `fid` (deletes replicate asynchronously)."""
    deadline = time.monotonic() + timeout
    while client.exists(fid):
        assert time.monotonic() < deadline, f"{fid} still exists {timeout} s after its delete"
        time.sleep(0.05)


def test_info_exists_meta_and_delete(client: Client) -> None:
    fid = client.upload(b"hello meta", filename="m.txt", meta={"a": "1", "b": "2"})["file_id"]
    info = client.info(fid)
    assert info["file_id"] == fid and info["size"] == 10 and info["metadata"] == {"a": "1", "b": "2"}
    assert len(info["locations"]) >= 1
    assert client.exists(fid)

    assert client.set_meta(fid, {"c": "3"}) == {"c": "3"}
    assert client.meta(fid) == {"c": "3"}
    assert client.merge_meta(fid, {"d": "4", "c": None}) == {"d": "4"}
    assert client.meta(fid) == {"d": "4"}

    client.delete(fid)
    # The delete reaches the other member of the group through replication, a moment later.
    wait_gone(client, fid)
    with pytest.raises(NotFound) as e:
        client.delete(fid)
    assert e.value.status == 404 and e.value.code == "not_found"


def test_upload_slave_gets_the_computed_id(client: Client) -> None:
    master = client.upload(content(5000), filename="pic.png")["file_id"]
    thumb = content(100, seed=2)
    r = client.upload_slave(master, "_150x150", thumb)
    assert r["file_id"] == slave_id(master, "_150x150")
    assert client.download(r["file_id"]) == thumb
    with pytest.raises(FdfsError) as e:
        client.upload_slave(master, "_150x150", thumb)
    assert e.value.status == 409


def test_decode_of_uploaded_ids_matches_fdfs_info_offline(client: Client, fdfs_bin: str) -> None:
    data = content(12345)
    fid = client.upload(data, filename="x.dat")["file_id"]
    rust = json.loads(
        subprocess.run([fdfs_bin, "info", "--offline", fid], check=True, capture_output=True, text=True).stdout
    )
    info = client.decode(fid)
    assert (rust["source_id"], rust["created"], rust["size"], rust["crc32"]) == (
        info.source_id,
        info.created,
        info.size,
        info.crc32_hex,
    )
    cluster_info = client.info(fid)
    assert (cluster_info["source_id"], cluster_info["created"]) == (info.source_id, info.created)


def test_cluster_view(client: Client, cluster: LocalCluster) -> None:
    view = client.cluster()
    members = [m for g in view["groups"] for m in g["members"]]
    assert sorted(m["node_id"] for m in members) == sorted(m.node_id for m in cluster.members)


def test_not_found_raises_not_found(client: Client) -> None:
    missing = "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg"
    for call in [client.download, client.info, client.meta, client.open, client.delete]:
        with pytest.raises(NotFound) as e:
            call(missing)
        assert e.value.status == 404 and e.value.code == "not_found", call
        assert isinstance(e.value, FileNotFoundError)
    assert client.exists(missing) is False


def test_gateway_down_raises_unreachable_naming_the_request() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on the port now.
    gateway = f"http://127.0.0.1:{port}"
    missing = "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg"
    with Client(gateway, timeout=5) as c:
        with pytest.raises(Unreachable) as e:
            c.upload(b"x", filename="x.txt")
        assert isinstance(e.value, FdfsError) and e.value.status is None
        assert (e.value.method, e.value.url) == ("PUT", f"{gateway}/upload/x.txt")
        assert str(e.value).startswith(f"PUT {gateway}/upload/x.txt: ConnectError")
        with pytest.raises(Unreachable) as e:
            c.download(missing)
        assert (e.value.method, e.value.url) == ("GET", f"{gateway}/{missing}")
        with pytest.raises(Unreachable) as e:
            c.delete(missing)
        assert (e.value.method, e.value.url) == ("DELETE", f"{gateway}/{missing}")

    async def run() -> None:
        async with AsyncClient(gateway, timeout=5) as ac:
            with pytest.raises(Unreachable) as e:
                await ac.info(missing)
            assert (e.value.method, e.value.url) == ("GET", f"{gateway}/info/{missing}")

    asyncio.run(run())


def test_answered_errors_name_the_request_that_failed(client: Client) -> None:
    missing = "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg"
    with pytest.raises(NotFound) as e:
        client.meta(missing)
    assert (e.value.method, e.value.url) == ("GET", f"{client.gateway}/meta/{missing}")
    assert str(e.value).startswith(f"GET {client.gateway}/meta/{missing}: ") and "(HTTP 404 not_found)" in str(e.value)


@pytest.mark.parametrize("bad", ["127.0.0.1:8080", "localhost", "ftp://host/", "http://", ""])
def test_a_gateway_that_is_not_an_http_url_is_refused_at_once(bad: str) -> None:
    with pytest.raises(ValueError, match="absolute http"):
        Client(bad)
    with pytest.raises(ValueError, match="absolute http"):
        AsyncClient(bad)


def test_too_large_and_missing_api_key_raise_fdfs_error(secured: LocalCluster) -> None:
    with Client(secured.gateway) as anonymous:
        with pytest.raises(FdfsError) as e:
            anonymous.upload(b"x", filename="x.txt")
        assert e.value.status == 401
    with Client(secured.gateway, api_key=API_KEY) as c:
        big = content(SMALL_LIMIT + 1)
        with pytest.raises(FdfsError) as e:
            c.upload(big, filename="big.bin")
        assert e.value.status == 413 and e.value.code and e.value.message
        # Without a declared length the gateway counts and still answers 413.
        with pytest.raises(FdfsError) as e:
            c.upload(iter([big[:1000], big[1000:]]), filename="big.bin")
        assert e.value.status == 413
        # Far more than the gateway drains (16 MiB): it answers early and closes; the answer still arrives.
        huge = 40 << 20
        with pytest.raises(FdfsError) as e:
            c.upload(iter([b"\0" * (1 << 20)] * (huge >> 20)), filename="huge.bin", size=huge)
        assert e.value.status == 413 and e.value.code == "payload_too_large"
        assert c.upload(b"small", filename="s.txt")["size"] == 5


def test_signed_url_is_accepted_by_the_storage_node(secured: LocalCluster, fdfs_bin: str) -> None:
    with Client(secured.gateway, api_key=API_KEY) as c:
        data = content(4000)
        fid = c.upload(data, filename="s.bin")["file_id"]
        node = secured.members[0].url
        # The gateway signs its own redirects; the node refuses a link without a token.
        assert c.download(fid) == data
        assert httpx.get(f"{node}/{fid}").status_code in (401, 403)
        url = c.signed_url(fid, SECRET, base_url=node)
        got = httpx.get(url)
        assert got.status_code == 200 and got.content == data
        assert httpx.get(c.signed_url(fid, "wrong", base_url=node)).status_code in (401, 403)
        ts = int(url.rsplit("ts=", 1)[1])
        rust = subprocess.run(
            [fdfs_bin, "sign", fid, "--secret", SECRET, "--base", node, "--ts", str(ts)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        assert rust == url


def test_async_client_does_the_same(cluster: LocalCluster, tmp_path: Path) -> None:
    data = content(700_001)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 65536):
            yield data[i : i + 65536]

    async def run() -> None:
        async with AsyncClient(cluster.gateway) as c:
            fid = check_result(dict(await c.upload(chunks(), filename="a.bin", meta={"k": "v"})), data)
            p = tmp_path / "in.bin"
            p.write_bytes(data)
            check_result(dict(await c.upload(p)), data)
            with open(p, "rb") as f:
                check_result(dict(await c.upload(f)), data)
            assert await c.download(fid) == data
            async with c.open(fid) as f2:
                assert await f2.read(3) == data[:3]
                rest = b"".join([chunk async for chunk in f2])
                assert rest == data[3:]
            out = tmp_path / "out.bin"
            assert await c.download_to(fid, out) == len(data) and out.read_bytes() == data
            assert await c.exists(fid)
            assert (await c.info(fid))["size"] == len(data)
            assert await c.meta(fid) == {"k": "v"}
            assert await c.set_meta(fid, {"x": "y"}) == {"x": "y"}
            assert await c.merge_meta(fid, {"z": "1"}) == {"x": "y", "z": "1"}
            slave = await c.upload_slave(fid, "_t", b"thumb")
            assert slave["file_id"] == slave_id(fid, "_t")
            assert (await c.cluster())["groups"]
            await c.delete(fid)
            # The delete reaches the other member of the group through replication, a moment later.
            deadline = time.monotonic() + 30
            while await c.exists(fid):
                assert time.monotonic() < deadline, f"{fid} still exists 30 s after its delete"
                await asyncio.sleep(0.05)
            with pytest.raises(NotFound):
                await c.download(fid)

    asyncio.run(run())


def test_chunk_iterables_are_consumed_lazily(client: Client) -> None:
    produced = []

    def gen() -> Iterator[bytes]:
        for i in range(8):
            produced.append(i)
            yield bytes([i]) * 1000

    r = client.upload(gen(), filename="lazy.bin", size=8000)
    assert r["size"] == 8000 and produced == list(range(8))
