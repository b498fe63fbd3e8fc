"""The aws CLI (awscli 1.x from PyPI, in its own venv: its pinned botocore is not the test venv's) against the S3
door of `fdfs up --s3-port 0`, run as a user runs it: `aws --endpoint-url ...` with the keys in the environment
and path-style addressing in an AWS config file. It sends what botocore sends by default (CRC32 checksums,
signed payloads over plain HTTP), `aws s3 cp` of a big file is a multipart upload with parallel parts, and a
failed command must exit non-zero with S3's error code in its message."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fdfs_http import is_file_id
from fdfs_http.testing import LocalCluster

REPO = Path(__file__).resolve().parents[3]
# awscli 1.x's exit code for an error the service answered (2.x: 254).
SERVICE_ERROR = 255
# What `aws s3 cp` is given to upload in parts (8 MiB parts, 4 at a time: see CONFIG).
MULTIPART_SIZE = 64 << 20
CONFIG = """[default]
region = us-east-1
s3 =
    addressing_style = path
    multipart_threshold = 8MB
    multipart_chunksize = 8MB
    max_concurrent_requests = 4
"""


def aws_binary() -> str:
    """`$FDFS_AWS_CLI`, else the venv `clients/python/check.sh` installs awscli into."""
    path = os.environ.get("FDFS_AWS_CLI") or str(REPO / "target" / "awscli-venv" / "bin" / "aws")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no aws CLI at {path}: run `bash clients/python/check.sh --setup` (or set FDFS_AWS_CLI)")
    return path


class Aws:
    """Runs `aws` against one cluster's S3 door."""

    def __init__(self, binary: str, cluster: LocalCluster, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        config = home / "config"
        config.write_text(CONFIG)
        self.binary = binary
        self.endpoint = cluster.s3
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "AWS_CONFIG_FILE": str(config),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
            "AWS_ACCESS_KEY_ID": cluster.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": cluster.s3_secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_MAX_ATTEMPTS": "1",
            "AWS_PAGER": "",
        }

    def run(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [self.binary, "--endpoint-url", self.endpoint, *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            timeout=600,
            check=False,
        )

    def ok(self, *args: str, stdin: bytes | None = None) -> bytes:
        """Run, assert exit 0, return stdout."""
        r = self.run(*args, stdin=stdin)
        assert r.returncode == 0, f"aws {' '.join(args)}: exit {r.returncode}\n{r.stderr.decode(errors='replace')}"
        return r.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--output", "json"))

    def fails(self, *args: str) -> tuple[int, str]:
        """Run, assert a non-zero exit; the exit code and stderr."""
        r = self.run(*args)
        assert r.returncode != 0, f"aws {' '.join(args)} succeeded: {r.stdout!r}"
        return r.returncode, r.stderr.decode(errors="replace")


@pytest.fixture(scope="module")
def aws(fdfs_bin: str, data_root: Path) -> Iterator[Aws]:
    binary = aws_binary()
    with LocalCluster(fdfs_bin, data_root / "s3-awscli", groups=1, members=2, s3_port=0) as c:
        assert c.s3, c.output()
        yield Aws(binary, c, data_root / "aws-home")


def pattern(size: int, seed: int) -> bytes:
    """`size` deterministic bytes that do not repeat within a part."""
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:size])


def test_buckets_objects_copy_listing_and_errors(aws: Aws, tmp_path: Path) -> None:
    aws.ok("s3", "mb", "s3://cli")
    assert "cli" in aws.ok("s3", "ls").decode()
    assert [b["Name"] for b in aws.json("s3api", "list-buckets")["Buckets"]].count("cli") == 1
    aws.ok("s3api", "head-bucket", "--bucket", "cli")
    code, err = aws.fails("s3", "mb", "s3://cli")
    assert code == 1 and "BucketAlreadyOwnedByYou" in err, err

    # put (from a file and from stdin), get, head: bytes, type, metadata and the file ID.
    src = tmp_path / "hello.txt"
    src.write_bytes(b"hello from the aws CLI\n")
    aws.ok("s3", "cp", str(src), "s3://cli/docs/hello.txt", "--content-type", "text/plain", "--metadata", "who=cli")
    assert aws.ok("s3", "cp", "s3://cli/docs/hello.txt", "-") == b"hello from the aws CLI\n"
    head = aws.json("s3api", "head-object", "--bucket", "cli", "--key", "docs/hello.txt")
    assert head["ContentLength"] == 23 and head["ContentType"] == "text/plain"
    assert head["Metadata"] == {"who": "cli"}
    assert head["ETag"] == f'"{hashlib.md5(src.read_bytes()).hexdigest()}"'
    aws.ok("s3", "cp", "-", "s3://cli/docs/stdin.bin", stdin=b"from stdin")
    out = tmp_path / "got.bin"
    got = aws.json("s3api", "get-object", "--bucket", "cli", "--key", "docs/stdin.bin", str(out))
    assert out.read_bytes() == b"from stdin" and got["ContentLength"] == 10
    put = aws.json("s3api", "put-object", "--bucket", "cli", "--key", "api/put.bin", "--body", str(src))
    assert put["ETag"] == head["ETag"]

    # Copy within the door: a new object with the same bytes.
    aws.ok("s3", "cp", "s3://cli/docs/hello.txt", "s3://cli/copies/hello.txt")
    assert aws.ok("s3", "cp", "s3://cli/copies/hello.txt", "-") == src.read_bytes()
    copied = aws.json(
        "s3api", "copy-object", "--bucket", "cli", "--key", "copies/api.txt", "--copy-source", "cli/docs/hello.txt"
    )
    assert copied["CopyObjectResult"]["ETag"] == head["ETag"]

    # Listings: prefix and delimiter, and pages of 2 that the CLI follows with continuation tokens.
    for i in range(5):
        aws.ok("s3", "cp", "-", f"s3://cli/many/{i}.txt", stdin=f"many {i}".encode())
    top = aws.json("s3api", "list-objects-v2", "--bucket", "cli", "--delimiter", "/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["api/", "copies/", "docs/", "many/"]
    assert "Contents" not in top
    paged = aws.json("s3api", "list-objects-v2", "--bucket", "cli", "--prefix", "many/", "--page-size", "2")
    assert [o["Key"] for o in paged["Contents"]] == [f"many/{i}.txt" for i in range(5)]
    v1 = aws.json("s3api", "list-objects", "--bucket", "cli", "--prefix", "many/", "--page-size", "2")
    assert len(v1["Contents"]) == 5
    listing = aws.ok("s3", "ls", "s3://cli/many/").decode()
    assert [line.split()[-1] for line in listing.splitlines()] == [f"{i}.txt" for i in range(5)]
    assert "PRE docs/" in aws.ok("s3", "ls", "s3://cli/").decode()
    recursive = aws.ok("s3", "ls", "--recursive", "s3://cli/").decode().splitlines()
    assert len(recursive) == 10, recursive

    # Errors: S3's codes in the message and non-zero exits (awscli 1.x: 255 for a service error of an `s3api`
    # command, 1 for a failed transfer of `s3 cp`).
    code, err = aws.fails("s3api", "get-object", "--bucket", "cli", "--key", "missing", str(tmp_path / "x"))
    assert code == SERVICE_ERROR and "NoSuchKey" in err, (code, err)
    code, err = aws.fails("s3api", "head-object", "--bucket", "cli", "--key", "missing")
    assert code == SERVICE_ERROR and "404" in err, (code, err)
    code, err = aws.fails("s3", "cp", "s3://cli/missing", str(tmp_path / "x"))
    assert code == 1 and "404" in err, (code, err)
    code, err = aws.fails("s3", "ls", "s3://no-such-bucket")
    assert code == SERVICE_ERROR and "NoSuchBucket" in err, (code, err)
    code, err = aws.fails("s3", "rb", "s3://cli")
    assert "BucketNotEmpty" in err, (code, err)
    wrong = {**aws.env, "AWS_SECRET_ACCESS_KEY": "wrong"}
    r = subprocess.run(
        [aws.binary, "--endpoint-url", aws.endpoint, "s3api", "list-objects-v2", "--bucket", "cli"],
        env=wrong,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == SERVICE_ERROR and b"SignatureDoesNotMatch" in r.stderr, r.stderr

    # Deletes: one object, several at once (DeleteObjects), then the rest by `rm --recursive`, then the bucket.
    aws.ok("s3", "rm", "s3://cli/docs/stdin.bin")
    code, _ = aws.fails("s3api", "head-object", "--bucket", "cli", "--key", "docs/stdin.bin")
    assert code == SERVICE_ERROR
    objects = {"Objects": [{"Key": f"many/{i}.txt"} for i in range(3)], "Quiet": False}
    deleted = aws.json("s3api", "delete-objects", "--bucket", "cli", "--delete", json.dumps(objects))
    assert sorted(d["Key"] for d in deleted["Deleted"]) == [f"many/{i}.txt" for i in range(3)]
    removed = aws.ok("s3", "rm", "--recursive", "s3://cli/").decode()
    assert removed.count("delete: ") == 6, removed
    aws.ok("s3", "rb", "s3://cli")
    code, err = aws.fails("s3api", "head-bucket", "--bucket", "cli")
    assert code == SERVICE_ERROR and "404" in err, err


def test_multipart_upload_presign_and_sync(aws: Aws, tmp_path: Path) -> None:
    aws.ok("s3", "mb", "s3://cli-big")
    # `aws s3 cp` of a 64 MiB file: 8 parts of 8 MiB, 4 in flight, each with its CRC32.
    data = pattern(MULTIPART_SIZE, 1)
    big = tmp_path / "big.bin"
    big.write_bytes(data)
    aws.ok("s3", "cp", str(big), "s3://cli-big/video/big.bin")
    head = aws.json("s3api", "head-object", "--bucket", "cli-big", "--key", "video/big.bin")
    assert head["ContentLength"] == MULTIPART_SIZE
    assert head["ETag"].strip('"').endswith("-8"), head["ETag"]
    back = tmp_path / "back.bin"
    aws.ok("s3", "cp", "s3://cli-big/video/big.bin", str(back))
    assert back.read_bytes() == data
    # Between keys, a big object is copied part by part (UploadPartCopy with a range per part), and moved so.
    aws.ok("s3", "cp", "s3://cli-big/video/big.bin", "s3://cli-big/video/copy.bin")
    copy = aws.json("s3api", "head-object", "--bucket", "cli-big", "--key", "video/copy.bin")
    assert copy["ContentLength"] == MULTIPART_SIZE and copy["ETag"].strip('"').endswith("-8"), copy
    aws.ok("s3", "mv", "s3://cli-big/video/copy.bin", "s3://cli-big/video/moved.bin")
    aws.ok("s3", "cp", "s3://cli-big/video/moved.bin", str(back))
    assert back.read_bytes() == data
    ranged = tmp_path / "ranged.bin"
    moved = ["--bucket", "cli-big", "--key", "video/moved.bin"]
    aws.ok("s3api", "get-object", *moved, "--range", "bytes=1000-1999", str(ranged))
    assert ranged.read_bytes() == data[1000:2000]
    code, _ = aws.fails("s3api", "head-object", "--bucket", "cli-big", "--key", "video/copy.bin")
    assert code == SERVICE_ERROR
    back.unlink()
    big.unlink()
    del data

    # A checksum that does not match the body: refused, nothing stored.
    small = tmp_path / "small.txt"
    small.write_bytes(b"checked")
    bad = ["--bucket", "cli-big", "--key", "bad.txt"]
    code, err = aws.fails("s3api", "put-object", *bad, "--body", str(small), "--checksum-crc32", "AAAAAA==")
    assert code == SERVICE_ERROR and "BadDigest" in err, err
    code, err = aws.fails("s3api", "head-object", "--bucket", "cli-big", "--key", "bad.txt")
    assert code == SERVICE_ERROR and "404" in err, err

    # `aws s3 presign`: a URL anyone can GET until it expires; the answer names the object's file ID.
    url = aws.ok("s3", "presign", "s3://cli-big/video/big.bin", "--expires-in", "120").decode().strip()
    with httpx.stream("GET", url) as r:
        assert r.status_code == 200, r.read()
        assert is_file_id(r.headers["x-fdfs-file-id"])
        n = sum(len(chunk) for chunk in r.iter_bytes())
    assert n == MULTIPART_SIZE
    r = httpx.get(url.replace("big.bin", "other.bin"))
    assert r.status_code == 403 and b"<Code>SignatureDoesNotMatch</Code>" in r.content

    # `aws s3 sync`: a directory up, an unchanged one again (nothing sent), one changed file, and back down.
    tree = tmp_path / "tree"
    for rel, body in [("a.txt", b"a"), ("sub/b.txt", b"bb"), ("sub/deep/c.bin", pattern(300_000, 2))]:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(body)
        # sync sends a file newer than its object, and LastModified has whole seconds (as S3's): a file written
        # in the second of its upload would look newer than its object.
        past = time.time() - 60
        os.utime(tree / rel, (past, past))
    out = aws.ok("s3", "sync", str(tree), "s3://cli-big/tree").decode()
    assert out.count("upload: ") == 3, out
    assert aws.ok("s3", "sync", str(tree), "s3://cli-big/tree").decode().count("upload: ") == 0
    (tree / "a.txt").write_bytes(b"a changed")
    out = aws.ok("s3", "sync", str(tree), "s3://cli-big/tree").decode()
    assert out.count("upload: ") == 1 and "a.txt" in out, out
    down = tmp_path / "down"
    aws.ok("s3", "sync", "s3://cli-big/tree", str(down))
    for f in tree.rglob("*"):
        if f.is_file():
            assert (down / f.relative_to(tree)).read_bytes() == f.read_bytes(), f
    aws.ok("s3", "rb", "--force", "s3://cli-big")
    assert "cli-big" not in aws.ok("s3", "ls").decode()
