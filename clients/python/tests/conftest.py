"""Fixtures: real `fdfs up` clusters (the debug build of this repository, or `$FDFS_BIN`)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.test import override_settings

from fdfs_http import Client
from fdfs_http.testing import LocalCluster, fdfs_binary

REPO = Path(__file__).resolve().parents[3]

SECRET = "anti-leech-s3cret"
API_KEY = "test-api-key"
SMALL_LIMIT = 1 << 20
TOKEN_TTL = 600


def _data_root() -> str:
    # Node data on /dev/shm when there is room (as the Rust tests do); FDFS_TEST_TMPDIR overrides.
    root = os.environ.get("FDFS_TEST_TMPDIR")
    if root:
        return root
    try:
        st = os.statvfs("/dev/shm")
        if st.f_bavail * st.f_frsize > 6 << 30:
            return "/dev/shm"
    except OSError:
        pass
    return tempfile.gettempdir()


@pytest.fixture(scope="session")
def fdfs_bin() -> str:
    path = str(fdfs_binary(REPO))
    if not os.access(path, os.X_OK):
        pytest.fail(f"no fdfs binary at {path}: run `cargo build -p fdfs` first (or set FDFS_BIN)")
    return path


@pytest.fixture(scope="session")
def data_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fdfs-py-", dir=_data_root()) as d:
        yield Path(d)


@pytest.fixture(scope="session")
def cluster(fdfs_bin: str, data_root: Path) -> Iterator[LocalCluster]:
    """2 groups x 2 members, no API key, no anti-leech; Django's default storage points at it."""
    with LocalCluster(fdfs_bin, data_root / "main", groups=2, members=2) as c:
        storages = {
            "default": {"BACKEND": "fdfs_http.django.FdfsStorage", "OPTIONS": {"gateway": c.gateway}},
            "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
        }
        with override_settings(STORAGES=storages):
            yield c


@pytest.fixture(scope="session")
def secured(fdfs_bin: str, data_root: Path) -> Iterator[LocalCluster]:
    """1 group x 1 member with an API key, anti-leech tokens (TTL 600 s) and a 1 MiB upload limit."""
    env = {
        "FDFS_ANTI_LEECH_SECRET": SECRET,
        "FDFS_MAX_UPLOAD_SIZE": str(SMALL_LIMIT),
        "FDFS_TOKEN_TTL_SECS": str(TOKEN_TTL),
    }
    with LocalCluster(fdfs_bin, data_root / "secured", groups=1, members=1, env=env, api_key=API_KEY) as c:
        yield c


@pytest.fixture()
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster.gateway) as c:
        yield c
