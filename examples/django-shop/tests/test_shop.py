"""The example shop end to end, as its README tells a person to run it: a real `fdfs up` cluster, `manage.py
migrate`, `createsuperuser`, `runserver`; then over HTTP: log in to the admin, add a product with a picture,
see it on the list page, and fetch the picture from the cluster by the URL the page shows."""

from __future__ import annotations

import contextlib
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


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=SHOP, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def env(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    media = tmp_path_factory.mktemp("media")
    return {
        **os.environ,
        "FDFS_GATEWAY": cluster.gateway,
        "FDFS_LEGACY_BASE_URL": "/media/",  # pictures from before fdfs, until fdfs_migrate_media moves them
        "SHOP_MEDIA_ROOT": str(media),
        "SHOP_DB": str(tmp_path_factory.mktemp("shop") / "db.sqlite3"),
        "DJANGO_SUPERUSER_PASSWORD": "shop-admin-pw",
        "PYTHONUNBUFFERED": "1",
    }


@contextlib.contextmanager
def running_shop(env: dict[str, str], logs: Path) -> Iterator[str]:
    """The shop as its README runs it: migrate, createsuperuser (admin / DJANGO_SUPERUSER_PASSWORD), runserver on
    a free port (its output in `logs`); yields its URL and stops it."""
    manage(env, "migrate", "--noinput")
    manage(env, "createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.com")
    port = free_port()
    log = logs / "runserver.log"
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


@pytest.fixture(scope="module")
def shop(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_shop(env, tmp_path_factory.mktemp("shop-log")) as url:
        yield url


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert m, "no CSRF token in the form"
    return m.group(1)


def fetch_image(url: str) -> Image.Image:
    got = httpx.get(url, follow_redirects=True, timeout=30)
    assert got.status_code == 200, url
    img = Image.open(io.BytesIO(got.content))
    img.load()
    return img


def test_add_a_product_in_the_admin_and_see_it_on_the_list_page(shop: str, cluster: LocalCluster) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (1200, 800), (10, 120, 200)).save(buf, format="JPEG")
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
        m = re.search(
            r'<img src="([^"]+)" srcset="([^"]+)" sizes="196px" alt="Blue mug" width="1200" height="800"', page.text
        )
        assert m, page.text
        src, srcset = m.group(1), m.group(2)
        webp = re.search(r'<source type="image/webp" srcset="([^"]+)"', page.text)
        assert webp, page.text
        changelist = browser.get("/admin/catalog/product/")
        assert changelist.status_code == 200

    # The stored picture is the master; the page shows only thumbnails of it.
    assert src.startswith(cluster.gateway + "/") and src.endswith("_300x300.jpg")
    master = src[len(cluster.gateway) + 1 :].replace("_300x300", "")
    assert is_file_id(master) and decode(master).size == len(picture)
    got = httpx.get(f"{cluster.gateway}/{master}", follow_redirects=True, timeout=30)
    assert got.status_code == 200 and got.content == picture and got.headers["content-type"] == "image/jpeg"
    img_urls = re.findall(r'<img src="([^"]+)"', page.text) + re.findall(r"(\S+) \d+w", page.text)
    assert img_urls and f"{cluster.gateway}/{master}" not in img_urls

    assert fetch_image(src).size == (300, 200)
    for srcs, fmt in [(srcset, "JPEG"), (webp.group(1), "WEBP")]:
        candidates = [c.split() for c in srcs.split(", ")]
        assert [w for _, w in candidates] == ["150w", "300w", "600w"]
        for url, w in candidates:
            img = fetch_image(url)
            assert (img.format, img.size) == (fmt, (int(w[:-1]), int(w[:-1]) * 2 // 3))

    # The admin's list shows the 150x150 thumbnail.
    thumbs = re.findall(r'<img src="([^"]+)" alt="" style="max-height:60px">', changelist.text)
    assert thumbs == [f"{cluster.gateway}/{master[:-4]}_150x150.jpg"]
    assert fetch_image(thumbs[0]).size == (150, 100)


def test_an_old_picture_shows_until_it_is_migrated_then_its_thumbnails(
    shop: str, env: dict[str, str], cluster: LocalCluster
) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (900, 600), (200, 40, 40)).save(buf, format="JPEG")
    old = Path(env["SHOP_MEDIA_ROOT"], "products", "old-mug.jpg")
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_bytes(buf.getvalue())
    manage(
        env,
        "shell",
        "-c",
        "from catalog.models import Product; "
        "Product.objects.create(name='Old mug', price='3.00', image='products/old-mug.jpg', image_width=900, "
        "image_height=600)",
    )
    page = httpx.get(shop + "/", timeout=30)
    assert page.status_code == 200
    assert '<img src="/media/products/old-mug.jpg" srcset="/media/products/old-mug.jpg"' in page.text

    out = manage(env, "fdfs_migrate_media", "--journal", str(old.parent / "journal.jsonl"))
    assert "moved 1, skipped " in out and "missing 0, failed 0; uploaded 1 file(s)" in out, out
    page = httpx.get(shop + "/", timeout=30)
    m = re.search(r'<img src="([^"]+)" srcset="[^"]+" sizes="196px" alt="Old mug"', page.text)
    assert m and m.group(1).startswith(cluster.gateway + "/") and m.group(1).endswith("_300x300.jpg"), page.text
    assert fetch_image(m.group(1)).size == (300, 200)
