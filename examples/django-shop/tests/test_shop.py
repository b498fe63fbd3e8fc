"""The example shop end to end, as its README tells a person to run it: a real `fdfs up` cluster, `manage.py
migrate`, `createsuperuser`, `runserver`; then over HTTP: log in to the admin, add a product with a picture,
see it on the list page, and fetch the picture from the cluster by the URL the page shows."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fdfs_http import decode, is_file_id
from fdfs_http.testing import LocalCluster, fdfs_binary
from PIL import Image

SHOP = Path(__file__).resolve().parents[1]
REPO = SHOP.parents[1]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    fdfs = str(fdfs_binary(REPO))
    if not os.access(fdfs, os.X_OK):
        pytest.fail(f"no fdfs binary at {fdfs}: run `cargo build -p fdfs` first (or set FDFS_BIN)")
    with tempfile.TemporaryDirectory(prefix="fdfs-shop-") as d, LocalCluster(fdfs, d, groups=1, members=2) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=SHOP, env=env, check=True, capture_output=True)


@pytest.fixture(scope="module")
def shop(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {
        **os.environ,
        "FDFS_GATEWAY": cluster.gateway,
        "SHOP_DB": str(tmp_path_factory.mktemp("shop") / "db.sqlite3"),
        "DJANGO_SUPERUSER_PASSWORD": "shop-admin-pw",
        "PYTHONUNBUFFERED": "1",
    }
    manage(env, "migrate", "--noinput")
    manage(env, "createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.com")
    port = free_port()
    log = tmp_path_factory.mktemp("shop-log") / "runserver.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
            cwd=SHOP,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("runserver did not start:\n" + log.read_text(errors="replace"))
            time.sleep(0.2)
        yield url
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert m, "no CSRF token in the form"
    return m.group(1)


def test_add_a_product_in_the_admin_and_see_it_on_the_list_page(shop: str, cluster: LocalCluster) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (120, 80), (10, 120, 200)).save(buf, format="JPEG")
    picture = buf.getvalue()

    with httpx.Client(base_url=shop, timeout=30) as browser:
        login = browser.get("/admin/login/")
        resp = browser.post(
            "/admin/login/?next=/admin/",
            data={"username": "admin", "password": "shop-admin-pw", "csrfmiddlewaretoken": csrf_of(login.text)},
        )
        assert resp.status_code == 302, resp.text[:500]

        add = browser.get("/admin/catalog/product/add/")
        assert add.status_code == 200
        resp = browser.post(
            "/admin/catalog/product/add/",
            data={"name": "Blue mug", "price": "12.50", "csrfmiddlewaretoken": csrf_of(add.text)},
            files={"image": ("mug.jpg", picture, "image/jpeg")},
        )
        assert resp.status_code == 302, resp.text[:2000]

        page = browser.get("/")
        assert page.status_code == 200 and "Blue mug" in page.text
        m = re.search(r'<img src="([^"]+)" alt="Blue mug" width="120" height="80"', page.text)
        assert m, page.text
        src = m.group(1)

    assert src.startswith(cluster.gateway + "/")
    file_id = src[len(cluster.gateway) + 1 :]
    assert is_file_id(file_id) and file_id.endswith(".jpg")
    assert decode(file_id).size == len(picture)
    got = httpx.get(src, follow_redirects=True, timeout=30)
    assert got.status_code == 200 and got.content == picture
    assert got.headers["content-type"] == "image/jpeg"
