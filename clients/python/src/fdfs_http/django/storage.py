"""`FdfsStorage`: a Django storage whose files live in an fdfs cluster; models keep the file ID.

A stored name that is not a file ID (`products/old-mug.jpg`, saved before the files moved to fdfs) is a legacy
name: with `FDFS_LEGACY_BASE_URL` or `FDFS_LEGACY_STORAGE` set it is served by the storage used before (`url()`,
`open()`, `exists()`, `size()`, `delete()`), until `manage.py fdfs_migrate_media` moves it in.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterable
from datetime import datetime, timezone
from functools import cached_property
from typing import IO, Any, cast
from urllib.parse import quote

import httpx
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.files import File
from django.core.files.storage import FileSystemStorage, InvalidStorageError, Storage, storages
from django.utils.deconstruct import deconstructible
from django.utils.encoding import filepath_to_uri
from django.utils.module_loading import import_string

from .._common import Source, UploadResult
from ..client import Client
from ..errors import InvalidFileId, NotFound
from ..fileid import decode, is_file_id, signed_query, slave_id, thumbnail_id
from . import conf

__all__ = ["FdfsStorage"]

log = logging.getLogger("fdfs_http.django")

LEGACY_HELP = (
    "not an fdfs file ID (a name saved before the files moved to fdfs?): set FDFS_LEGACY_BASE_URL (where the old "
    "files are served, e.g. your old MEDIA_URL) and, if they are not in MEDIA_ROOT, FDFS_LEGACY_STORAGE, so that "
    "such names keep working; then move them in with `python manage.py fdfs_migrate_media`"
)


@deconstructible(path="fdfs_http.django.FdfsStorage")
class FdfsStorage(Storage):
    """A Django `Storage` on the fdfs HTTP gateway.

    Each option (the `OPTIONS` of a `STORAGES` entry, or a keyword here) is also the Django setting and the
    environment variable `FDFS_<OPTION>`; see `fdfs_http.django.conf` and the README's settings table.
    """

    def __init__(
        self,
        gateway: str | None = None,
        api_key: str | None = None,
        group: str | None = None,
        base_url: str | None = None,
        anti_leech_secret: str | None = None,
        token_ttl: int | None = None,
        timeout: float | tuple[float, float] | httpx.Timeout | None = None,
        *,
        legacy_base_url: str | None = None,
        legacy_storage: str | None = None,
        thumbnail_sizes: str | Iterable[str] | None = None,
        upload_params: dict[str, Any] | None = None,
    ) -> None:
        self.config = conf.load(
            {
                "gateway": gateway,
                "api_key": api_key,
                "group": group,
                "base_url": base_url,
                "anti_leech_secret": anti_leech_secret,
                "token_ttl": token_ttl,
                "timeout": timeout,
                "legacy_base_url": legacy_base_url,
                "legacy_storage": legacy_storage,
                "thumbnail_sizes": thumbnail_sizes if thumbnail_sizes is None else _listed(thumbnail_sizes),
                "upload_params": upload_params,
            }
        )
        c = self.config
        self.gateway = c.gateway
        self.api_key = c.api_key
        self.group = c.group
        self.base_url = c.base_url
        self.anti_leech_secret = c.anti_leech_secret
        self.token_ttl = c.token_ttl
        self.timeout = c.timeout
        self.legacy_base_url = c.legacy_base_url
        self.thumbnail_sizes = c.thumbnail_sizes
        self._local = threading.local()

    @property
    def client(self) -> Client:
        """This thread's client (an httpx client is not shared between threads of a WSGI server)."""
        client: Client | None = getattr(self._local, "client", None)
        if client is None:
            client = Client(self.gateway, api_key=self.api_key, timeout=self.timeout)
            self._local.client = client
        return client

    # -- the storage used before fdfs ------------------------------------------------------------------------

    @cached_property
    def legacy_storage(self) -> Storage:
        """Where legacy names live: `FDFS_LEGACY_STORAGE` (a key of `STORAGES` or a dotted `Storage` class), by
        default a `FileSystemStorage` on `MEDIA_ROOT`."""
        spec = self.config.legacy_storage
        if not spec:
            return FileSystemStorage()
        try:
            legacy = import_string(spec)() if "." in spec else storages[spec]
        except (ImportError, InvalidStorageError) as e:
            raise ImproperlyConfigured(
                f"FDFS_LEGACY_STORAGE = {spec!r}: {e} (give a key of STORAGES or a dotted Storage class)"
            ) from e
        if isinstance(legacy, FdfsStorage) or not isinstance(legacy, Storage):
            raise ImproperlyConfigured(
                f"FDFS_LEGACY_STORAGE = {spec!r}: must be the Storage used before fdfs, not {type(legacy).__name__}"
            )
        return legacy

    def _legacy(self, name: str) -> Storage:
        """The legacy storage for a name that is not a file ID; `InvalidFileId` saying what to do without one."""
        if not self.config.legacy:
            raise InvalidFileId(name, LEGACY_HELP)
        return self.legacy_storage

    def legacy_url(self, name: str) -> str:
        """The URL of a legacy name: `FDFS_LEGACY_BASE_URL` + name, else the legacy storage's `url()`."""
        if self.legacy_base_url:
            return f"{self.legacy_base_url}/{filepath_to_uri(name).lstrip('/')}"
        return self._legacy(name).url(name)

    # -- saving ----------------------------------------------------------------------------------------------

    def get_available_name(self, name: str, max_length: int | None = None) -> str:
        """Every upload gets a new file ID, so any name is available (no network call)."""
        return name

    def _save(self, name: str, content: File[Any]) -> str:
        return self.upload(content.chunks(), name, content.size)["file_id"]

    def upload(self, source: Source, name: str, size: int | None) -> UploadResult:
        """Upload a file for the model name `name` with this storage's group and `FDFS_UPLOAD_PARAMS` (what
        `save()` and `fdfs_migrate_media` do); the name is kept in the file's metadata as `filename`."""
        up = self.config.upload_params
        result = self.client.upload(
            source,
            filename=os.path.basename(name) or "file",
            group=self.group,
            meta={**up.meta, "filename": name},
            size=size,
            thumbnails=up.thumbnails,
        )
        for t in result.get("thumbnails", []):
            if "error" in t:
                err = t["error"]
                log.warning("fdfs: thumbnail %s of %s (%s) not rendered: %s", t["size"], name, result["file_id"], err)
        return result

    def save_slave(self, name: str, prefix: str, content: File[Any]) -> str:
        """Store `content` as a slave file of `name` (a thumbnail, FastDFS-style); returns the slave's ID.

        Its extension is the one of `content.name` if that has one, else the master's.
        """
        ext = os.path.splitext(getattr(content, "name", None) or "")[1]
        master_ext = decode(name).ext
        filename = f"slave{ext}" if ext else (f"slave.{master_ext}" if master_ext else "slave")
        result = self.client.upload_slave(name, prefix, content.chunks(), filename=filename, size=content.size)
        return result["file_id"]

    def slave_name(self, name: str, prefix: str, ext: str | None = None) -> str:
        """The ID of `name`'s slave file with `prefix` (no network): pass it to `url()` to link a thumbnail."""
        return slave_id(name, prefix, ext)

    # -- thumbnails --------------------------------------------------------------------------------------------

    def thumbnail_name(self, name: str, size: str, fmt: str | None = None) -> str:
        """The ID of the thumbnail of `name` at `size` (one of `FDFS_THUMBNAIL_SIZES`), as the master's format or
        `fmt` (`webp`); the storage nodes render it on its first read. No network."""
        if size.strip() not in self.thumbnail_sizes:
            raise ValueError(
                f"thumbnail size {size!r} is not in FDFS_THUMBNAIL_SIZES ({', '.join(self.thumbnail_sizes)}): the "
                "storage nodes render only their thumbnail_sizes (any other is a 404); configure it in both"
            )
        return thumbnail_id(name, size.strip(), fmt)

    def thumbnail_url(self, name: str, size: str, fmt: str | None = None) -> str:
        """The URL of a thumbnail of `name` (see `thumbnail_name`), signed like `url()`. No network.

        A legacy name has no thumbnails: its own URL is returned.
        """
        if not is_file_id(name):
            return self.url(name)
        return self.url(self.thumbnail_name(name, size, fmt))

    # -- reading ---------------------------------------------------------------------------------------------

    def _open(self, name: str, mode: str = "rb") -> File[Any]:
        if not is_file_id(name):
            return self._legacy(name).open(name, mode)
        if any(c in mode for c in "wax+"):
            raise ValueError(f"fdfs files are immutable: open them for reading only (mode {mode!r})")
        f = self.client.open(name)
        return File(cast("IO[Any]", f), name=name)

    def exists(self, name: str) -> bool:
        """Whether the cluster has the file; a legacy name: whether the legacy storage has it (False when there
        is none configured)."""
        if not is_file_id(name):
            return self.config.legacy and self.legacy_storage.exists(name)
        return self.client.exists(name)

    def size(self, name: str) -> int:
        """From the ID for a master file (no network); a slave file's size comes from the cluster."""
        if not is_file_id(name):
            return self._legacy(name).size(name)
        info = decode(name)
        if info.is_slave:
            return self.client.info(name)["size"]
        return info.size

    def delete(self, name: str, slaves: bool = False) -> None:
        """Delete the file and the thumbnails the cluster rendered from it; a missing file is not an error
        (Django's contract). Slave files uploaded with `save_slave` stay unless `slaves=True`.

        A legacy name is deleted from the legacy storage (nothing happens without one).
        """
        if not name:
            raise ValueError("The name must be given to delete().")
        if not is_file_id(name):
            if self.config.legacy:
                self.legacy_storage.delete(name)
            return
        with contextlib.suppress(NotFound):
            self.client.delete(name, slaves=slaves)

    def url(self, name: str | None, attname: str | None = None) -> str:
        """Where the file is served; computed locally, never a network call (templates call this a lot).

        `attname` makes the download save as that file name (`?attname=`, `Content-Disposition: attachment`). A
        legacy name gives its legacy URL.
        """
        if not name:
            raise ValueError("a file without a name has no URL")
        if not is_file_id(name):
            return self.legacy_url(name)
        fid = decode(name).file_id
        query = []
        if self.anti_leech_secret:
            query.append(signed_query(fid, self.anti_leech_secret, self.token_ttl))
        if attname:
            query.append("attname=" + quote(attname, safe=""))
        return f"{self.base_url}/{fid}" + ("?" + "&".join(query) if query else "")

    def get_created_time(self, name: str) -> datetime:
        """The creation time the ID encodes (aware UTC with USE_TZ, else naive local time, as Django wants)."""
        if not is_file_id(name):
            return self._legacy(name).get_created_time(name)
        ts = decode(name).created
        if settings.USE_TZ:
            return datetime.fromtimestamp(ts, tz=timezone.utc)
        return datetime.fromtimestamp(ts)

    def get_modified_time(self, name: str) -> datetime:
        """Files are immutable: the creation time."""
        if not is_file_id(name):
            return self._legacy(name).get_modified_time(name)
        return self.get_created_time(name)

    def listdir(self, path: str) -> tuple[list[str], list[str]]:
        raise NotImplementedError(
            "fdfs (like FastDFS) has no directory listing: file IDs are handed out at upload and kept by the "
            "application (e.g. in a model field)"
        )

    def path(self, name: str) -> str:
        raise NotImplementedError(
            "fdfs files have no local filesystem path: they live on the storage nodes; use open() or url()"
        )


def _listed(sizes: str | Iterable[str]) -> str | list[str]:
    return sizes if isinstance(sizes, str) else list(sizes)
