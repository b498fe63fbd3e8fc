"""What the sync and async clients share: wire types, every request and how its answer is read ([`Calls`]),
error mapping, upload sources. The clients add only the I/O (httpx's `Client` or `AsyncClient`)."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, Generic, TypedDict, TypeVar, Union, cast
from urllib.parse import quote, urlsplit

import httpx

from .errors import FdfsError, NotFound, Unreachable
from .fileid import decode, parse_thumbnail_size

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


class _ThumbnailBase(TypedDict):
    size: str


class Thumbnail(_ThumbnailBase, total=False):
    """One thumbnail asked for at upload: `file_id`, `url` and `bytes` when rendered, else `skipped` and `error`
    (`{"code": ..., "message": ...}`, e.g. `not_an_image`)."""

    file_id: str
    url: str
    bytes: int
    skipped: bool
    error: dict[str, str]


class UploadResult(_UploadResultBase, total=False):
    """The gateway's answer to an upload (see `openapi.yaml`, `UploadResult`)."""

    filename: str
    thumbnails: list[Thumbnail]


class _DeleteResultBase(TypedDict):
    file_id: str
    deleted: bool


class DeleteResult(_DeleteResultBase, total=False):
    """The gateway's answer to `DELETE /{file_id}`: `slaves_deleted` lists the slave files deleted with the
    master (the thumbnails the nodes rendered from it, and with `slaves=True` the uploaded slaves too)."""

    slaves_deleted: list[str]


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


def check_gateway(url: str) -> str:
    """The gateway URL without its trailing slash; `ValueError` unless it is an absolute http(s) URL."""
    parsed = urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"the gateway must be an absolute http:// or https:// URL, got {url!r}")
    return url.rstrip("/")


T = TypeVar("T")


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request of the API and how its answer is read; both clients send it, each with its own I/O."""

    method: str
    url: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, str] | None = None
    headers: dict[str, str] | None = None
    json: Any = None
    follow_redirects: bool = False


class Calls:
    """Builds every request of the gateway API and reads its answer; no I/O (shared by `Client` and
    `AsyncClient`)."""

    def __init__(self, api_key: str | None) -> None:
        self.api_key = api_key

    def _writes(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Headers of a request that changes something: the API key, when there is one."""
        h = {"x-api-key": self.api_key} if self.api_key else {}
        return {**h, **(extra or {})}

    def upload(self, filename: str | None, params: dict[str, str], headers: dict[str, str]) -> Call[UploadResult]:
        """`PUT /upload/{filename}`; the body is sent by the caller."""
        url = "/upload/" + quote(filename or "file", safe="")
        return Call("PUT", url, _json_of(UploadResult), params=params, headers=self._writes(headers))

    def download(self, file_id: str, offset: int = 0) -> Call[None]:
        """`GET /{file_id}` through the redirect, from `offset` (a Range request); streamed by the caller."""
        headers = {"range": f"bytes={offset}-"} if offset else None
        return Call("GET", "/" + file_path(file_id), _no_parse, headers=headers, follow_redirects=True)

    def info(self, file_id: str) -> Call[FileInfo]:
        return Call("GET", "/info/" + file_path(file_id), _json_of(FileInfo))

    def exists(self, file_id: str) -> Call[bool]:
        return Call("HEAD", "/" + file_path(file_id), _exists, follow_redirects=True)

    def meta(self, file_id: str) -> Call[dict[str, str]]:
        return Call("GET", "/meta/" + file_path(file_id), _json_of(dict[str, str]))

    def set_meta(self, file_id: str, meta: Mapping[str, str]) -> Call[dict[str, str]]:
        url = "/meta/" + file_path(file_id)
        return Call("PUT", url, _json_of(dict[str, str]), json=dict(meta), headers=self._writes())

    def merge_meta(self, file_id: str, changes: Mapping[str, str | None]) -> Call[dict[str, str]]:
        url = "/meta/" + file_path(file_id)
        return Call("PATCH", url, _json_of(dict[str, str]), json=dict(changes), headers=self._writes())

    def delete(self, file_id: str, slaves: bool = False) -> Call[DeleteResult]:
        """`DELETE /{file_id}` (`?slaves=all` also deletes the uploaded slave files)."""
        params = {"slaves": "all"} if slaves else None
        return Call("DELETE", "/" + file_path(file_id), _json_of(DeleteResult), params=params, headers=self._writes())

    def cluster(self) -> Call[dict[str, Any]]:
        return Call("GET", "/cluster", _json_of(dict[str, Any]))


def upload_params(
    group: str | None,
    meta: Mapping[str, str] | None,
    master_id: str | None = None,
    prefix: str | None = None,
    thumbnails: Iterable[str] | None = None,
) -> dict[str, str]:
    """The query of `PUT /upload/{filename}`."""
    params: dict[str, str] = {}
    if group:
        params["group"] = group
    if master_id is not None:
        params["master_file_id"] = file_path(master_id)
        params["prefix"] = prefix or ""
    sizes = [str(parse_thumbnail_size(s)) for s in thumbnails or ()]
    if sizes:
        params["thumbnails"] = ",".join(sizes)
    for k, v in (meta or {}).items():
        params[f"meta.{k}"] = v
    return params


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
    return cls(code, message, resp.status_code, method=resp.request.method, url=str(resp.url))


def unreachable(e: httpx.TransportError, request: httpx.Request) -> Unreachable:
    """The exception for a request that got no answer (`request`: the one sent, unless `e` names another, such
    as the storage node a redirect led to)."""
    with contextlib.suppress(RuntimeError):  # no request attached
        request = e.request
    return Unreachable(f"{type(e).__name__}: {e}", method=request.method, url=str(request.url))


def bad_response(resp: httpx.Response, why: str) -> FdfsError:
    return FdfsError("bad_response", why, resp.status_code, method=resp.request.method, url=str(resp.url))


def _json_of(_: type[T]) -> Callable[[httpx.Response], T]:
    def parse(resp: httpx.Response) -> T:
        if not resp.is_success:
            raise error_from(resp)
        try:
            return cast(T, resp.json())
        except ValueError as e:
            raise bad_response(resp, f"the gateway answered {resp.status_code} without JSON") from e

    return parse


def _no_parse(resp: httpx.Response) -> None:
    return None


def _exists(resp: httpx.Response) -> bool:
    if resp.status_code == 404:
        return False
    if resp.is_success:
        return True
    raise error_from(resp)


def stream_size(resp: httpx.Response, offset: int) -> int | None:
    """The whole file's size from a streamed download's headers; checks a Range request got its 206."""
    if offset and resp.status_code != 206:
        raise bad_response(resp, f"the storage node answered {resp.status_code} to a Range request")
    if offset:
        total = resp.headers.get("content-range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = resp.headers.get("content-length")
    return int(length) if length is not None and length.isdigit() else None


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
