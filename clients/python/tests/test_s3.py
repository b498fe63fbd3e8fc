"""The S3-compatible door (issue 20) with real S3 clients against `fdfs up --s3-port 0`: boto3 (what
django-storages' `S3Storage` and most Python tools use) and minio-py. Objects stay FastDFS files: each answer
names its file ID, and the storage nodes serve the same bytes under it."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import httpx
import pytest
from botocore.client import Config
from botocore.exceptions import ClientError, EndpointConnectionError

from fdfs_http import is_file_id
from fdfs_http.testing import LocalCluster

# The door's `s3_domains`: `Host: <bucket>.s3.test` names the bucket (virtual-host style).
VIRTUAL_DOMAIN = "s3.test"
# The door's `s3_cors_origins`: pages from this origin may call it.
SHOP_ORIGIN = "http://shop.test"


@pytest.fixture(scope="module")
def s3cluster(fdfs_bin: str, data_root: Path) -> Iterator[LocalCluster]:
    env = {"FDFS_S3_DOMAINS": VIRTUAL_DOMAIN, "FDFS_S3_CORS_ORIGINS": SHOP_ORIGIN}
    with LocalCluster(fdfs_bin, data_root / "s3", groups=1, members=2, s3_port=0, env=env) as c:
        assert c.s3 and c.s3_access_key and c.s3_secret_key, c.output()
        yield c


def client(c: LocalCluster, secret: str | None = None) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=c.s3,
        aws_access_key_id=c.s3_access_key,
        aws_secret_access_key=secret or c.s3_secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def code(e: pytest.ExceptionInfo[ClientError]) -> str:
    return str(e.value.response["Error"]["Code"])


def on_storage(c: LocalCluster, file_id: str) -> httpx.Response:
    return httpx.get(f"{c.members[0].url}/{file_id}")


def test_buckets_objects_listing_and_errors(s3cluster: LocalCluster) -> None:
    s3 = client(s3cluster)
    s3.create_bucket(Bucket="shop")
    with pytest.raises(ClientError) as e:
        s3.create_bucket(Bucket="shop")
    assert code(e) == "BucketAlreadyOwnedByYou"
    with pytest.raises(ClientError) as e:
        s3.create_bucket(Bucket="Not_Valid")
    assert code(e) == "InvalidBucketName"
    s3.head_bucket(Bucket="shop")
    assert "shop" in [b["Name"] for b in s3.list_buckets()["Buckets"]]

    put = s3.put_object(
        Bucket="shop", Key="img/a b+c.jpg", Body=b"hello world", ContentType="image/jpeg", Metadata={"color": "red"}
    )
    assert put["ETag"] == '"5eb63bbbe01eeed093cb22bb8f5acdc3"'  # the MD5, as S3 answers
    file_id = put["ResponseMetadata"]["HTTPHeaders"]["x-fdfs-file-id"]
    got = s3.get_object(Bucket="shop", Key="img/a b+c.jpg")
    assert got["Body"].read() == b"hello world"
    assert got["ContentType"] == "image/jpeg"
    assert got["Metadata"] == {"color": "red"}
    assert got["ResponseMetadata"]["HTTPHeaders"]["x-fdfs-file-id"] == file_id
    # The object is an ordinary FastDFS file: its storage-node URL serves the same bytes.
    assert on_storage(s3cluster, file_id).content == b"hello world"
    assert s3.get_object(Bucket="shop", Key="img/a b+c.jpg", Range="bytes=2-5")["Body"].read() == b"llo "
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="shop", Key="img/a b+c.jpg", IfNoneMatch=put["ETag"])
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="shop", Key="img/a b+c.jpg", IfMatch='"0000"')
    assert code(e) == "PreconditionFailed"

    # A 5 MB object (boto3's managed upload, one request below its multipart threshold), checked by its ETag.
    big = bytes(range(256)) * (5_000_000 // 256)
    s3.upload_fileobj(io.BytesIO(big), "shop", "big.bin")
    head = s3.head_object(Bucket="shop", Key="big.bin")
    assert head["ContentLength"] == len(big)
    assert s3.get_object(Bucket="shop", Key="big.bin")["Body"].read() == big

    for i in range(5):
        s3.put_object(Bucket="shop", Key=f"docs/{i}.txt", Body=f"doc {i}".encode())
    top = s3.list_objects_v2(Bucket="shop", Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["docs/", "img/"]
    assert [o["Key"] for o in top["Contents"]] == ["big.bin"]
    paginator = s3.get_paginator("list_objects_v2")
    pages = paginator.paginate(Bucket="shop", Prefix="docs/", PaginationConfig={"PageSize": 2})
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert keys == [f"docs/{i}.txt" for i in range(5)]
    v1 = s3.list_objects(Bucket="shop", Prefix="img/")
    assert [o["Key"] for o in v1["Contents"]] == ["img/a b+c.jpg"]

    # Overwriting a key removes the file it pointed at.
    s3.put_object(Bucket="shop", Key="img/a b+c.jpg", Body=b"new bytes")
    assert s3.get_object(Bucket="shop", Key="img/a b+c.jpg")["Body"].read() == b"new bytes"
    deadline = time.monotonic() + 10
    while on_storage(s3cluster, file_id).status_code != 404:
        assert time.monotonic() < deadline, "the replaced object's file is still served"
        time.sleep(0.2)

    with pytest.raises(ClientError) as e:
        s3.delete_bucket(Bucket="shop")
    assert code(e) == "BucketNotEmpty"
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="nope", Key="x")
    assert code(e) == "NoSuchBucket"
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="shop", Key="missing")
    assert code(e) == "NoSuchKey"
    with pytest.raises(ClientError) as e:
        client(s3cluster, secret="wrong").list_objects_v2(Bucket="shop")
    assert code(e) == "SignatureDoesNotMatch"
    with pytest.raises(ClientError) as e:
        client(s3cluster, secret="wrong").put_object(Bucket="shop", Key="refused", Body=b"x")
    assert code(e) == "SignatureDoesNotMatch"
    assert "refused" not in [o["Key"] for o in s3.list_objects_v2(Bucket="shop")["Contents"]]

    s3.delete_object(Bucket="shop", Key="big.bin")
    deleted = s3.delete_objects(Bucket="shop", Delete={"Objects": [{"Key": f"docs/{i}.txt"} for i in range(5)]})
    assert len(deleted["Deleted"]) == 5
    s3.delete_object(Bucket="shop", Key="img/a b+c.jpg")
    assert s3.list_objects_v2(Bucket="shop")["KeyCount"] == 0
    s3.delete_bucket(Bucket="shop")
    with pytest.raises(ClientError) as e:
        s3.head_bucket(Bucket="shop")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_presigned_urls_and_anonymous_requests(s3cluster: LocalCluster) -> None:
    s3 = client(s3cluster)
    s3.create_bucket(Bucket="presign")
    s3.put_object(Bucket="presign", Key="p.txt", Body=b"presigned")
    # boto3 presigns with Signature V2 by default in us-east-1, V4 when asked: both work.
    v4 = boto3.client(
        "s3",
        endpoint_url=s3cluster.s3,
        aws_access_key_id=s3cluster.s3_access_key,
        aws_secret_access_key=s3cluster.s3_secret_key,
        region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    for c in (s3, v4):
        url = c.generate_presigned_url("get_object", Params={"Bucket": "presign", "Key": "p.txt"}, ExpiresIn=60)
        assert httpx.get(url).content == b"presigned"
        put = c.generate_presigned_url("put_object", Params={"Bucket": "presign", "Key": "up.txt"}, ExpiresIn=60)
        assert httpx.put(put, content=b"uploaded").status_code == 200
        assert s3.get_object(Bucket="presign", Key="up.txt")["Body"].read() == b"uploaded"
        # Tampered or expired: refused with S3's XML error, nothing stored.
        r = httpx.put(put.replace("up.txt", "other.txt"), content=b"x")
        assert r.status_code == 403 and b"<Code>SignatureDoesNotMatch</Code>" in r.content
        short = c.generate_presigned_url("get_object", Params={"Bucket": "presign", "Key": "p.txt"}, ExpiresIn=1)
        time.sleep(2.1)
        r = httpx.get(short)
        assert r.status_code == 403 and b"expired" in r.content
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="presign")["Contents"]]
    assert "other.txt" not in keys
    # No signature: refused (the bucket is not public).
    r = httpx.get(f"{s3cluster.s3}/presign/p.txt")
    assert r.status_code == 403 and b"<Code>AccessDenied</Code>" in r.content


def test_virtual_host_style_addressing(s3cluster: LocalCluster) -> None:
    """With `s3_domains`, `Host: <bucket>.<domain>` names the bucket and the path is the key, as boto3's
    `addressing_style="virtual"` (and most tools, CDNs in front) address S3. No DNS names `*.s3.test` here, so
    the client reaches the door as its HTTP proxy: the same request, `Host` included, sent to the door's
    address."""
    port = urlsplit(s3cluster.s3).port
    virtual = boto3.client(
        "s3",
        endpoint_url=f"http://{VIRTUAL_DOMAIN}:{port}",
        aws_access_key_id=s3cluster.s3_access_key,
        aws_secret_access_key=s3cluster.s3_secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "virtual"}, proxies={"http": s3cluster.s3}, retries={"max_attempts": 1}),
    )
    path = client(s3cluster)
    path.create_bucket(Bucket="vhost")
    # Routed as path style would take it, `/img/a.jpg` would name bucket "img": this lands in "vhost".
    put = virtual.put_object(Bucket="vhost", Key="img/a.jpg", Body=b"virtual", ContentType="image/jpeg")
    file_id = put["ResponseMetadata"]["HTTPHeaders"]["x-fdfs-file-id"]
    assert path.get_object(Bucket="vhost", Key="img/a.jpg")["Body"].read() == b"virtual"
    assert on_storage(s3cluster, file_id).content == b"virtual"
    assert virtual.get_object(Bucket="vhost", Key="img/a.jpg")["Body"].read() == b"virtual"
    listed = virtual.list_objects_v2(Bucket="vhost", Prefix="img/")
    assert [o["Key"] for o in listed["Contents"]] == ["img/a.jpg"]
    virtual.head_bucket(Bucket="vhost")
    # Presigned URLs: V4 signs the path as sent (`/img/a.jpg`), V2 (boto3's default for us-east-1) the bucket too.
    v4 = boto3.client(
        "s3",
        endpoint_url=f"http://{VIRTUAL_DOMAIN}:{port}",
        aws_access_key_id=s3cluster.s3_access_key,
        aws_secret_access_key=s3cluster.s3_secret_key,
        region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "virtual"}),
    )
    for signer in (virtual, v4):
        url = signer.generate_presigned_url("get_object", Params={"Bucket": "vhost", "Key": "img/a.jpg"})
        assert urlsplit(url).hostname == f"vhost.{VIRTUAL_DOMAIN}"
        assert httpx.get(url, proxy=s3cluster.s3).content == b"virtual", url
    # A bad signature is refused in this style too.
    wrong = boto3.client(
        "s3",
        endpoint_url=f"http://{VIRTUAL_DOMAIN}:{port}",
        aws_access_key_id=s3cluster.s3_access_key,
        aws_secret_access_key="not-the-secret",
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "virtual"}, proxies={"http": s3cluster.s3}, retries={"max_attempts": 1}),
    )
    with pytest.raises(ClientError) as e:
        wrong.get_object(Bucket="vhost", Key="img/a.jpg")
    assert code(e) == "SignatureDoesNotMatch"
    with pytest.raises(ClientError) as e:
        virtual.get_object(Bucket="vhost", Key="img/missing.jpg")
    assert code(e) == "NoSuchKey"
    virtual.delete_object(Bucket="vhost", Key="img/a.jpg")
    assert path.list_objects_v2(Bucket="vhost").get("KeyCount") == 0
    virtual.delete_bucket(Bucket="vhost")
    assert "vhost" not in [b["Name"] for b in path.list_buckets()["Buckets"]]


def test_cors_for_pages_that_upload_by_presigned_put(s3cluster: LocalCluster) -> None:
    """A page of an origin in `s3_cors_origins` may PUT to a presigned URL with `fetch` (the browser's preflight
    is answered without a signature, whatever headers it asks for) and read the ETag and file ID back; other
    origins get no CORS headers."""
    s3 = client(s3cluster)
    s3.create_bucket(Bucket="cors")
    url = s3.generate_presigned_url(
        "put_object", Params={"Bucket": "cors", "Key": "up.jpg", "ContentType": "image/jpeg"}, ExpiresIn=60
    )
    asked = "content-type,x-amz-checksum-crc32"
    pre = httpx.options(
        url,
        headers={
            "Origin": SHOP_ORIGIN,
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": asked,
        },
    )
    assert pre.status_code == 200, pre.text
    assert pre.headers["access-control-allow-origin"] == SHOP_ORIGIN
    assert "PUT" in pre.headers["access-control-allow-methods"]
    assert pre.headers["access-control-allow-headers"] == asked
    put = httpx.put(url, content=b"jpeg bytes", headers={"Origin": SHOP_ORIGIN, "Content-Type": "image/jpeg"})
    assert put.status_code == 200, put.text
    assert put.headers["access-control-allow-origin"] == SHOP_ORIGIN
    exposed = put.headers["access-control-expose-headers"].lower()
    assert "etag" in exposed and "x-fdfs-file-id" in exposed
    assert s3.get_object(Bucket="cors", Key="up.jpg")["Body"].read() == b"jpeg bytes"
    other = httpx.options(url, headers={"Origin": "http://evil.test", "Access-Control-Request-Method": "PUT"})
    assert "access-control-allow-origin" not in other.headers
    s3.delete_object(Bucket="cors", Key="up.jpg")
    s3.delete_bucket(Bucket="cors")


def test_minio_client(s3cluster: LocalCluster) -> None:
    from minio import Minio  # signs every payload (x-amz-content-sha256) over plain HTTP

    m = Minio(
        s3cluster.s3.removeprefix("http://"),
        access_key=s3cluster.s3_access_key,
        secret_key=s3cluster.s3_secret_key,
        secure=False,
        region="us-east-1",
    )
    m.make_bucket("minio")
    assert m.bucket_exists("minio")
    data = b"m" * 300_000
    m.put_object("minio", "dir/m.bin", io.BytesIO(data), len(data), content_type="application/octet-stream")
    resp = m.get_object("minio", "dir/m.bin")
    try:
        assert resp.read() == data
    finally:
        resp.close()
        resp.release_conn()
    assert [o.object_name for o in m.list_objects("minio", prefix="dir/")] == ["dir/m.bin"]
    assert m.stat_object("minio", "dir/m.bin").size == len(data)
    # Over its part size minio-py sends a multipart upload.
    big = bytes(range(256)) * (12 * 1024 * 1024 // 256)
    m.put_object("minio", "dir/big.bin", io.BytesIO(big), len(big), part_size=5 << 20)
    resp = m.get_object("minio", "dir/big.bin")
    try:
        assert resp.read() == big
    finally:
        resp.close()
        resp.release_conn()
    m.remove_object("minio", "dir/big.bin")
    m.remove_object("minio", "dir/m.bin")
    m.remove_bucket("minio")


def test_multipart_uploads(s3cluster: LocalCluster) -> None:
    from boto3.s3.transfer import TransferConfig

    s3 = client(s3cluster)
    s3.create_bucket(Bucket="multi")
    # boto3's managed transfer: 8 MiB parts sent by 4 threads at once; the object is one FastDFS file.
    data = bytes((i * 7) % 256 for i in range(256)) * (70 * 1024 * 1024 // 256 // 2)  # 35 MiB
    cfg = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=4)
    s3.upload_fileobj(io.BytesIO(data), "multi", "big/video.bin", Config=cfg)
    head = s3.head_object(Bucket="multi", Key="big/video.bin")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-5"), head["ETag"]  # S3's multipart ETag form
    file_id = head["ResponseMetadata"]["HTTPHeaders"]["x-fdfs-file-id"]
    assert s3.get_object(Bucket="multi", Key="big/video.bin")["Body"].read() == data
    with httpx.stream("GET", f"{s3cluster.members[0].url}/{file_id}") as r:
        assert r.status_code == 200
        got = b"".join(r.iter_bytes())
    assert got == data

    # By hand: parts out of order, one sent twice, listed; a too-small middle part is refused; abort.
    up = s3.create_multipart_upload(Bucket="multi", Key="hand.bin", ContentType="application/x-test")
    uid = up["UploadId"]
    p2 = s3.upload_part(Bucket="multi", Key="hand.bin", UploadId=uid, PartNumber=2, Body=b"tail")
    p1 = s3.upload_part(Bucket="multi", Key="hand.bin", UploadId=uid, PartNumber=1, Body=b"a" * (5 << 20))
    p1 = s3.upload_part(Bucket="multi", Key="hand.bin", UploadId=uid, PartNumber=1, Body=b"b" * (5 << 20))
    parts = s3.list_parts(Bucket="multi", Key="hand.bin", UploadId=uid)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, 5 << 20), (2, 4)]
    listed = s3.list_multipart_uploads(Bucket="multi")["Uploads"]
    assert [u["UploadId"] for u in listed] == [uid]
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(
            Bucket="multi",
            Key="hand.bin",
            UploadId=uid,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": p2["ETag"]}]},
        )
    assert code(e) == "InvalidPart"
    done = s3.complete_multipart_upload(
        Bucket="multi",
        Key="hand.bin",
        UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": p1["ETag"]}, {"PartNumber": 2, "ETag": p2["ETag"]}]},
    )
    assert done["ETag"].strip('"').endswith("-2")
    got_obj = s3.get_object(Bucket="multi", Key="hand.bin")
    assert got_obj["ContentType"] == "application/x-test"
    assert got_obj["Body"].read() == b"b" * (5 << 20) + b"tail"
    with pytest.raises(ClientError) as e:
        s3.list_parts(Bucket="multi", Key="hand.bin", UploadId=uid)
    assert code(e) == "NoSuchUpload"

    small = s3.create_multipart_upload(Bucket="multi", Key="small.bin")["UploadId"]
    a = s3.upload_part(Bucket="multi", Key="small.bin", UploadId=small, PartNumber=1, Body=b"x")
    b = s3.upload_part(Bucket="multi", Key="small.bin", UploadId=small, PartNumber=2, Body=b"y")
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(
            Bucket="multi",
            Key="small.bin",
            UploadId=small,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": a["ETag"]}, {"PartNumber": 2, "ETag": b["ETag"]}]},
        )
    assert code(e) == "EntityTooSmall"
    s3.abort_multipart_upload(Bucket="multi", Key="small.bin", UploadId=small)
    assert "Uploads" not in s3.list_multipart_uploads(Bucket="multi")
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket="multi", Key="small.bin")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_copy_object(s3cluster: LocalCluster) -> None:
    s3 = client(s3cluster)
    s3.create_bucket(Bucket="copy-a")
    s3.create_bucket(Bucket="copy-b")
    s3.put_object(Bucket="copy-a", Key="src.txt", Body=b"copied bytes", ContentType="text/plain", Metadata={"k": "v"})
    r = s3.copy_object(Bucket="copy-b", Key="dst.txt", CopySource={"Bucket": "copy-a", "Key": "src.txt"})
    assert r["CopyObjectResult"]["ETag"] == s3.head_object(Bucket="copy-a", Key="src.txt")["ETag"]
    got = s3.get_object(Bucket="copy-b", Key="dst.txt")
    assert got["Body"].read() == b"copied bytes"
    assert got["Metadata"] == {"k": "v"} and got["ContentType"] == "text/plain"
    s3.copy_object(
        Bucket="copy-b",
        Key="dst.txt",
        CopySource="copy-a/src.txt",
        MetadataDirective="REPLACE",
        Metadata={"k": "new"},
        ContentType="text/x-new",
    )
    head = s3.head_object(Bucket="copy-b", Key="dst.txt")
    assert head["Metadata"] == {"k": "new"} and head["ContentType"] == "text/x-new"
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket="copy-b", Key="x", CopySource={"Bucket": "copy-a", "Key": "missing"})
    assert code(e) == "NoSuchKey"


def test_conditional_writes(s3cluster: LocalCluster) -> None:
    s3 = client(s3cluster)
    s3.create_bucket(Bucket="cond")
    first = s3.put_object(Bucket="cond", Key="lock", Body=b"mine", IfNoneMatch="*")
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket="cond", Key="lock", Body=b"theirs", IfNoneMatch="*")
    assert code(e) == "PreconditionFailed"
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket="cond", Key="lock", Body=b"theirs", IfMatch='"0123"')
    assert code(e) == "PreconditionFailed"
    s3.put_object(Bucket="cond", Key="lock", Body=b"mine, 2", IfMatch=first["ETag"])
    assert s3.get_object(Bucket="cond", Key="lock")["Body"].read() == b"mine, 2"


def test_upload_part_copy(s3cluster: LocalCluster) -> None:
    """UploadPartCopy: parts copied from other objects, whole or by a byte range, next to an uploaded part."""
    s3 = client(s3cluster)
    s3.create_bucket(Bucket="partcopy")
    src = bytes((i * 31) % 251 for i in range(7 << 20))
    s3.put_object(Bucket="partcopy", Key="src.bin", Body=src)
    uid = s3.create_multipart_upload(Bucket="partcopy", Key="dst.bin")["UploadId"]
    args = {"Bucket": "partcopy", "Key": "dst.bin", "UploadId": uid}
    whole = s3.upload_part_copy(**args, PartNumber=1, CopySource="partcopy/src.bin")["CopyPartResult"]
    assert whole["ETag"] == s3.head_object(Bucket="partcopy", Key="src.bin")["ETag"]
    ranged = s3.upload_part_copy(
        **args, PartNumber=2, CopySource={"Bucket": "partcopy", "Key": "src.bin"}, CopySourceRange="bytes=1000-5243879"
    )["CopyPartResult"]
    last = s3.upload_part(**args, PartNumber=3, Body=b"the end")
    with pytest.raises(ClientError) as e:
        s3.upload_part_copy(**args, PartNumber=4, CopySource="partcopy/src.bin", CopySourceRange=f"bytes=0-{len(src)}")
    assert code(e) == "InvalidRange"
    with pytest.raises(ClientError) as e:
        s3.upload_part_copy(**args, PartNumber=4, CopySource="partcopy/missing")
    assert code(e) == "NoSuchKey"
    parts = [{"PartNumber": 1, "ETag": whole["ETag"]}, {"PartNumber": 2, "ETag": ranged["ETag"]}]
    parts.append({"PartNumber": 3, "ETag": last["ETag"]})
    s3.complete_multipart_upload(**args, MultipartUpload={"Parts": parts})
    got = s3.get_object(Bucket="partcopy", Key="dst.bin")["Body"].read()
    assert got == src + src[1000:5243880] + b"the end"


def test_browser_form_upload_by_presigned_post(s3cluster: LocalCluster) -> None:
    s3 = client(s3cluster)
    s3.create_bucket(Bucket="forms")
    conditions: list[Any] = [["content-length-range", 1, 1000], ["starts-with", "$key", "uploads/"]]
    post = s3.generate_presigned_post(
        "forms",
        "uploads/${filename}",
        Fields={"Content-Type": "image/png"},
        Conditions=[*conditions, {"Content-Type": "image/png"}],
        ExpiresIn=60,
    )
    fields = post["fields"]
    # What a browser form sends: the fields, then the file.
    r = httpx.post(post["url"], data=fields, files={"file": ("cat.png", b"png bytes", "image/png")})
    assert r.status_code == 204, r.text
    got = s3.get_object(Bucket="forms", Key="uploads/cat.png")
    assert got["Body"].read() == b"png bytes" and got["ContentType"] == "image/png"
    assert is_file_id(r.headers["x-fdfs-file-id"])
    # The policy's conditions hold: too big, another key prefix, another content type, a tampered policy.
    r = httpx.post(post["url"], data=fields, files={"file": ("big.png", b"x" * 1001, "image/png")})
    assert r.status_code == 400 and b"EntityTooLarge" in r.content
    r = httpx.post(post["url"], data={**fields, "key": "elsewhere/x.png"}, files={"file": ("x.png", b"x", "image/png")})
    assert r.status_code == 403 and b"AccessDenied" in r.content
    r = httpx.post(
        post["url"], data={**fields, "Content-Type": "text/html"}, files={"file": ("x.png", b"x", "image/png")}
    )
    assert r.status_code == 403
    r = httpx.post(
        post["url"], data={**fields, "policy": fields["policy"][:-4] + "AAAA"}, files={"file": ("x.png", b"x", "a/b")}
    )
    assert r.status_code in (400, 403)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="forms")["Contents"]]
    assert keys == ["uploads/cat.png"], "nothing stored for a refused form"


def test_a_lost_namespace_is_rebuilt_from_the_storage_nodes(s3cluster: LocalCluster) -> None:
    from boto3.s3.transfer import TransferConfig

    s3 = client(s3cluster)
    s3.create_bucket(Bucket="rebuild")
    s3.put_object(Bucket="rebuild", Key="a/one.txt", Body=b"one", ContentType="text/plain", Metadata={"x": "1"})
    s3.put_object(Bucket="rebuild", Key="a/one.txt", Body=b"one again")  # overwritten: the newest file wins
    big = bytes(range(256)) * (12 * 1024 * 1024 // 256)
    cfg = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20)
    s3.upload_fileobj(io.BytesIO(big), "rebuild", "b/big.bin", Config=cfg)
    before = {o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket="rebuild")["Contents"]}
    assert before["b/big.bin"].endswith('-3"')

    # The gateway loses its disk: its namespace is gone, and it restarts (fdfs up restarts it).
    shutil.rmtree(s3cluster.data_dir / "s3")
    os.kill(s3cluster.gateway_pid(), signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        try:
            after = {o["Key"]: o["ETag"] for o in client(s3cluster).list_objects_v2(Bucket="rebuild")["Contents"]}
            break
        except (ClientError, EndpointConnectionError, KeyError):
            assert time.monotonic() < deadline, "the namespace was not rebuilt"
            time.sleep(0.5)
    assert after == before
    s3 = client(s3cluster)
    one = s3.get_object(Bucket="rebuild", Key="a/one.txt")
    assert one["Body"].read() == b"one again"
    assert s3.get_object(Bucket="rebuild", Key="b/big.bin")["Body"].read() == big


def files_on(c: LocalCluster) -> set[str]:
    """The files the storage node holds (its replication listing)."""
    r = httpx.get(f"{c.members[0].url}/v1/sync/files?limit=1000", headers={"x-fdfs-cluster-secret": c.secret})
    r.raise_for_status()
    return {f["id"] for f in r.json()["files"]}


def test_a_gateway_killed_between_storing_and_recording_leaves_no_orphan(fdfs_bin: str, data_root: Path) -> None:
    env = {
        "FDFS_TEST_S3_PAUSE_BEFORE_RECORD_MS": "3000",  # the window between the file and its key, made wide
        "FDFS_S3_COLLECT_INTERVAL_SECS": "1",
        "FDFS_S3_ORPHAN_GRACE_SECS": "6",  # longer than the window: a file about to get its key stays
        "FDFS_S3_UPLOAD_EXPIRY_SECS": "4",  # multipart uploads left unfinished are aborted after 4 s
    }
    with LocalCluster(fdfs_bin, data_root / "s3-orphans", groups=1, members=1, s3_port=0, env=env) as c:
        s3 = client(c)
        s3.create_bucket(Bucket="orphans")
        s3.put_object(Bucket="orphans", Key="kept.txt", Body=b"kept")
        kept = files_on(c)
        assert len(kept) == 2, "the object's file and the bucket's marker"

        def put_lost() -> None:
            with contextlib.suppress(Exception):
                s3.put_object(Bucket="orphans", Key="lost.txt", Body=b"lost")

        t = threading.Thread(target=put_lost)
        t.start()
        deadline = time.monotonic() + 10
        while len(files_on(c)) < len(kept) + 1:  # the file is stored; its key is not recorded yet
            assert time.monotonic() < deadline
            time.sleep(0.1)
        os.kill(c.gateway_pid(), signal.SIGKILL)
        t.join()
        assert len(files_on(c)) == len(kept) + 1, "the orphan is on the storage node"
        # The restarted gateway's collector removes it once past its grace; the recorded object stays.
        deadline = time.monotonic() + 60
        while files_on(c) != kept:
            assert time.monotonic() < deadline, "the orphan was not collected"
            time.sleep(0.5)
        s3 = client(c)
        assert s3.get_object(Bucket="orphans", Key="kept.txt")["Body"].read() == b"kept"
        with pytest.raises(ClientError) as e:
            s3.head_object(Bucket="orphans", Key="lost.txt")
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404

        # A multipart upload a client never completed nor aborted: aborted by the collector, its part deleted.
        up = s3.create_multipart_upload(Bucket="orphans", Key="abandoned.bin")
        s3.upload_part(Bucket="orphans", Key="abandoned.bin", UploadId=up["UploadId"], PartNumber=1, Body=b"p" * 1000)
        assert len(files_on(c)) == len(kept) + 1, "the part is a file"
        deadline = time.monotonic() + 60
        while s3.list_multipart_uploads(Bucket="orphans").get("Uploads") or files_on(c) != kept:
            assert time.monotonic() < deadline, "the abandoned upload was not expired"
            time.sleep(0.5)
        with pytest.raises(ClientError) as e:
            s3.list_parts(Bucket="orphans", Key="abandoned.bin", UploadId=up["UploadId"])
        assert code(e) == "NoSuchUpload"
