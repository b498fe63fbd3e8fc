"""What the sync and async clients share: wire types, request building, error mapping, upload sources."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any, TypedDict, Union, cast
from urllib.parse import quote

import httpx

from .errors import FdfsError, NotFound, Unreachable
from .fileid import decode

CHUNK_SIZE = 256 * 1024
"""Bytes read from a source (and from a download) at a time: what a transfer holds in memory."""

DEFAULT_TIMEOUT = 30.0
"""Seconds allowed for connecting and for each read or write (not for a whole transfer)."""


class _UploadResultBase(TypedDict):
    file_id: str
    url: str
    group: str
    size: int
    crc32: str
    content_type: str
    replicas: int


class UploadResult(_UploadResultBase, total=False):
    """The gateway's answer to an upload (see `openapi.yaml`, `UploadResult`)."""

    filename: str


class _FileInfoBase(TypedDict):
    file_id: str
    group: str
    source_id: int
    created: int
    created_at: str
    size: int
    crc32: str
    locations: list[str]
    metadata: dict[str, str]


class FileInfo(_FileInfoBase, total=False):
    """The gateway's `GET /info/{file_id}` answer."""

    prefix: str
    content_type: str


Source = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]", IO[bytes], Iterable[bytes]]
"""What can be uploaded: bytes, a path, a binary file object (read in chunks), or an iterable of chunks."""


def file_path(file_id: str) -> str:
    """Validate an ID and return it as a URL path (no leading slash)."""
    return decode(file_id).file_id


def api_headers(api_key: str | None) -> dict[str, str]:
    return {"x-api-key": api_key} if api_key else {}


def upload_params(
    group: str | None,
    meta: Mapping[str, str] | None,
    master_id: str | None = None,
    prefix: str | None = None,
) -> dict[str, str]:
    params: dict[str, str] = {}
    if group:
        params["group"] = group
    if master_id is not None:
        params["master_file_id"] = file_path(master_id)
        params["prefix"] = prefix or ""
    for k, v in (meta or {}).items():
        params[f"meta.{k}"] = v
    return params


def upload_url(filename: str) -> str:
    return "/upload/" + quote(filename or "file", safe="")


def error_from(resp: httpx.Response) -> FdfsError:
    """The exception for an answered request that failed (the body must have been read)."""
    code, message = f"http_{resp.status_code}", resp.reason_phrase or "request failed"
    try:
        err = resp.json()["error"]
        code, message = str(err["code"]), str(err["message"])
    except Exception:  # not the gateway's JSON error (a proxy's page, a HEAD answer): keep the status
        if resp.status_code == 404:
            code = "not_found"
    cls = NotFound if resp.status_code == 404 else FdfsError
    return cls(code, message, resp.status_code)


def unreachable(e: httpx.TransportError, what: str) -> Unreachable:
    return Unreachable(f"{what}: {type(e).__name__}: {e}")


def json_of(resp: httpx.Response) -> Any:
    if not resp.is_success:
        raise error_from(resp)
    try:
        return resp.json()
    except ValueError as e:
        raise FdfsError("bad_response", f"the gateway answered {resp.status_code} without JSON") from e


class Prepared:
    """An upload source turned into something httpx sends: bytes, or chunks from a file object."""

    def __init__(self, source: Source, filename: str | None, size: int | None) -> None:
        self.filename = filename
        self.size = size
        self.data: bytes | None = None
        self.fileobj: IO[bytes] | None = None
        self.chunks: Iterable[bytes] | None = None
        self._owned: IO[bytes] | None = None
        if isinstance(source, (bytes, bytearray, memoryview)):
            self.data = bytes(source)
            self.size = len(self.data)
        elif isinstance(source, (str, os.PathLike)):
            path = os.fspath(source)
            self._owned = self.fileobj = open(path, "rb")  # noqa: SIM115 - closed by close()
            if self.filename is None:
                self.filename = os.path.basename(path)
        elif hasattr(source, "read"):
            self.fileobj = cast("IO[bytes]", source)
            name = getattr(source, "name", None)
            if self.filename is None and isinstance(name, str):
                self.filename = os.path.basename(name)
        else:
            self.chunks = source
        if self.fileobj is not None and self.size is None:
            self.size = _remaining(self.fileobj)

    def headers(self) -> dict[str, str]:
        h = {"content-type": "application/octet-stream"}
        if self.size is not None:
            h["content-length"] = str(self.size)
        return h

    def iter_sync(self) -> bytes | Iterator[bytes]:
        if self.data is not None:
            return self.data
        if self.fileobj is not None:
            return _read_chunks(self.fileobj)
        assert self.chunks is not None
        return iter(self.chunks)

    def close(self) -> None:
        if self._owned is not None:
            self._owned.close()


def _remaining(f: IO[bytes]) -> int | None:
    """Bytes left in a file object from its position, when that can be known without reading."""
    try:
        st = os.fstat(f.fileno())
        if stat.S_ISREG(st.st_mode):
            return max(0, st.st_size - f.tell())
    except (OSError, AttributeError, ValueError):
        pass
    try:
        if f.seekable():
            here = f.tell()
            end = f.seek(0, os.SEEK_END)
            f.seek(here)
            return max(0, end - here)
    except (OSError, AttributeError, ValueError):
        pass
    return None


def _read_chunks(f: IO[bytes]) -> Iterator[bytes]:
    while True:
        chunk = f.read(CHUNK_SIZE)
        if not chunk:
            return
        yield chunk
