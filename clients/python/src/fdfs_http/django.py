"""Django storage backend: files live in an fdfs cluster, models keep the file ID.

    STORAGES = {
        "default": {
            "BACKEND": "fdfs_http.django.FdfsStorage",
            "OPTIONS": {"gateway": "http://127.0.0.1:8080"},
        },
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }

The stored name of a file is its fdfs file ID (`group1/M00/0A/1F/<name>.jpg`); the name a model asked for
(`products/mug.jpg`) gives the extension and is kept in the file's metadata as `filename`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from datetime import datetime, timezone
from typing import IO, Any, cast

from django.conf import settings
from django.core.files import File
from django.core.files.storage import Storage
from django.utils.deconstruct import deconstructible

from ._common import DEFAULT_TIMEOUT
from .client import Client
from .errors import NotFound
from .fileid import decode, is_file_id, signed_query, slave_id

__all__ = ["FdfsStorage"]


@deconstructible(path="fdfs_http.django.FdfsStorage")
class FdfsStorage(Storage):
    """A Django `Storage` on the fdfs HTTP gateway.

    Options (the `OPTIONS` of a `STORAGES` entry):

    - `gateway`: the gateway's URL (default `http://127.0.0.1:8080`);
    - `api_key`: sent as `x-api-key` on uploads and deletes;
    - `group`: store new files in this group (default: the tracker chooses);
    - `base_url`: where `url()` points (default: the gateway, which redirects to a storage node); an nginx or
      CDN host that serves `/{file_id}` saves the redirect;
    - `anti_leech_secret`, `token_ttl`: sign URLs with FastDFS anti-leech tokens (`token_ttl` = the nodes'
      `token_ttl_secs`; the signed link stays the same for `token_ttl // 2` seconds so it can be cached);
    - `timeout`: seconds for connecting and for each read or write.
    """

    def __init__(
        self,
        gateway: str = "http://127.0.0.1:8080",
        api_key: str | None = None,
        group: str | None = None,
        base_url: str | None = None,
        anti_leech_secret: str | None = None,
        token_ttl: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.gateway = gateway.rstrip("/")
        self.api_key = api_key
        self.group = group or None
        self.base_url = (base_url or self.gateway).rstrip("/")
        self.anti_leech_secret = anti_leech_secret
        self.token_ttl = token_ttl
        self.timeout = timeout
        self._local = threading.local()

    @property
    def client(self) -> Client:
        """This thread's client (an httpx client is not shared between threads of a WSGI server)."""
        client: Client | None = getattr(self._local, "client", None)
        if client is None:
            client = Client(self.gateway, api_key=self.api_key, timeout=self.timeout)
            self._local.client = client
        return client

    # -- saving ------------------------------------------------------------------------------------------

    def get_available_name(self, name: str, max_length: int | None = None) -> str:
        """Every upload gets a new file ID, so any name is available (no network call)."""
        return name

    def _save(self, name: str, content: File[Any]) -> str:
        filename = os.path.basename(name) or "file"
        result = self.client.upload(
            content.chunks(),
            filename=filename,
            group=self.group,
            meta={"filename": name},
            size=content.size,
        )
        return result["file_id"]

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

    # -- reading -------------------------------------------------------------------------------------------

    def _open(self, name: str, mode: str = "rb") -> File[Any]:
        if any(c in mode for c in "wax+"):
            raise ValueError(f"fdfs files are immutable: open them for reading only (mode {mode!r})")
        f = self.client.open(name)
        return File(cast("IO[Any]", f), name=name)

    def exists(self, name: str) -> bool:
        """Whether the cluster has the file; a name that is not a file ID never exists (no request)."""
        return is_file_id(name) and self.client.exists(name)

    def size(self, name: str) -> int:
        """From the ID for a master file (no network); a slave file's size comes from the cluster."""
        info = decode(name)
        if info.is_slave:
            return self.client.info(name)["size"]
        return info.size

    def delete(self, name: str) -> None:
        """Delete the file; a missing file is not an error (Django's contract)."""
        if not name:
            raise ValueError("The name must be given to delete().")
        if not is_file_id(name):
            return
        with contextlib.suppress(NotFound):
            self.client.delete(name)

    def url(self, name: str | None) -> str:
        """Where the file is served; computed locally, never a network call (templates call this a lot)."""
        if not name:
            raise ValueError("a file without a name has no URL")
        fid = decode(name).file_id
        url = f"{self.base_url}/{fid}"
        if self.anti_leech_secret:
            url += "?" + signed_query(fid, self.anti_leech_secret, self.token_ttl)
        return url

    def get_created_time(self, name: str) -> datetime:
        """The creation time the ID encodes (aware UTC with USE_TZ, else naive local time, as Django wants)."""
        ts = decode(name).created
        if settings.USE_TZ:
            return datetime.fromtimestamp(ts, tz=timezone.utc)
        return datetime.fromtimestamp(ts)

    def get_modified_time(self, name: str) -> datetime:
        """Files are immutable: the creation time."""
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
