"""`{% load fdfs %}`: thumbnail URLs of files in an `FdfsStorage`, built locally (no network call).

    <img src="{{ product.image|thumbnail:"300x300" }}"
         srcset="{% fdfs_srcset product.image "150x150 300x300 600x600" %}" sizes="300px">
    <source type="image/webp" srcset="{% fdfs_srcset product.image "150x150 300x300" fmt="webp" %}">
    {{ product.image|thumbnail_webp:"150x150" }}      {{ product.image|thumbnail:"150x150,webp" }}

The value is a file field (`product.image`) or a stored name (then the default storage is used). A size must be
one of `FDFS_THUMBNAIL_SIZES` (else `ValueError`: the nodes would answer 404). An empty field gives "", a legacy
name (not a file ID) its legacy URL, and a file of another storage its own URL.
"""

from __future__ import annotations

from typing import Any

from django import template
from django.core.files.storage import Storage, default_storage

from ...fileid import is_file_id, parse_thumbnail_size
from ..storage import FdfsStorage

register = template.Library()


def _file(value: Any) -> tuple[Storage, str]:
    """The storage and the stored name of a template value ("" when there is no file)."""
    if value is None or value == "":
        return default_storage, ""
    if isinstance(value, str):
        return default_storage, value
    name = getattr(value, "name", None)
    storage = getattr(value, "storage", None)
    if not isinstance(storage, Storage) or not (name is None or isinstance(name, str)):
        raise TypeError(f"not a file field or a stored name: {value!r}")
    return storage, name or ""


def _spec(spec: str) -> tuple[str, str | None]:
    """`300x300`, `300x300,webp` or `300x300 webp` -> size and format."""
    parts = spec.replace(",", " ").split()
    if len(parts) not in (1, 2):
        raise ValueError(f"thumbnail spec {spec!r}: expected a size and optionally a format, e.g. '300x300,webp'")
    return parts[0], parts[1] if len(parts) == 2 else None


@register.filter
def thumbnail(value: Any, spec: str) -> str:
    """`{{ product.image|thumbnail:"300x300" }}` (or `"300x300,webp"`): the URL of that thumbnail."""
    size, fmt = _spec(spec)
    storage, name = _file(value)
    if not name:
        return ""
    if not isinstance(storage, FdfsStorage):
        return storage.url(name)
    return storage.thumbnail_url(name, size, fmt)


@register.filter
def thumbnail_webp(value: Any, size: str) -> str:
    """`{{ product.image|thumbnail_webp:"300x300" }}`: the URL of the WebP thumbnail."""
    return thumbnail(value, f"{size},webp")


@register.simple_tag
def fdfs_srcset(value: Any, sizes: str | None = None, fmt: str | None = None) -> str:
    """`{% fdfs_srcset product.image "150x150 300x300" %}` -> `URL 150w, URL 300w` (default: every size of
    `FDFS_THUMBNAIL_SIZES` that have a width; `fmt="webp"` for WebP). A size given needs a width (not `0xH`)."""
    storage, name = _file(value)
    if not name:
        return ""
    if not isinstance(storage, FdfsStorage):
        return storage.url(name)
    if not is_file_id(name):  # a legacy name: no thumbnails, one candidate
        return storage.url(name)
    if sizes:
        listed = sizes.replace(",", " ").split()
        for size in listed:
            if parse_thumbnail_size(size).width == 0:
                raise ValueError(f"fdfs_srcset: size {size!r} has no width to describe (use WxH with W > 0)")
    else:
        listed = [s for s in storage.thumbnail_sizes if parse_thumbnail_size(s).width > 0]
    widths = [parse_thumbnail_size(size).width for size in listed]
    return ", ".join(f"{storage.thumbnail_url(name, size, fmt)} {w}w" for size, w in zip(listed, widths))
