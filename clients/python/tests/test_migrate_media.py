"""`manage.py fdfs_migrate_media`: a MEDIA_ROOT of 100 files referenced by two models moves into the cluster,
survives a SIGKILL midway (rerun: every file uploaded once, every row rewritten once, bytes equal), and pages
render while the rows are half legacy names, half file IDs."""

from __future__ import annotations

import functools
import http.server
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from django.db import connection
from django.template import Context, Template
from django.test import override_settings
from PIL import Image

from fdfs_http import Client, decode, is_file_id
from fdfs_http.testing import LocalCluster

from .testapp.models import Document, Photo

pytestmark = pytest.mark.django_db(transaction=True)  # rows committed: the command runs in other processes

HERE = Path(__file__).resolve().parent
FILES = 100


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def media(tmp_path: Path) -> dict[str, bytes]:
    """MEDIA_ROOT with 100 JPEGs (noise, so each is tens of KB): name -> bytes."""
    root = tmp_path / "media"
    files = {}
    for i in range(FILES):
        buf = io.BytesIO()
        Image.effect_noise((160 + i, 120), 60 + i).convert("RGB").save(buf, format="JPEG", quality=95)
        name = f"products/p-{i:03d}.jpg"
        (root / "products").mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(buf.getvalue())
        files[name] = buf.getvalue()
    return files


@pytest.fixture()
def legacy_server(tmp_path: Path) -> Iterator[str]:
    """The old MEDIA_URL: MEDIA_ROOT over HTTP, as the web server in front of the shop served it."""
    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/media/"
    server.shutdown()
    server.server_close()


def uploads_counted(gateway: str) -> int:
    """Uploads the gateway answered 200 (its Prometheus counter)."""
    text = httpx.get(gateway + "/metrics").text
    n = 0
    for line in text.splitlines():
        if line.startswith("fdfs_http_requests_total{") and 'route="/upload/{filename}"' in line and '"200"' in line:
            n += int(float(line.rsplit(" ", 1)[1]))
    return n


PAGE = Template(
    "{% load fdfs %}"
    '{% for d in docs %}<a href="{{ d.attachment.url }}">{{ d.title }}</a>{% endfor %}'
    '{% for p in photos %}<img src="{{ p.picture|thumbnail:"150x150" }}" data-full="{{ p.picture.url }}">{% endfor %}'
)


def check_page(media: dict[str, bytes], legacy_url: str) -> tuple[int, int]:
    """Render the page, fetch every link and picture: (links to legacy files, links to the cluster)."""
    docs = Document.objects.exclude(title="lost").order_by("pk")
    html = PAGE.render(Context({"docs": docs, "photos": Photo.objects.order_by("pk")}))
    legacy = fdfs = 0
    for href in re.findall(r'href="([^"]+)"', html) + re.findall(r'data-full="([^"]+)"', html):
        resp = httpx.get(href, follow_redirects=True, timeout=30)
        assert resp.status_code == 200, href
        if href.startswith(legacy_url):
            legacy += 1
            assert resp.content == media[href[len(legacy_url) :]]
        else:
            fdfs += 1
            assert resp.content in media.values()
    for src in re.findall(r'src="([^"]+)"', html):
        resp = httpx.get(src, follow_redirects=True, timeout=30)
        assert resp.status_code == 200, src
        if not src.startswith(legacy_url):
            assert "_150x150.jpg" in src
            assert max(Image.open(io.BytesIO(resp.content)).size) == 150
    return legacy, fdfs


def test_migrate_media_moves_every_file_once_and_survives_a_kill(
    cluster: LocalCluster, media: dict[str, bytes], legacy_server: str, tmp_path: Path
) -> None:
    names = sorted(media)
    Document.objects.bulk_create(Document(title=f"doc {i}", attachment=names[i]) for i in range(60))
    Photo.objects.bulk_create(Photo(caption=f"photo {i}", picture=names[i]) for i in range(50, FILES))
    Document.objects.create(title="lost", attachment="docs/gone.pdf")  # not in MEDIA_ROOT
    rows = 60 + 50

    (tmp_path / "migrate_settings.py").write_text(
        "from tests.settings import *  # noqa: F403\n"
        f"DATABASES = {{'default': {{'ENGINE': 'django.db.backends.sqlite3', "
        f"'NAME': {connection.settings_dict['NAME']!r}}}}}\n"
        f"MEDIA_ROOT = {str(tmp_path / 'media')!r}\n"
        "STORAGES = {'default': {'BACKEND': 'fdfs_http.django.FdfsStorage'}, 'staticfiles': "
        "{'BACKEND': 'django.contrib.staticfiles.storage.StaticFilesStorage'}}\n"
        f"FDFS_GATEWAY = {cluster.gateway!r}\n"
        f"FDFS_LEGACY_BASE_URL = {legacy_server!r}\n"
    )
    journal = tmp_path / "journal.jsonl"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "migrate_settings",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "django", "fdfs_migrate_media", "--journal", str(journal), "--batch-size", "7"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*command, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    def migrated() -> int:
        return sum(is_file_id(d.attachment.name) for d in Document.objects.all()) + sum(
            is_file_id(p.picture.name) for p in Photo.objects.all()
        )

    total = sum(len(b) for b in media.values())
    with override_settings(
        MEDIA_ROOT=str(tmp_path / "media"), FDFS_LEGACY_BASE_URL=legacy_server, FDFS_GATEWAY=cluster.gateway
    ):
        assert check_page(media, legacy_server) == (rows, 0)

        dry = run("--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert f"would have moved {rows}, skipped 0, missing 1, failed 0; uploaded {FILES} file(s), {total} bytes" in (
            dry.stdout
        )
        assert "missing: testapp.Document.attachment" in dry.stderr and "'docs/gone.pdf'" in dry.stderr
        only = run("--dry-run", "--model", "testapp.Photo")
        assert "would have moved 50, skipped 0, missing 0" in only.stdout, only.stderr
        assert migrated() == 0 and not journal.exists()

        before = uploads_counted(cluster.gateway)
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while not (journal.exists() and journal.read_bytes().count(b"\n") >= 25):
            assert proc.poll() is None, f"the command ended before it could be killed: {proc.stderr!r}"
            assert time.monotonic() < deadline
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        assert proc.stderr is not None
        proc.stderr.close()
        half = migrated()
        assert 0 < half < rows, half

        # Pages render in the middle: legacy names from the old server, the rest from the cluster.
        legacy, fdfs = check_page(media, legacy_server)
        assert (legacy, fdfs) == (rows - half, half)

        done = run("-v", "2")
        assert done.returncode == 0, done.stderr
        assert f"moved {rows - half}, skipped {half}, missing 1, failed 0" in done.stdout
        assert migrated() == rows
        assert check_page(media, legacy_server) == (0, rows)

    # Every name was uploaded once: one journal line each, one file ID shared by the rows that reference it.
    lines = journal.read_text().splitlines()
    ids = dict(re.findall(r'"name": "([^"]+)", "file_id": "([^"]+)"', "\n".join(lines)))
    assert len(lines) == len(ids) == FILES
    for d in Document.objects.exclude(title="lost"):
        assert ids[names[int(d.title.split()[1])]] == d.attachment.name
    for p in Photo.objects.all():
        assert ids[names[int(p.caption.split()[1])]] == p.picture.name
    # The gateway stored each file once; at most the upload in flight when the command was killed is stored
    # twice (its answer never reached the journal).
    assert FILES <= uploads_counted(cluster.gateway) - before <= FILES + 1
    with Client(cluster.gateway) as client:
        for name, fid in ids.items():
            assert decode(fid).size == len(media[name])
            assert client.download(fid) == media[name]
            assert client.meta(fid)["filename"] == name
    assert Document.objects.get(title="lost").attachment.name == "docs/gone.pdf"

    again = run()
    assert again.returncode == 0 and f"moved 0, skipped {rows}, missing 1, failed 0; uploaded 0" in again.stdout
