"""`{% load fdfs %}` and the storage's thumbnail helpers: URLs built without a network call that serve images of
the right size; errors that say what to do; legacy names; `?attname=`."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import httpx
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.template import Context, Template
from django.test import override_settings
from PIL import Image

from fdfs_http import Client, FdfsError, InvalidFileId, NotFound, is_file_id
from fdfs_http.django import FdfsStorage
from fdfs_http.testing import LocalCluster

from .testapp.models import Document, Photo


def jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 100, 20)).save(buf, format="JPEG")
    return buf.getvalue()


def image_at(url: str) -> Image.Image:
    resp = httpx.get(url, follow_redirects=True, timeout=60)
    assert resp.status_code == 200, (url, resp.text)
    img = Image.open(io.BytesIO(resp.content))
    img.load()
    return img


def render(template: str, **context: object) -> str:
    return Template("{% load fdfs %}" + template).render(Context(context))


@pytest.fixture()
def storage(cluster: LocalCluster) -> FdfsStorage:
    s = storages["default"]
    assert isinstance(s, FdfsStorage)
    return s


def test_filters_and_srcset_give_thumbnails_of_the_right_size(storage: FdfsStorage) -> None:
    name = storage.save("products/big.jpg", ContentFile(jpeg(1200, 800)))
    photo = Photo(caption="big", picture=name)  # a field file, as a template gets it

    out = render(
        '{{ p.picture|thumbnail:"300x300" }}|{{ p.picture|thumbnail_webp:"150x150" }}|'
        '{{ p.picture|thumbnail:"600x600,webp" }}|{% fdfs_srcset p.picture "150x150 300x300 600x600" %}',
        p=photo,
    )
    t300, webp150, webp600, srcset = out.split("|")
    assert t300 == storage.url(storage.thumbnail_name(name, "300x300"))
    assert t300.startswith(storage.base_url + "/") and "_300x300.jpg" in t300
    img = image_at(t300)
    assert (img.format, img.size) == ("JPEG", (300, 200))
    img = image_at(webp150)
    assert (img.format, img.size) == ("WEBP", (150, 100))
    assert image_at(webp600).size == (600, 400)

    candidates = [c.strip().split(" ") for c in srcset.split(",")]
    assert [w for _, w in candidates] == ["150w", "300w", "600w"]
    for url, w in candidates:
        width = int(w[:-1])
        assert image_at(url).size == (width, width * 2 // 3)
    # The default sizes are FDFS_THUMBNAIL_SIZES; fmt="webp" gives WebP.
    assert render('{% fdfs_srcset p.picture fmt="webp" %}', p=photo).count(".webp ") == 3
    # The field helper and a plain stored name work the same.
    assert render('{{ name|thumbnail:"300x300" }}', name=name) == t300
    assert storage.thumbnail_url(name, "300x300") == t300
    # No file, no URL (not an exception in the page).
    assert render('[{{ p.picture|thumbnail:"300x300" }}][{% fdfs_srcset p.picture %}]', p=Photo()) == "[][]"


def test_a_size_that_is_not_configured_says_which_are(storage: FdfsStorage, client: Client) -> None:
    name = storage.save("products/small.jpg", ContentFile(jpeg(200, 100)))
    with pytest.raises(ValueError, match=r"'123x123' is not in FDFS_THUMBNAIL_SIZES \(150x150, 300x300, 600x600\)"):
        render('{{ n|thumbnail:"123x123" }}', n=name)
    with override_settings(FDFS_THUMBNAIL_SIZES="64x64 150x150"):
        s = storages["default"]
        assert isinstance(s, FdfsStorage) and s.thumbnail_sizes == ("64x64", "150x150")
        assert "_64x64.jpg" in render('{{ n|thumbnail:"64x64" }}', n=name)
    # The cluster answers a distinct code listing its sizes.
    with pytest.raises(NotFound) as e:
        client.download(storage.thumbnail_name(name, "150x150").replace("_150x150", "_123x123"))
    assert e.value.code == "thumbnail_size_not_configured"
    assert "150x150, 300x300, 600x600" in e.value.message


def test_sizes_configured_in_the_cluster_and_in_django(fdfs_bin: str, data_root: Path) -> None:
    sizes = ["64x64", "100x100c"]
    with (
        contextlib.ExitStack() as stack,
        LocalCluster(fdfs_bin, data_root / "sizes", groups=1, members=1, thumbnail_sizes=sizes) as c,
    ):
        assert len(c.secret) >= 16 and os.stat(c.data_dir / "cluster-secret").st_mode & 0o777 == 0o600
        backend = {"BACKEND": "fdfs_http.django.FdfsStorage", "OPTIONS": {"gateway": c.gateway}}
        stack.enter_context(override_settings(STORAGES={"default": backend}, FDFS_THUMBNAIL_SIZES=sizes))
        s = storages["default"]
        assert isinstance(s, FdfsStorage)
        name = s.save("products/wide.jpg", ContentFile(jpeg(400, 200)))
        assert image_at(render('{{ n|thumbnail:"64x64" }}', n=name)).size == (64, 32)
        assert image_at(render('{{ n|thumbnail:"100x100c,webp" }}', n=name)).size == (100, 100)
        assert render("{% fdfs_srcset n %}", n=name).endswith("_100x100c.jpg 100w")
        with pytest.raises(NotFound) as e:
            s.client.download(s.thumbnail_name(name, "64x64").replace("_64x64", "_150x150"))
        assert e.value.code == "thumbnail_size_not_configured" and "100x100c, 64x64" in e.value.message


def test_thumbnails_of_a_non_image_are_skipped_and_say_why(client: Client) -> None:
    r = client.upload(b"just text", filename="notes.txt", thumbnails=["150x150", "300x300"])
    assert is_file_id(r["file_id"])
    thumbs = r.get("thumbnails", [])
    assert [t["size"] for t in thumbs] == ["150x150", "300x300"]
    for t in thumbs:
        assert t.get("skipped") is True
        assert t.get("error", {}).get("code") == "not_an_image"


def test_upload_params_render_thumbnails_at_upload(cluster: LocalCluster) -> None:
    s = FdfsStorage(gateway=cluster.gateway, upload_params={"thumbnails": ["150x150"], "meta": {"shop": "demo"}})
    name = s.save("products/eager.jpg", ContentFile(jpeg(400, 400)))
    meta = s.client.meta(name)
    assert meta == {"shop": "demo", "filename": "products/eager.jpg"}
    assert s.client.exists(s.thumbnail_name(name, "150x150"))


def test_thumbnails_skipped_at_upload_are_logged(cluster: LocalCluster, caplog: pytest.LogCaptureFixture) -> None:
    s = FdfsStorage(gateway=cluster.gateway, upload_params={"thumbnails": ["150x150"]})
    with caplog.at_level("WARNING", logger="fdfs_http.django"):
        name = s.save("docs/readme.txt", ContentFile(b"not a picture"))
    assert is_file_id(name)
    assert f"thumbnail 150x150 of docs/readme.txt ({name}) not rendered" in caplog.text
    assert "not_an_image" in caplog.text


def test_per_file_headers_are_refused_with_what_to_do(cluster: LocalCluster) -> None:
    # fdfs serves every file ID alike (nodes, nginx, CDNs): no per-file headers, said at start and by the gateway.
    with pytest.raises(ImproperlyConfigured, match=r"FDFS_UPLOAD_PARAMS.*extension.*attname"):
        FdfsStorage(gateway=cluster.gateway, upload_params={"content_type": "text/csv"})
    resp = httpx.put(f"{cluster.gateway}/upload/report.csv", params={"cache_control": "no-cache"}, content=b"a,b\n")
    assert resp.status_code == 400
    assert "attname" in resp.json()["error"]["message"]


def test_legacy_names_use_the_legacy_base_url(storage: FdfsStorage) -> None:
    legacy = "products/old mug.jpg"
    doc = Document(title="old", attachment="docs/manual.pdf", image=legacy)
    # Without a legacy setting, the error says what to do.
    with pytest.raises(InvalidFileId, match=r"FDFS_LEGACY_BASE_URL.*fdfs_migrate_media"):
        render("{{ d.image.url }}", d=doc)
    with override_settings(FDFS_LEGACY_BASE_URL="https://old.example.com/media/"):
        out = render('{{ d.image.url }}|{{ d.image|thumbnail:"300x300" }}|{% fdfs_srcset d.image %}', d=doc)
        assert out == "|".join(["https://old.example.com/media/products/old%20mug.jpg"] * 3)
    with override_settings(FDFS_LEGACY_BASE_URL="/media"):
        assert render("{{ d.attachment.url }}", d=doc) == "/media/docs/manual.pdf"


def test_legacy_names_are_read_from_the_legacy_storage(tmp_path: Path) -> None:
    (tmp_path / "products").mkdir()
    (tmp_path / "products" / "old.jpg").write_bytes(b"old bytes")
    with override_settings(MEDIA_ROOT=str(tmp_path), FDFS_LEGACY_BASE_URL="/media/"):
        s = storages["default"]  # the default: a FileSystemStorage on MEDIA_ROOT
        assert isinstance(s, FdfsStorage)
        assert s.exists("products/old.jpg") and not s.exists("products/new.jpg")
        assert s.size("products/old.jpg") == 9
        with s.open("products/old.jpg") as f:
            assert f.read() == b"old bytes"
        assert s.get_modified_time("products/old.jpg").timestamp() > 0
        s.delete("products/old.jpg")
        assert not (tmp_path / "products" / "old.jpg").exists()

    (tmp_path / "a.txt").write_bytes(b"a")
    old = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(tmp_path), "base_url": "https://old.example.com/files/"},
    }
    fdfs = {"BACKEND": "fdfs_http.django.FdfsStorage", "OPTIONS": {"legacy_storage": "old"}}
    with override_settings(STORAGES={"default": fdfs, "old": old}):
        s = storages["default"]
        assert isinstance(s, FdfsStorage)
        assert s.url("a.txt") == "https://old.example.com/files/a.txt" and s.size("a.txt") == 1
    # Without a legacy setting a legacy name exists nowhere, and reading it says what to do.
    s = FdfsStorage(gateway="http://127.0.0.1:9")
    assert not s.exists("a.txt")
    with pytest.raises(InvalidFileId, match="FDFS_LEGACY_BASE_URL"):
        s.open("a.txt")


def test_attname_gives_content_disposition(storage: FdfsStorage, cluster: LocalCluster) -> None:
    name = storage.save("docs/report.pdf", ContentFile(b"%PDF-1.4 report\n"))
    url = storage.url(name, attname="Quarterly report.pdf")
    assert url == f"{storage.base_url}/{name}?attname=Quarterly%20report.pdf"
    want = "attachment; filename=\"Quarterly report.pdf\"; filename*=UTF-8''Quarterly%20report.pdf"
    resp = httpx.get(url, follow_redirects=True)  # through the gateway's redirect
    assert resp.status_code == 200 and resp.headers["content-disposition"] == want
    node = next(m for m in cluster.members if m.group == name.split("/")[0])
    resp = httpx.get(f"{node.url}/{name}", params={"attname": "photo.jpg"})
    assert resp.headers["content-disposition"] == "attachment; filename=\"photo.jpg\"; filename*=UTF-8''photo.jpg"
    assert "content-disposition" not in httpx.get(storage.url(name), follow_redirects=True).headers


def test_every_error_names_the_method_and_url(client: Client) -> None:
    with pytest.raises(FdfsError) as e:
        client.info("group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg")
    assert e.value.method == "GET" and e.value.url is not None and e.value.url.startswith(client.gateway)
    assert re.match(r"GET http://\S+/info/group1/M00/", str(e.value))
    with Client("http://127.0.0.1:9") as dead, pytest.raises(FdfsError) as e:
        dead.upload(b"x", filename="a.txt")
    assert str(e.value).startswith("PUT http://127.0.0.1:9/upload/a.txt: ")


def test_srcset_describes_sizes_with_a_width() -> None:
    fid = "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg"
    with override_settings(FDFS_THUMBNAIL_SIZES="150x150 0x300 800x0"):
        s = storages["default"]
        assert isinstance(s, FdfsStorage)
        assert render("{% fdfs_srcset n %}", n=fid) == f"{s.thumbnail_url(fid, '150x150')} 150w, " + (
            f"{s.thumbnail_url(fid, '800x0')} 800w"
        )
        with pytest.raises(ValueError, match="'0x300' has no width"):
            render('{% fdfs_srcset n "150x150 0x300" %}', n=fid)
