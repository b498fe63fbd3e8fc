"""The S3 door with its namespace in PostgreSQL (`--s3-postgres`): two gateways on one cluster share one namespace,
as several gateways behind a load balancer do. A real PostgreSQL server (Debian's packages, installed here when
missing) runs in a temp dir for the module; boto3 talks to both gateways."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.client import Config
from botocore.exceptions import ClientError, EndpointConnectionError

from fdfs_http.testing import Gateway, LocalCluster


def _postgres_bindir() -> Path:
    """Debian's PostgreSQL server binaries, installed when missing (CI's .ci/prepare installs them already)."""

    def found() -> list[Path]:
        return sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))

    if not found() and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=False, env=env)
    if not found():
        pytest.fail("no PostgreSQL server under /usr/lib/postgresql: apt-get install postgresql")
    return found()[-1].parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Postgres:
    """A PostgreSQL server of its own in `root` on a free loopback port (run as the `postgres` user when root:
    the server refuses to run as root)."""

    def __init__(self, bindir: Path, root: Path) -> None:
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.port = _free_port()
        self.url = f"postgres://fdfs@127.0.0.1:{self.port}/postgres"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "postgres.log"

    def _as_owner(self, cmd: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return cmd
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *cmd]

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        cmd = [str(self.bindir / "initdb"), "-D", str(self.data), "-U", "fdfs", "--auth=trust", "-E", "UTF8"]
        done = subprocess.run(self._as_owner([*cmd, "--locale=C.UTF-8"]), check=False, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stdout}{done.stderr}")

    def start(self, timeout: float = 60.0) -> None:
        """Start the server; returns once it accepts connections (a restart after SIGKILL may have to wait for
        the old server's backends to go)."""
        deadline = time.monotonic() + timeout
        cmd = [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port)]
        cmd += ["-k", str(self.root), "-h", "127.0.0.1", "-c", "fsync=on", "-c", "synchronous_commit=on"]
        while True:
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(self._as_owner(cmd), stdout=log, stderr=log, stdin=subprocess.DEVNULL)
            while self.proc.poll() is None and time.monotonic() < deadline:
                ready = subprocess.run(
                    [str(self.bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)], check=False
                )
                if ready.returncode == 0:
                    return
                time.sleep(0.2)
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"PostgreSQL did not start:\n{self.log.read_text(errors='replace')}")
            time.sleep(0.5)

    def sql(self, statement: str) -> str:
        """Run `statement` with psql; its output."""
        cmd = [str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "fdfs", "-d", "postgres"]
        return subprocess.run([*cmd, "-XAtc", statement], check=True, capture_output=True, text=True).stdout

    def kill(self) -> None:
        """SIGKILL the server (its backends notice and exit)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def postgres(data_root: Path) -> Iterator[Postgres]:
    # Beside the data root, not in it: the server's user must reach its dir (the data root is private to root).
    root = Path(tempfile.mkdtemp(prefix="fdfs-pg-", dir=data_root.parent))
    pg = Postgres(_postgres_bindir(), root)
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def two(fdfs_bin: str, data_root: Path, postgres: Postgres) -> Iterator[tuple[LocalCluster, Gateway]]:
    """`fdfs up` with its S3 door on PostgreSQL, and a second gateway on the same cluster and namespace."""
    with LocalCluster(fdfs_bin, data_root / "s3pg", groups=1, members=2, s3_port=0, s3_postgres=postgres.url) as c:
        yield c, c.start_gateway()


def client(c: LocalCluster, endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=c.s3_access_key,
        aws_secret_access_key=c.s3_secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def clients(two: tuple[LocalCluster, Gateway]) -> tuple[Any, Any]:
    c, b = two
    return client(c, c.s3), client(c, b.s3)


def code(e: pytest.ExceptionInfo[ClientError]) -> str:
    return str(e.value.response["Error"]["Code"])


def file_id(answer: dict[str, Any]) -> str:
    return str(answer["ResponseMetadata"]["HTTPHeaders"]["x-fdfs-file-id"])


def stored(c: LocalCluster, fid: str) -> int:
    """The status every storage node answers for file `fid` (200 when all have it, 404 when none has)."""
    codes = {httpx.get(f"{m.url}/{fid}").status_code for m in c.members}
    return codes.pop() if len(codes) == 1 else -1


def eventually(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


def test_an_object_put_through_one_gateway_is_read_listed_and_deleted_through_the_other(
    two: tuple[LocalCluster, Gateway],
) -> None:
    a, b = clients(two)
    a.create_bucket(Bucket="shared")
    assert "shared" in [x["Name"] for x in b.list_buckets()["Buckets"]]
    put = a.put_object(Bucket="shared", Key="img/one.jpg", Body=b"first", ContentType="image/jpeg", Metadata={"k": "v"})
    got = b.get_object(Bucket="shared", Key="img/one.jpg")
    assert got["Body"].read() == b"first"
    assert got["ContentType"] == "image/jpeg"
    assert got["Metadata"] == {"k": "v"}
    assert got["ETag"] == put["ETag"]
    # Listing through B, in the byte order of the keys' UTF-8 (upper case before lower, 'é' after 'z').
    for k in ["B", "a", "z", "é", "img/two.jpg", "img/sub/three.jpg"]:
        b.put_object(Bucket="shared", Key=k, Body=k.encode())
    listed = a.list_objects_v2(Bucket="shared")
    assert [o["Key"] for o in listed["Contents"]] == [
        "B",
        "a",
        "img/one.jpg",
        "img/sub/three.jpg",
        "img/two.jpg",
        "z",
        "é",
    ]
    top = b.list_objects_v2(Bucket="shared", Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["img/"]
    assert [o["Key"] for o in top["Contents"]] == ["B", "a", "z", "é"]
    under = a.list_objects_v2(Bucket="shared", Prefix="img/", Delimiter="/")
    assert [p["Prefix"] for p in under["CommonPrefixes"]] == ["img/sub/"]
    assert [o["Key"] for o in under["Contents"]] == ["img/one.jpg", "img/two.jpg"]
    # Pages of two: a continuation token from A is honoured by B.
    keys: list[str] = []
    kw: dict[str, Any] = {"Bucket": "shared", "MaxKeys": 2, "Delimiter": "/"}
    for s3 in [a, b, a, b]:
        page = s3.list_objects_v2(**kw)
        keys += [o["Key"] for o in page.get("Contents", [])] + [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        if not page["IsTruncated"]:
            break
        kw["ContinuationToken"] = page["NextContinuationToken"]
    assert sorted(keys, key=lambda k: k.encode()) == ["B", "a", "img/", "z", "é"]
    assert b.list_objects_v2(Bucket="shared", StartAfter="img/two.jpg")["Contents"][0]["Key"] == "z"
    # Deleted through B: gone for A, and its file deleted.
    b.delete_object(Bucket="shared", Key="img/one.jpg")
    with pytest.raises(ClientError) as e:
        a.get_object(Bucket="shared", Key="img/one.jpg")
    assert code(e) == "NoSuchKey"
    eventually(lambda: stored(two[0], file_id(put)) == 404, "the deleted object's file is deleted")


def test_concurrent_overwrites_through_both_gateways_leave_one_file_and_delete_the_others(
    two: tuple[LocalCluster, Gateway],
) -> None:
    a, b = clients(two)
    a.create_bucket(Bucket="race")
    files: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def writer(s3: Any, name: str) -> None:
        try:
            start.wait()
            for i in range(10):
                fid = file_id(s3.put_object(Bucket="race", Key="hot", Body=f"{name}-{i}".encode()))
                with lock:
                    files.append(fid)
        except BaseException as e:  # reported by the test below
            errors.append(e)

    # Two writers per gateway (boto3 clients are thread-safe).
    threads = [
        threading.Thread(target=writer, args=(s3, f"{n}{j}")) for n, s3 in [("a", a), ("b", b)] for j in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(set(files)) == 40
    live = file_id(b.head_object(Bucket="race", Key="hot"))
    assert file_id(a.head_object(Bucket="race", Key="hot")) == live
    assert live in files
    assert stored(two[0], live) == 200
    # Every replaced file is deleted (each put got back exactly what it replaced); the winner's never is.
    eventually(
        lambda: all(stored(two[0], f) == 404 for f in files if f != live),
        "every overwritten object's file is deleted",
    )
    assert stored(two[0], live) == 200
    assert (
        a.get_object(Bucket="race", Key="hot")["Body"].read() == b.get_object(Bucket="race", Key="hot")["Body"].read()
    )


def test_a_multipart_upload_begun_on_one_gateway_is_completed_on_the_other(two: tuple[LocalCluster, Gateway]) -> None:
    a, b = clients(two)
    a.create_bucket(Bucket="multi")
    up = a.create_multipart_upload(Bucket="multi", Key="big.bin", ContentType="application/x-big")
    uid = up["UploadId"]
    assert [u["UploadId"] for u in b.list_multipart_uploads(Bucket="multi").get("Uploads", [])] == [uid]
    one, two_, three = os.urandom(5 << 20), os.urandom(5 << 20), b"tail"
    p1 = a.upload_part(Bucket="multi", Key="big.bin", UploadId=uid, PartNumber=1, Body=one)
    p2 = b.upload_part(Bucket="multi", Key="big.bin", UploadId=uid, PartNumber=2, Body=two_)
    p3 = a.upload_part(Bucket="multi", Key="big.bin", UploadId=uid, PartNumber=3, Body=three)
    assert [p["PartNumber"] for p in b.list_parts(Bucket="multi", Key="big.bin", UploadId=uid)["Parts"]] == [1, 2, 3]
    done = b.complete_multipart_upload(
        Bucket="multi",
        Key="big.bin",
        UploadId=uid,
        MultipartUpload={
            "Parts": [{"PartNumber": n, "ETag": p["ETag"]} for n, p in [(1, p1), (2, p2), (3, p3)]],
        },
    )
    assert done["ETag"].endswith('-3"')
    got = a.get_object(Bucket="multi", Key="big.bin")
    assert got["Body"].read() == one + two_ + three
    assert got["ContentType"] == "application/x-big"
    assert not a.list_multipart_uploads(Bucket="multi").get("Uploads")
    with pytest.raises(ClientError) as e:
        a.upload_part(Bucket="multi", Key="big.bin", UploadId=uid, PartNumber=4, Body=b"late")
    assert code(e) == "NoSuchUpload"


def test_a_bucket_that_is_not_empty_is_refused_across_gateways(two: tuple[LocalCluster, Gateway]) -> None:
    a, b = clients(two)
    a.create_bucket(Bucket="full")
    with pytest.raises(ClientError) as e:
        b.create_bucket(Bucket="full")
    assert code(e) == "BucketAlreadyOwnedByYou"
    a.put_object(Bucket="full", Key="k", Body=b"x")
    with pytest.raises(ClientError) as e:
        b.delete_bucket(Bucket="full")
    assert code(e) == "BucketNotEmpty"
    b.delete_object(Bucket="full", Key="k")
    a.delete_bucket(Bucket="full")
    with pytest.raises(ClientError) as e:
        b.head_bucket(Bucket="full")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as e:
        b.put_object(Bucket="full", Key="k", Body=b"x")
    assert code(e) == "NoSuchBucket"


def test_postgres_killed_gives_503s_and_its_restart_recovers(
    two: tuple[LocalCluster, Gateway], postgres: Postgres
) -> None:
    c, gw = two
    a, b = clients(two)
    a.create_bucket(Bucket="outage")
    a.put_object(Bucket="outage", Key="before", Body=b"kept")
    presigned = b.generate_presigned_url("get_object", Params={"Bucket": "outage", "Key": "before"})
    pid = c.gateway_pid()
    postgres.kill()
    try:
        for s3 in [a, b]:
            with pytest.raises(ClientError) as e:
                s3.get_object(Bucket="outage", Key="before")
            assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
            assert code(e) == "ServiceUnavailable"
        # A raw answer: S3's XML error body.
        raw = httpx.get(presigned)
        assert raw.status_code == 503, raw.text
        assert raw.headers["content-type"] == "application/xml"
        assert "<Code>ServiceUnavailable</Code>" in raw.text
        with pytest.raises(ClientError) as e:
            a.put_object(Bucket="outage", Key="during", Body=b"lost")
        assert code(e) == "ServiceUnavailable"
    finally:
        postgres.start()

    def recovered() -> bool:
        try:
            return all(s3.get_object(Bucket="outage", Key="before")["Body"].read() == b"kept" for s3 in [a, b])
        except ClientError:
            return False

    eventually(recovered, "both gateways answer again once PostgreSQL is back")
    b.put_object(Bucket="outage", Key="after", Body=b"new")
    assert a.get_object(Bucket="outage", Key="after")["Body"].read() == b"new"
    assert [o["Key"] for o in a.list_objects_v2(Bucket="outage")["Contents"]] == ["after", "before"]
    # Both gateway processes are still the ones started (no panic, no restart).
    assert gw.proc.poll() is None
    assert c.gateway_pid() == pid


def files_on(c: LocalCluster) -> set[str]:
    """The files the first storage node holds (its replication listing)."""
    r = httpx.get(f"{c.members[0].url}/v1/sync/files?limit=1000", headers={"x-fdfs-cluster-secret": c.secret})
    r.raise_for_status()
    return {f["id"] for f in r.json()["files"]}


def test_a_collector_spares_uploads_in_flight_on_another_gateway_and_removes_what_a_killed_one_left(
    two: tuple[LocalCluster, Gateway],
) -> None:
    c, _ = two
    a = client(c, c.s3)
    # A gateway whose PutObject waits 3 s between storing the file and recording its key, and another whose
    # collector passes every second, with a grace period longer than that window.
    slow = c.start_gateway(env={"FDFS_TEST_S3_PAUSE_BEFORE_RECORD_MS": "3000"})
    collector = c.start_gateway("--s3-collect-interval-secs", "1", "--s3-orphan-grace-secs", "6")
    try:
        s = client(c, slow.s3)
        s.create_bucket(Bucket="inflight")
        put = file_id(s.put_object(Bucket="inflight", Key="slow.txt", Body=b"slow"))
        # Older than the grace period and recorded: still there after more passes.
        time.sleep(8)
        assert collector.log.read_text().count("S3 orphan collection done") >= 3, collector.log.read_text()
        assert stored(c, put) == 200
        assert a.get_object(Bucket="inflight", Key="slow.txt")["Body"].read() == b"slow"
        # What the other tests stored stays too.
        assert a.get_object(Bucket="race", Key="hot")["Body"].read()

        # The slow gateway is killed between storing a file and recording its key: the collector of the other
        # removes that file once past its grace.
        before = files_on(c)

        def put_lost() -> None:
            with contextlib.suppress(Exception):
                s.put_object(Bucket="inflight", Key="lost.txt", Body=b"lost")

        t = threading.Thread(target=put_lost)
        t.start()
        eventually(lambda: len(files_on(c) - before) == 1, "the file is stored, its key not yet recorded")
        (lost,) = files_on(c) - before
        slow.proc.send_signal(signal.SIGKILL)
        t.join()
        eventually(lambda: lost not in files_on(c), "the orphan is collected by the other gateway", timeout=60)
        with pytest.raises(ClientError) as e:
            a.head_object(Bucket="inflight", Key="lost.txt")
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        assert stored(c, put) == 200
    finally:
        slow.stop()
        collector.stop()


def test_a_lost_postgres_namespace_is_rebuilt_from_the_storage_nodes(
    two: tuple[LocalCluster, Gateway], postgres: Postgres
) -> None:
    from boto3.s3.transfer import TransferConfig

    c, gw = two
    a, b = clients(two)
    a.create_bucket(Bucket="rebuilt")
    a.put_object(Bucket="rebuilt", Key="a/one.txt", Body=b"one", ContentType="text/plain", Metadata={"x": "1"})
    b.put_object(Bucket="rebuilt", Key="a/one.txt", Body=b"one again")  # overwritten: the newest file wins
    big = os.urandom(11 << 20)
    cfg = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20)
    b.upload_fileobj(io.BytesIO(big), "rebuilt", "b/big.bin", Config=cfg)
    before = {o["Key"]: o["ETag"] for o in a.list_objects_v2(Bucket="rebuilt")["Contents"]}
    assert before["b/big.bin"].endswith('-3"')

    # The namespace is lost (its tables dropped), and both gateways restart.
    postgres.sql("DROP TABLE fdfs_s3_parts, fdfs_s3_uploads, fdfs_s3_objects, fdfs_s3_buckets, fdfs_s3_schema")
    gw.stop()
    os.kill(c.gateway_pid(), signal.SIGKILL)  # fdfs up restarts it
    second = c.start_gateway()  # returns once its door is past the rebuild

    def rebuilt(s3: Any) -> bool:
        try:
            return {o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket="rebuilt")["Contents"]} == before
        except (ClientError, EndpointConnectionError, KeyError):
            return False

    eventually(lambda: rebuilt(client(c, c.s3)) and rebuilt(client(c, second.s3)), "the namespace is rebuilt", 90)
    assert postgres.sql("SELECT rebuilt_at IS NOT NULL FROM fdfs_s3_schema").strip() == "t"
    a, b = client(c, c.s3), client(c, second.s3)
    one = b.get_object(Bucket="rebuilt", Key="a/one.txt")
    assert one["Body"].read() == b"one again"
    assert a.get_object(Bucket="rebuilt", Key="b/big.bin")["Body"].read() == big
    assert a.head_object(Bucket="race", Key="hot")["ETag"] == b.head_object(Bucket="race", Key="hot")["ETag"]
