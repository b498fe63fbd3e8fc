"""The example shop on django-storages' `S3Storage` against the cluster's S3 door (`fdfs up --s3-port 0`,
`shop.settings_s3`): add a product with a picture in the admin, see it on the list page, fetch it by the
presigned URL the page shows, and find the same bytes on a storage node under the object's file ID."""

from __future__ import annotations

import io
import os
import re
import tempfile
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest
from botocore.client import Config
from fdfs_http import is_file_id
from fdfs_http.testing import LocalCluster, fdfs_binary
from PIL import Image

from tests.test_shop import REPO, csrf_of, running_shop


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    fdfs = str(fdfs_binary(REPO))
    if not os.access(fdfs, os.X_OK):
        pytest.fail(f"no fdfs binary at {fdfs}: run `cargo build -p fdfs` first (or set FDFS_BIN)")
    with (
        tempfile.TemporaryDirectory(prefix="fdfs-shop-s3-") as d,
        LocalCluster(fdfs, d, groups=1, members=2, s3_port=0) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def s3(cluster: LocalCluster) -> Any:
    client = boto3.client(
        "s3",
        endpoint_url=cluster.s3,
        aws_access_key_id=cluster.s3_access_key,
        aws_secret_access_key=cluster.s3_secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )
    client.create_bucket(Bucket="shop")
    return client


@pytest.fixture(scope="module")
def shop(cluster: LocalCluster, s3: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "shop.settings_s3",
        "SHOP_S3_ENDPOINT": cluster.s3,
        "SHOP_S3_ACCESS_KEY": cluster.s3_access_key,
        "SHOP_S3_SECRET_KEY": cluster.s3_secret_key,
        "SHOP_S3_BUCKET": "shop",
        "FDFS_GATEWAY": cluster.gateway,
        "SHOP_DB": str(tmp_path_factory.mktemp("shop-s3") / "db.sqlite3"),
        "DJANGO_SUPERUSER_PASSWORD": "shop-admin-pw",
        "PYTHONUNBUFFERED": "1",
    }
    with running_shop(env, tmp_path_factory.mktemp("shop-s3-log")) as url:
        yield url


def test_a_product_picture_through_s3storage(shop: str, cluster: LocalCluster, s3: Any) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (640, 480), (30, 160, 90)).save(buf, format="JPEG")
    picture = buf.getvalue()
    with httpx.Client(base_url=shop, timeout=30) as browser:
        login = browser.get("/admin/login/")
        resp = browser.post(
            "/admin/login/?next=/admin/",
            data={"username": "admin", "password": "shop-admin-pw", "csrfmiddlewaretoken": csrf_of(login.text)},
        )
        assert resp.status_code == 302, resp.text[:500]
        add = browser.get("/admin/catalog/product/add/")
        resp = browser.post(
            "/admin/catalog/product/add/",
            data={"name": "Green mug", "price": "9.00", "csrfmiddlewaretoken": csrf_of(add.text)},
            files={"image": ("green mug.jpg", picture, "image/jpeg")},
        )
        assert resp.status_code == 302, resp.text[:2000]
        page = browser.get("/")
    assert page.status_code == 200 and "Green mug" in page.text
    m = re.search(r'<img src="([^"]+)"[^>]* alt="Green mug" width="640" height="480"', page.text)
    assert m, page.text
    src = m.group(1).replace("&amp;", "&")
    # A presigned URL of the S3 door: the picture's bytes, without any other credential.
    assert src.startswith(cluster.s3 + "/shop/products/"), src
    got = httpx.get(src, timeout=30)
    assert got.status_code == 200 and got.content == picture
    # The object is one FastDFS file that a storage node serves under its ID.
    key = src[len(cluster.s3 + "/shop/") :].split("?")[0]
    head = s3.head_object(Bucket="shop", Key=httpx.URL("/" + key).path[1:])
    file_id = head["ResponseMetadata"]["HTTPHeaders"]["x-fdfs-file-id"]
    assert is_file_id(file_id)
    assert httpx.get(f"{cluster.members[0].url}/{file_id}", timeout=30).content == picture
