"""`Client` (blocking) and `AsyncClient` (asyncio) for the fdfs HTTP gateway.

Uploads use `PUT /upload/{filename}` with the file as the raw body, read from its source in chunks of
`CHUNK_SIZE`, so memory stays flat whatever the file's size. Downloads follow the gateway's redirect to a
storage node and stream.
"""

from __future__ import annotations

import asyncio
import io
import os
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from types import TracebackType
from typing import IO, Any, TypeVar, Union, cast

import httpx

from ._common import (
    CHUNK_SIZE,
    DEFAULT_TIMEOUT,
    Call,
    Calls,
    DeleteResult,
    FileInfo,
    Prepared,
    Source,
    UploadResult,
    check_gateway,
    error_from,
    file_path,
    stream_size,
    unreachable,
    upload_params,
)
from .errors import NotFound
from .fileid import FileIdInfo, decode, signed_query

Timeout = Union[float, httpx.Timeout]
T = TypeVar("T")


def _slave_filename(master_id: str, filename: str | None) -> str:
    if filename:
        return filename
    ext = decode(master_id).ext
    return f"slave.{ext}" if ext else "slave"


class _Base:
    """What both clients have: settings, the request builder ([`Calls`]), the local computations."""

    def __init__(self, gateway: str, api_key: str | None, timeout: Timeout) -> None:
        self.gateway = check_gateway(gateway)
        self.api_key = api_key
        self.timeout = timeout
        self._calls = Calls(api_key)

    def signed_url(
        self,
        file_id: str,
        secret: str,
        ttl: int | None = None,
        *,
        base_url: str | None = None,
        now: int | None = None,
    ) -> str:
        """A FastDFS anti-leech link `{base_url}/{file_id}?token=...&ts=...`, computed locally.

        `base_url` is where the nodes' tokens are checked: a storage node or an nginx in front of the store
        paths (default: the gateway, which signs its own redirects when it has the secret). See
        `fileid.signed_query` for `ttl`.
        """
        base = (base_url or self.gateway).rstrip("/")
        return f"{base}/{file_path(file_id)}?{signed_query(file_id, secret, ttl, now)}"

    @staticmethod
    def decode(file_id: str) -> FileIdInfo:
        """Source node, creation time, size and CRC32 from the ID itself (no network)."""
        return decode(file_id)


class Client(_Base):
    """A blocking client of one gateway; use it as a context manager or call `close()`."""

    def __init__(
        self,
        gateway: str,
        api_key: str | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(gateway, api_key, timeout)
        self._http = httpx.Client(base_url=self.gateway, timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: Call[Any], content: Any = None, *, stream: bool = False) -> httpx.Response:
        req = self._http.build_request(
            call.method, call.url, params=call.params, headers=call.headers, json=call.json, content=content
        )
        try:
            return self._http.send(req, stream=stream, follow_redirects=call.follow_redirects)
        except httpx.TransportError as e:
            raise unreachable(e, req) from e

    def _run(self, call: Call[T], content: Any = None) -> T:
        return call.parse(self._send(call, content))

    def _upload(self, p: Prepared, params: dict[str, str]) -> UploadResult:
        try:
            return self._run(self._calls.upload(p.filename, params, p.headers()), p.iter_sync())
        finally:
            p.close()

    def upload(
        self,
        source: Source,
        filename: str | None = None,
        group: str | None = None,
        meta: Mapping[str, str] | None = None,
        *,
        size: int | None = None,
        thumbnails: Iterable[str] | None = None,
    ) -> UploadResult:
        """Store a file: bytes, a path, a binary file object (read from its position) or an iterable of chunks.

        `filename` gives the ID's extension (default: the path's or file object's name). `size` is needed only
        for an iterable whose length is known (else it is sent chunked). `thumbnails` (e.g. `["150x150"]`) has
        the storage node render those sizes right after the upload; the answer lists them under `thumbnails`
        (an entry with `skipped` and `error` when the file is not an image or the size is not configured).
        Returns the gateway's JSON.
        """
        params = upload_params(
            group,
            meta,
            thumbnails=thumbnails,
        )
        return self._upload(Prepared(source, filename, size), params)

    def upload_slave(
        self,
        master_id: str,
        prefix: str,
        source: Source,
        filename: str | None = None,
        meta: Mapping[str, str] | None = None,
        *,
        size: int | None = None,
    ) -> UploadResult:
        """Store a slave file of `master_id` (e.g. a thumbnail with prefix `_150x150`) next to its master.

        Its ID is `fileid.slave_id(master_id, prefix, ext)`, the extension taken from `filename` (default: the
        master's). 409 (an `FdfsError` with code `conflict`) if it exists already.
        """
        p = Prepared(source, filename, size)
        p.filename = _slave_filename(master_id, filename)
        return self._upload(p, upload_params(None, meta, master_id, prefix))

    def _stream(self, file_id: str, offset: int = 0) -> httpx.Response:
        """GET through the gateway's redirect, from `offset`; the caller closes the answer."""
        resp = self._send(self._calls.download(file_id, offset), stream=True)
        if not resp.is_success:
            try:
                resp.read()
            finally:
                resp.close()
            raise error_from(resp)
        return resp

    def download(self, file_id: str) -> bytes:
        """The whole file in memory (use `download_to` or `open` for big files)."""
        with self.open(file_id) as f:
            return f.read()

    def download_to(self, file_id: str, dest: str | os.PathLike[str] | IO[bytes]) -> int:
        """Stream a file to a path or a binary file object; returns the bytes written.

        A path is written through a temporary file in the same directory and renamed when complete, so a
        failed download never leaves a partial file under the name.
        """
        resp = self._stream(file_id)
        try:
            if hasattr(dest, "write"):
                return _copy(resp.iter_bytes(CHUNK_SIZE), cast("IO[bytes]", dest))
            path = os.fspath(dest)
            fd, tmp = _temp_beside(path)
            try:
                with os.fdopen(fd, "wb") as out:
                    n = _copy(resp.iter_bytes(CHUNK_SIZE), out)
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
            return n
        except httpx.TransportError as e:
            raise unreachable(e, resp.request) from e
        finally:
            resp.close()

    def open(self, file_id: str) -> io.BufferedReader:
        """A read-only, seekable file object streaming the file (a seek reopens it with a Range request)."""
        return io.BufferedReader(RemoteFile(self, file_id), buffer_size=CHUNK_SIZE)

    def info(self, file_id: str) -> FileInfo:
        """What the cluster knows about a file: decoded facts, locations, metadata."""
        return self._run(self._calls.info(file_id))

    def exists(self, file_id: str) -> bool:
        """Whether the cluster has the file: a HEAD through the gateway's redirect to a storage node."""
        return self._run(self._calls.exists(file_id))

    def meta(self, file_id: str) -> dict[str, str]:
        """The file's metadata."""
        return self._run(self._calls.meta(file_id))

    def set_meta(self, file_id: str, meta: Mapping[str, str]) -> dict[str, str]:
        """Replace all metadata; returns what is now stored."""
        return self._run(self._calls.set_meta(file_id, meta))

    def merge_meta(self, file_id: str, changes: Mapping[str, str | None]) -> dict[str, str]:
        """Merge into the metadata (a None value removes the key); returns what is now stored."""
        return self._run(self._calls.merge_meta(file_id, changes))

    def delete(self, file_id: str, slaves: bool = False) -> DeleteResult:
        """Delete a file on every member of its group, with the thumbnails the nodes rendered from it; `NotFound`
        if there is no such file.

        Slave files uploaded next to it (`upload_slave`) stay, as in FastDFS, unless `slaves=True`: then they go
        too and the answer lists them under `slaves_deleted`.
        """
        return self._run(self._calls.delete(file_id, slaves))

    def cluster(self) -> dict[str, Any]:
        """Groups, members, state, space and sync progress (`GET /cluster`)."""
        return self._run(self._calls.cluster())


def _temp_beside(path: str) -> tuple[int, str]:
    """A new file next to `path` for writing, with the permissions the umask gives (mkstemp would make 0600)."""
    directory, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{base}.{secrets.token_hex(4)}.part")
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp


def _copy(chunks: Iterator[bytes], out: IO[bytes]) -> int:
    n = 0
    for chunk in chunks:
        out.write(chunk)
        n += len(chunk)
    return n


class RemoteFile(io.RawIOBase):
    """A file in the cluster as a raw, seekable, read-only stream (wrap it in `io.BufferedReader`).

    The first request is made at once (so a missing file raises `NotFound` here); a seek elsewhere than the
    current position closes the stream and the next read asks for `Range: bytes=POS-`.
    """

    def __init__(self, client: Client, file_id: str) -> None:
        super().__init__()
        self._client = client
        # No `name` attribute: code that sees one (Django's File.size) takes it for a local path.
        self.file_id = file_path(file_id)
        self._pos = 0
        self._size: int | None = None
        self._resp: httpx.Response | None = None
        self._chunks: Iterator[bytes] | None = None
        self._pending = b""
        self._open_at(0)

    @property
    def size(self) -> int | None:
        """The file's size, when the node said it."""
        return self._size

    def _drop(self) -> None:
        if self._resp is not None:
            self._resp.close()
        self._resp = None
        self._chunks = None
        self._pending = b""

    def _open_at(self, pos: int) -> None:
        self._drop()
        if self._size is not None and pos >= self._size:
            self._chunks = iter(())
            return
        resp = self._client._stream(self.file_id, pos)
        try:
            size = stream_size(resp, pos)
        except BaseException:
            resp.close()
            raise
        if size is not None:
            self._size = size
        self._resp = resp
        self._chunks = resp.iter_bytes(CHUNK_SIZE)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._pos + offset
        elif whence == io.SEEK_END:
            if self._size is None:
                raise OSError("the file's size is unknown")
            target = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if target < 0:
            raise ValueError("negative seek position")
        if target != self._pos:
            self._drop()
            self._pos = target
        return self._pos

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        if not view:
            return 0
        if self._chunks is None:
            self._open_at(self._pos)
        while not self._pending:
            assert self._chunks is not None
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
            except httpx.TransportError as e:
                assert self._resp is not None
                raise unreachable(e, self._resp.request) from e
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        self._pos += n
        return n

    def close(self) -> None:
        self._drop()
        super().close()


class AsyncClient(_Base):
    """The asyncio twin of `Client` (same methods, awaitable; `open` is an async context manager)."""

    def __init__(
        self,
        gateway: str,
        api_key: str | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(gateway, api_key, timeout)
        self._http = httpx.AsyncClient(base_url=self.gateway, timeout=timeout, transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: Call[Any], content: Any = None, *, stream: bool = False) -> httpx.Response:
        req = self._http.build_request(
            call.method, call.url, params=call.params, headers=call.headers, json=call.json, content=content
        )
        try:
            return await self._http.send(req, stream=stream, follow_redirects=call.follow_redirects)
        except httpx.TransportError as e:
            raise unreachable(e, req) from e

    async def _run(self, call: Call[T], content: Any = None) -> T:
        return call.parse(await self._send(call, content))

    async def _upload(self, p: _AsyncPrepared, params: dict[str, str]) -> UploadResult:
        try:
            return await self._run(self._calls.upload(p.filename, params, p.headers()), _async_body(p))
        finally:
            p.close()

    async def upload(
        self,
        source: Source | AsyncIterable[bytes],
        filename: str | None = None,
        group: str | None = None,
        meta: Mapping[str, str] | None = None,
        *,
        size: int | None = None,
        thumbnails: Iterable[str] | None = None,
    ) -> UploadResult:
        """As `Client.upload`; file objects are read in a worker thread, async iterables are sent as they come."""
        params = upload_params(
            group,
            meta,
            thumbnails=thumbnails,
        )
        return await self._upload(_prepare_async(source, filename, size), params)

    async def upload_slave(
        self,
        master_id: str,
        prefix: str,
        source: Source | AsyncIterable[bytes],
        filename: str | None = None,
        meta: Mapping[str, str] | None = None,
        *,
        size: int | None = None,
    ) -> UploadResult:
        """As `Client.upload_slave`."""
        p = _prepare_async(source, filename, size)
        p.filename = _slave_filename(master_id, filename)
        return await self._upload(p, upload_params(None, meta, master_id, prefix))

    async def _stream(self, file_id: str) -> httpx.Response:
        resp = await self._send(self._calls.download(file_id), stream=True)
        if not resp.is_success:
            try:
                await resp.aread()
            finally:
                await resp.aclose()
            raise error_from(resp)
        return resp

    async def download(self, file_id: str) -> bytes:
        """The whole file in memory."""
        async with self.open(file_id) as f:
            return await f.read()

    async def download_to(self, file_id: str, dest: str | os.PathLike[str] | IO[bytes]) -> int:
        """As `Client.download_to` (file writes happen in a worker thread)."""
        async with self.open(file_id) as f:
            if hasattr(dest, "write"):
                out = cast("IO[bytes]", dest)
                n = 0
                async for chunk in f:
                    await asyncio.to_thread(out.write, chunk)
                    n += len(chunk)
                return n
            path = os.fspath(dest)
            fd, tmp = _temp_beside(path)
            try:
                with os.fdopen(fd, "wb") as w:
                    n = 0
                    async for chunk in f:
                        await asyncio.to_thread(w.write, chunk)
                        n += len(chunk)
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
            return n

    def open(self, file_id: str) -> AsyncRemoteFile:
        """`async with client.open(id) as f:` then `await f.read(n)` or `async for chunk in f`."""
        return AsyncRemoteFile(self, file_id)

    async def info(self, file_id: str) -> FileInfo:
        return await self._run(self._calls.info(file_id))

    async def exists(self, file_id: str) -> bool:
        return await self._run(self._calls.exists(file_id))

    async def meta(self, file_id: str) -> dict[str, str]:
        return await self._run(self._calls.meta(file_id))

    async def set_meta(self, file_id: str, meta: Mapping[str, str]) -> dict[str, str]:
        return await self._run(self._calls.set_meta(file_id, meta))

    async def merge_meta(self, file_id: str, changes: Mapping[str, str | None]) -> dict[str, str]:
        return await self._run(self._calls.merge_meta(file_id, changes))

    async def delete(self, file_id: str, slaves: bool = False) -> DeleteResult:
        return await self._run(self._calls.delete(file_id, slaves))

    async def cluster(self) -> dict[str, Any]:
        return await self._run(self._calls.cluster())


class _AsyncPrepared(Prepared):
    aiter: AsyncIterable[bytes] | None = None


def _prepare_async(source: Source | AsyncIterable[bytes], filename: str | None, size: int | None) -> _AsyncPrepared:
    if hasattr(source, "__aiter__"):
        p = _AsyncPrepared(b"", filename, size)
        p.data = None
        p.size = size
        p.aiter = cast("AsyncIterable[bytes]", source)
        return p
    return _AsyncPrepared(source, filename, size)


async def _async_body(p: _AsyncPrepared) -> AsyncIterator[bytes]:
    if p.aiter is not None:
        async for chunk in p.aiter:
            yield chunk
    elif p.data is not None:
        yield p.data
    elif p.fileobj is not None:
        f = p.fileobj
        while True:
            chunk = await asyncio.to_thread(f.read, CHUNK_SIZE)
            if not chunk:
                return
            yield chunk
    else:
        assert p.chunks is not None
        for chunk in p.chunks:
            yield chunk


class AsyncRemoteFile:
    """A streamed download for `AsyncClient.open`."""

    def __init__(self, client: AsyncClient, file_id: str) -> None:
        self._client = client
        self.file_id = file_path(file_id)
        self._resp: httpx.Response | None = None
        self._chunks: AsyncIterator[bytes] | None = None
        self._pending = b""
        self.size: int | None = None

    async def __aenter__(self) -> AsyncRemoteFile:
        self._resp = await self._client._stream(self.file_id)
        self.size = stream_size(self._resp, 0)
        self._chunks = self._resp.aiter_bytes(CHUNK_SIZE)
        return self

    async def __aexit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._resp is not None:
            await self._resp.aclose()

    async def _next(self) -> bytes:
        if self._chunks is None or self._resp is None:
            raise ValueError("use `async with client.open(file_id) as f`")
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            return b""
        except httpx.TransportError as e:
            raise unreachable(e, self._resp.request) from e

    async def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes (all that is left when `n` < 0); b"" at the end."""
        if n < 0:
            parts = [self._pending]
            self._pending = b""
            while chunk := await self._next():
                parts.append(chunk)
            return b"".join(parts)
        if not self._pending:
            self._pending = await self._next()
        out, self._pending = self._pending[:n], self._pending[n:]
        return out

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[bytes]:
        if self._pending:
            chunk, self._pending = self._pending, b""
            yield chunk
        while chunk := await self._next():
            yield chunk


__all__ = ["AsyncClient", "AsyncRemoteFile", "Client", "NotFound", "RemoteFile"]
