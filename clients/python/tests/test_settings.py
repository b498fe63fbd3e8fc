"""FDFS_* settings: OPTIONS, then the Django setting, then the environment variable; a bad value stops Django at
start with `ImproperlyConfigured` naming the setting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from fdfs_http.django import FdfsStorage

HERE = Path(__file__).resolve().parent


def test_defaults_suit_a_web_request() -> None:
    s = FdfsStorage()
    assert s.gateway == "http://127.0.0.1:8080" and s.base_url == s.gateway
    assert isinstance(s.timeout, httpx.Timeout)
    assert (s.timeout.connect, s.timeout.read, s.timeout.write) == (3.0, 30.0, 30.0)
    assert s.thumbnail_sizes == ("150x150", "300x300", "600x600")
    assert s.client.timeout == s.timeout


def test_options_then_settings_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FDFS_GATEWAY", "http://env:8080")
    monkeypatch.setenv("FDFS_TIMEOUT", "2,20")
    monkeypatch.setenv("FDFS_API_KEY", "from-env")
    monkeypatch.setenv("FDFS_THUMBNAIL_SIZES", "100x100,200x0")
    monkeypatch.setenv("FDFS_UPLOAD_PARAMS", '{"meta": {"shop": "demo"}, "thumbnails": "100x100"}')
    s = FdfsStorage()
    assert (s.gateway, s.api_key, s.thumbnail_sizes) == ("http://env:8080", "from-env", ("100x100", "200x0"))
    assert (s.timeout.connect, s.timeout.read) == (2.0, 20.0)
    assert s.config.upload_params.thumbnails == ("100x100",)
    assert s.config.upload_params.meta == {"shop": "demo"}
    with override_settings(FDFS_GATEWAY="https://settings.example.com/", FDFS_TIMEOUT=5, FDFS_GROUP="group2"):
        s = FdfsStorage()
        assert (s.gateway, s.group, s.timeout.connect, s.timeout.read) == (
            "https://settings.example.com",
            "group2",
            5,
            5,
        )
        s = FdfsStorage(gateway="http://options:1", timeout=(1, 9))
        assert (s.gateway, s.timeout.connect, s.timeout.read) == ("http://options:1", 1, 9)


BAD: list[tuple[dict[str, Any], str]] = [
    ({"gateway": "127.0.0.1:8080"}, r"FDFS_GATEWAY \(OPTIONS\['gateway'\]\) = '127.0.0.1:8080': must be an absolute"),
    ({"base_url": "cdn.example.com"}, r"FDFS_BASE_URL .*must be an absolute http:// or https:// URL"),
    ({"legacy_base_url": "media/"}, r"FDFS_LEGACY_BASE_URL .*or a path starting with /"),
    ({"timeout": "fast"}, r"FDFS_TIMEOUT .*'fast': must be seconds"),
    ({"timeout": -1}, r"FDFS_TIMEOUT .*each above 0"),
    ({"token_ttl": "10m"}, r"FDFS_TOKEN_TTL .*whole number of seconds"),
    ({"token_ttl": 1}, r"FDFS_TOKEN_TTL .*at least 2"),
    ({"group": "group/1"}, r"FDFS_GROUP .*group name"),
    ({"thumbnail_sizes": "300"}, r"FDFS_THUMBNAIL_SIZES .*invalid thumbnail size '300'"),
    ({"upload_params": {"cache": "x"}}, r"FDFS_UPLOAD_PARAMS .*unknown key\(s\) \['cache'\]"),
    ({"upload_params": {"thumbnails": ["64x64"]}}, r"FDFS_UPLOAD_PARAMS .*not in FDFS_THUMBNAIL_SIZES"),
    ({"upload_params": {"meta": {"a": 1}}}, r"FDFS_UPLOAD_PARAMS .*'meta' must be a dict of strings"),
    ({"api_key": 12}, r"FDFS_API_KEY \(OPTIONS\['api_key'\]\) = \*\*\*\*: must be a string"),
]


@pytest.mark.parametrize(("options", "message"), BAD, ids=[next(iter(o)) + str(i) for i, (o, _) in enumerate(BAD)])
def test_a_bad_value_names_its_setting(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message):
        FdfsStorage(**options)


def test_a_bad_setting_or_option_name_is_refused() -> None:
    with override_settings(FDFS_TIMEOUT="3;30"), pytest.raises(ImproperlyConfigured, match=r"^FDFS_TIMEOUT = '3;30'"):
        FdfsStorage()
    nowhere = override_settings(FDFS_LEGACY_STORAGE="nowhere")
    with nowhere, pytest.raises(ImproperlyConfigured, match="FDFS_LEGACY_STORAGE = 'nowhere'"):
        _ = FdfsStorage().legacy_storage


def django_start(tmp_path: Path, settings: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`manage.py check` in a new process with these settings (appended to the tests' own)."""
    (tmp_path / "start_settings.py").write_text("from tests.settings import *  # noqa: F403\n" + settings)
    return subprocess.run(
        [sys.executable, "-m", "django", "check"],
        cwd=HERE.parent,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "start_settings",
            "PYTHONPATH": os.pathsep.join([str(tmp_path), str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_django_does_not_start_with_a_bad_setting(tmp_path: Path) -> None:
    plain = 'STORAGES = {"default": {"BACKEND": "fdfs_http.django.FdfsStorage"}}\n'
    ok = django_start(tmp_path, plain, {"FDFS_GATEWAY": "http://127.0.0.1:9"})
    assert ok.returncode == 0, ok.stderr

    bad = django_start(tmp_path, plain, {"FDFS_GATEWAY": "127.0.0.1:8080"})
    assert bad.returncode != 0
    assert "django.core.exceptions.ImproperlyConfigured: STORAGES['default']: FDFS_GATEWAY (the environment" in (
        bad.stderr
    )
    assert "must be an absolute http:// or https:// URL" in bad.stderr

    bad = django_start(tmp_path, plain + 'FDFS_THUMBNAIL_SIZES = ["150x150", "big"]\n')
    assert (
        bad.returncode != 0 and "FDFS_THUMBNAIL_SIZES = ['150x150', 'big']: invalid thumbnail size 'big'" in bad.stderr
    )

    bad = django_start(tmp_path, plain + 'FDFS_LEGACY_STORAGE = "old"\n')
    assert bad.returncode != 0 and "STORAGES['default']: FDFS_LEGACY_STORAGE = 'old'" in bad.stderr
