"""The settings of `FdfsStorage`: where each comes from and how it is checked.

Every option has a Django setting and an environment variable of one name (`gateway` = `FDFS_GATEWAY`). A value
is taken from, in decreasing precedence: the storage's `OPTIONS` in `STORAGES`, the Django setting, the
environment variable, the default. `None` (and an empty environment variable) counts as not set. A bad value
raises `ImproperlyConfigured` naming the setting, when Django starts (the `fdfs_http.django` app checks every
`FdfsStorage` of `STORAGES` in `ready()`) or else when the storage is made.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from ..fileid import THUMBNAIL_FORMATS, parse_thumbnail_size

DEFAULT_GATEWAY = "http://127.0.0.1:8080"
"""What `fdfs up` prints."""
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=3.0)
"""Suited to a web request: 3 s to connect (a gateway that is down fails fast), 30 s for each read or write."""
DEFAULT_THUMBNAIL_SIZES = ("150x150", "300x300", "600x600")
"""The storage nodes' default `thumbnail_sizes`."""

SETTINGS = {
    "gateway": "FDFS_GATEWAY",
    "api_key": "FDFS_API_KEY",
    "group": "FDFS_GROUP",
    "base_url": "FDFS_BASE_URL",
    "timeout": "FDFS_TIMEOUT",
    "anti_leech_secret": "FDFS_ANTI_LEECH_SECRET",
    "token_ttl": "FDFS_TOKEN_TTL",
    "legacy_base_url": "FDFS_LEGACY_BASE_URL",
    "legacy_storage": "FDFS_LEGACY_STORAGE",
    "thumbnail_sizes": "FDFS_THUMBNAIL_SIZES",
    "upload_params": "FDFS_UPLOAD_PARAMS",
}
"""Option of `OPTIONS` -> the Django setting and environment variable of the same value."""

UPLOAD_PARAM_KEYS = ("meta", "thumbnails")
HEADER_KEYS = ("content_type", "cache_control", "content_disposition")
"""Per-file response headers, which fdfs does not store: refused with what to do instead."""
_GROUP = re.compile(r"[A-Za-z0-9_-]{1,16}\Z")


@dataclass(frozen=True)
class UploadDefaults:
    """`FDFS_UPLOAD_PARAMS`: what every upload of the storage carries."""

    meta: Mapping[str, str] = field(default_factory=dict)
    """Metadata added to every file (the storage adds `filename`, the name Django asked for)."""
    thumbnails: tuple[str, ...] = ()
    """Sizes the storage node renders right after each upload (else on the first read)."""


@dataclass(frozen=True)
class Config:
    """Every setting of one `FdfsStorage`, checked."""

    gateway: str
    api_key: str | None
    group: str | None
    base_url: str
    timeout: httpx.Timeout
    anti_leech_secret: str | None
    token_ttl: int | None
    legacy_base_url: str | None
    legacy_storage: str | None
    thumbnail_sizes: tuple[str, ...]
    upload_params: UploadDefaults

    @property
    def legacy(self) -> bool:
        """Whether names that are not file IDs go to the storage used before fdfs."""
        return bool(self.legacy_base_url or self.legacy_storage)


class _Reader:
    """Reads each option where it is set (`options` holds the storage's keyword arguments, `OPTIONS`)."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = options

    def get(self, option: str) -> tuple[Any, str]:
        """The value of `option` (None when not set) and where it came from."""
        name = SETTINGS[option]
        value = self.options.get(option)
        if value is not None:
            return value, f"OPTIONS['{option}']"
        value = getattr(settings, name, None)
        if value is not None:
            return value, "settings"
        value = os.environ.get(name) or None
        return value, "the environment"


def _bad(option: str, source: str, value: Any, problem: str) -> ImproperlyConfigured:
    name = SETTINGS[option]
    shown = "****" if option in ("api_key", "anti_leech_secret") else repr(value)
    where = "" if source == "settings" else f" ({source})"
    return ImproperlyConfigured(f"{name}{where} = {shown}: {problem}")


def _url(r: _Reader, option: str, *, root_relative: bool = False) -> str | None:
    value, source = r.get(option)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(option, source, value, "must be a URL string")
    parsed = urlsplit(value)
    if parsed.scheme in ("http", "https") and parsed.netloc:
        return value.rstrip("/")
    if root_relative and value.startswith("/") and not value.startswith("//"):
        return value.rstrip("/")
    wanted = "an absolute http:// or https:// URL" + (" or a path starting with /" if root_relative else "")
    raise _bad(option, source, value, f"must be {wanted}, e.g. http://127.0.0.1:8080")


def _text(r: _Reader, option: str) -> str | None:
    value, source = r.get(option)
    if value is not None and not isinstance(value, str):
        raise _bad(option, source, value, "must be a string")
    return value or None


def _timeout(r: _Reader) -> httpx.Timeout:
    value, source = r.get("timeout")
    if value is None:
        return DEFAULT_TIMEOUT
    if isinstance(value, httpx.Timeout):
        return value
    parts: list[Any]
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [value]
    try:
        if isinstance(value, bool) or len(parts) not in (1, 2):
            raise ValueError
        secs = [float(p) for p in parts]
        if any(not s > 0 for s in secs):
            raise ValueError
    except (TypeError, ValueError):
        raise _bad(
            "timeout", source, value, "must be seconds (30) or connect and read seconds (3,30), each above 0"
        ) from None
    if len(secs) == 1:
        return httpx.Timeout(secs[0])
    return httpx.Timeout(secs[1], connect=secs[0])


def _token_ttl(r: _Reader) -> int | None:
    value, source = r.get("token_ttl")
    if value is None:
        return None
    try:
        if isinstance(value, (bool, float)):
            raise ValueError
        ttl = int(value)
    except (TypeError, ValueError):
        raise _bad(
            "token_ttl", source, value, "must be a whole number of seconds (the nodes' token_ttl_secs)"
        ) from None
    if ttl < 2:
        raise _bad("token_ttl", source, value, "must be at least 2 seconds")
    return ttl


def _sizes(value: Any, option: str, source: str) -> tuple[str, ...]:
    items = value.replace(",", " ").split() if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) for s in items):
        raise _bad(option, source, value, "must be sizes such as '150x150,300x300' or a list of them")
    out: list[str] = []
    for s in items:
        try:
            size = str(parse_thumbnail_size(s))
        except ValueError as e:
            raise _bad(option, source, value, str(e)) from None
        if size not in out:
            out.append(size)
    return tuple(out)


def _thumbnail_sizes(r: _Reader) -> tuple[str, ...]:
    value, source = r.get("thumbnail_sizes")
    if value is None:
        return DEFAULT_THUMBNAIL_SIZES
    return _sizes(value, "thumbnail_sizes", source)


def _upload_params(r: _Reader, sizes: tuple[str, ...]) -> UploadDefaults:
    value, source = r.get("upload_params")
    if value is None:
        return UploadDefaults()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise _bad("upload_params", source, value, "must be a JSON object in the environment") from None
    if not isinstance(value, Mapping):
        raise _bad("upload_params", source, value, f"must be a dict with the keys {', '.join(UPLOAD_PARAM_KEYS)}")
    headers = sorted(set(value) & set(HEADER_KEYS))
    if headers:
        raise _bad(
            "upload_params",
            source,
            value,
            f"{headers}: files are not stored with their own response headers (every door serves a file ID alike): "
            "the Content-Type comes from the extension of the name you save under, caching is immutable (an ID never "
            "changes), and a download under another name is url(name, attname=...)",
        )
    unknown = sorted(set(value) - set(UPLOAD_PARAM_KEYS))
    if unknown:
        raise _bad("upload_params", source, value, f"unknown key(s) {unknown}; known: {', '.join(UPLOAD_PARAM_KEYS)}")
    meta = value.get("meta") or {}
    if not isinstance(meta, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise _bad("upload_params", source, value, "'meta' must be a dict of strings")
    thumbs = _sizes(value.get("thumbnails") or (), "upload_params", source)
    missing = [s for s in thumbs if s not in sizes]
    if missing:
        raise _bad(
            "upload_params",
            source,
            value,
            f"'thumbnails' {missing} not in FDFS_THUMBNAIL_SIZES {list(sizes)} (the sizes the storage nodes render)",
        )
    return UploadDefaults(dict(meta), thumbs)


def load(options: Mapping[str, Any]) -> Config:
    """Read and check every setting; `ImproperlyConfigured` names the first one that is wrong."""
    r = _Reader(options)
    gateway = _url(r, "gateway") or DEFAULT_GATEWAY
    group = _text(r, "group")
    if group is not None and not _GROUP.match(group):
        raise _bad("group", r.get("group")[1], group, "a group name is 1-16 characters of A-Z a-z 0-9 _ -")
    sizes = _thumbnail_sizes(r)
    legacy_storage = _text(r, "legacy_storage")
    return Config(
        gateway=gateway,
        api_key=_text(r, "api_key"),
        group=group,
        base_url=_url(r, "base_url") or gateway,
        timeout=_timeout(r),
        anti_leech_secret=_text(r, "anti_leech_secret"),
        token_ttl=_token_ttl(r),
        legacy_base_url=_url(r, "legacy_base_url", root_relative=True),
        legacy_storage=legacy_storage,
        thumbnail_sizes=sizes,
        upload_params=_upload_params(r, sizes),
    )


__all__ = ["DEFAULT_TIMEOUT", "SETTINGS", "THUMBNAIL_FORMATS", "Config", "UploadDefaults", "load"]
