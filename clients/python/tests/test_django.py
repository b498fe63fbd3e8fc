"""FdfsStorage: Django's storage contract, a model through a ModelForm and the admin, migrations."""

from __future__ import annotations

import io
import time
import zlib
from datetime import datetime, timezone

import httpx
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage, storages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.test import Client as DjangoClient
from django.test import override_settings
from django.utils.datastructures import MultiValueDict
from PIL import Image

from fdfs_http import FdfsError, decode, is_file_id
from fdfs_http.django import FdfsStorage
from fdfs_http.testing import LocalCluster

from .conftest import API_KEY, SECRET, TOKEN_TTL
from .testapp.forms import DocumentForm
from .testapp.models import Document


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 90)).save(buf, format="PNG")
    return buf.getvalue()


def fetch(url: str) -> bytes:
    resp = httpx.get(url, follow_redirects=True)
    assert resp.status_code == 200, (url, resp.status_code)
    return resp.content


def wait_gone(storage: FdfsStorage, name: str, timeout: float = 30.0) -> None:
    """Wait until no member answers for `name`: a delete reaches the group's other member through replication."""
    deadline = time.monotonic() + timeout
    while storage.exists(name):
        assert time.monotonic() < deadline, f"{name} still exists {timeout} s after its delete"
        time.sleep(0.05)


@pytest.fixture()
def storage(cluster: LocalCluster) -> FdfsStorage:
    s = storages["default"]
    assert isinstance(s, FdfsStorage) and s.gateway == cluster.gateway
    return s


def test_storage_contract(storage: FdfsStorage) -> None:
    data = b"django storage contract\n" * 1000
    before = int(datetime.now(timezone.utc).timestamp())
    name = storage.save("products/mug.jpg", ContentFile(data))
    assert is_file_id(name) and name.endswith(".jpg")
    assert storage.exists(name)
    assert storage.size(name) == len(data)
    with storage.open(name) as f:
        assert f.size == len(data)  # Django's File.size: seek to the end and back (no local path involved)
        assert f.read() == data
        assert b"".join(f.chunks(chunk_size=1000)) == data  # chunks() seeks to 0 first
    assert storage.url(name) == f"{storage.gateway}/{name}"
    assert fetch(storage.url(name)) == data
    created = storage.get_created_time(name)
    assert created.tzinfo is not None and before - 2 <= created.timestamp() <= before + 60
    assert storage.get_modified_time(name) == created
    assert storage.client.meta(name)["filename"] == "products/mug.jpg"
    # The name asked for is always available: no network call decides it.
    assert storage.get_available_name("products/mug.jpg") == "products/mug.jpg"

    storage.delete(name)
    wait_gone(storage, name)
    storage.delete(name)  # a missing file is not an error
    with pytest.raises(FileNotFoundError):
        storage.open(name)
    # A name that is not a file ID (what Django asked for before the upload) does not exist.
    assert not storage.exists("products/mug.jpg")
    storage.delete("products/mug.jpg")

    with pytest.raises(NotImplementedError, match="no directory listing"):
        storage.listdir("")
    with pytest.raises(NotImplementedError, match="no local filesystem path"):
        storage.path(name)
    with pytest.raises(ValueError):
        storage.open(name, "wb")


def test_created_time_is_naive_without_use_tz(storage: FdfsStorage) -> None:
    name = storage.save("a.txt", ContentFile(b"tz"))
    with override_settings(USE_TZ=False):
        assert storage.get_created_time(name).tzinfo is None
    assert storage.get_created_time(name) == decode(name).created_at


def test_slave_files_for_thumbnails(storage: FdfsStorage) -> None:
    name = storage.save("products/big.png", ContentFile(png(64, 48)))
    thumb = png(16, 12)
    slave = storage.save_slave(name, "_16x12", ContentFile(thumb))
    assert slave == storage.slave_name(name, "_16x12")
    assert storage.size(slave) == len(thumb)
    assert fetch(storage.url(slave)) == thumb


def test_url_with_base_url_and_anti_leech_token_needs_no_network() -> None:
    s = FdfsStorage(
        gateway="http://127.0.0.1:9",  # nothing listens: url() must not ask
        base_url="https://cdn.example.com/",
        anti_leech_secret="s3cret",
        token_ttl=600,
    )
    fid = "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg"
    url = s.url(fid)
    assert url.startswith(f"https://cdn.example.com/{fid}?token=")
    assert url == s.url(fid)


def test_storage_deconstructs_for_migrations() -> None:
    s = FdfsStorage(gateway="http://gw:8080", group="group2", token_ttl=60)
    path, args, kwargs = s.deconstruct()  # type: ignore[attr-defined]
    assert path == "fdfs_http.django.FdfsStorage"
    assert args == () and kwargs == {"gateway": "http://gw:8080", "group": "group2", "token_ttl": 60}


@pytest.mark.django_db
def test_model_form_stores_file_ids_and_reads_image_size_back(cluster: LocalCluster) -> None:
    image = png(37, 21)
    doc_bytes = b"%PDF-1.4 not really\n" * 500
    form = DocumentForm(
        data={"title": "first"},
        files=MultiValueDict(
            {
                "attachment": [SimpleUploadedFile("manual.pdf", doc_bytes, "application/pdf")],
                "image": [SimpleUploadedFile("mug.png", image, "image/png")],
            }
        ),
    )
    assert form.is_valid(), form.errors
    saved = form.save()
    assert saved.attachment.storage is default_storage or isinstance(saved.attachment.storage, FdfsStorage)

    doc = Document.objects.get(pk=saved.pk)
    assert is_file_id(doc.attachment.name) and doc.attachment.name.endswith(".pdf")
    assert is_file_id(doc.image.name) and doc.image.name.endswith(".png")
    # Width and height are read back from the cluster (the field stores only the ID).
    assert (doc.image.width, doc.image.height) == (37, 21)
    assert fetch(doc.attachment.url) == doc_bytes
    assert fetch(doc.image.url) == image
    assert doc.attachment.size == len(doc_bytes)


@pytest.mark.django_db
def test_admin_add_view_uploads_through_a_multipart_post(admin_client: DjangoClient) -> None:
    image = png(50, 40)
    big = bytes(range(256)) * 1024  # 256 KiB: above FILE_UPLOAD_MAX_MEMORY_SIZE, so from a temp file
    resp = admin_client.post(
        "/admin/testapp/document/add/",
        {
            "title": "from the admin",
            "attachment": SimpleUploadedFile("big.bin", big, "application/octet-stream"),
            "image": SimpleUploadedFile("photo.png", image, "image/png"),
        },
    )
    assert resp.status_code == 302, resp.content[:2000]
    doc = Document.objects.get(title="from the admin")
    assert is_file_id(doc.attachment.name) and is_file_id(doc.image.name)
    assert decode(doc.attachment.name).crc32 == zlib.crc32(big)
    assert (doc.image.width, doc.image.height) == (50, 40)
    assert fetch(doc.attachment.url) == big
    assert fetch(doc.image.url) == image
    # The change page links the file by its URL.
    page = admin_client.get(f"/admin/testapp/document/{doc.pk}/change/")
    assert doc.image.url.encode() in page.content


@pytest.mark.django_db
def test_makemigrations_check_finds_nothing_to_do() -> None:
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


def test_api_key_group_and_signed_urls_against_a_secured_cluster(secured: LocalCluster) -> None:
    node = secured.members[0].url
    s = FdfsStorage(
        gateway=secured.gateway,
        api_key=API_KEY,
        group=secured.members[0].group,
        base_url=node,
        anti_leech_secret=SECRET,
        token_ttl=TOKEN_TTL,  # the nodes' token_ttl_secs: the link is signed at most TTL/2 ago
        timeout=60,
    )
    data = b"signed bytes" * 100
    name = s.save("private/report.txt", ContentFile(data))
    assert name.startswith(secured.members[0].group + "/")
    url = s.url(name)
    assert url.startswith(f"{node}/{name}?token=")
    assert fetch(url) == data
    assert httpx.get(f"{node}/{name}").status_code in (401, 403)
    s.delete(name)
    wait_gone(s, name)
    with pytest.raises(FdfsError) as e:
        FdfsStorage(gateway=secured.gateway).save("x.txt", ContentFile(b"no key"))
    assert e.value.status == 401
