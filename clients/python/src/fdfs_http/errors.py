"""The exceptions of fdfs_http: every failure is an `FdfsError`."""

from __future__ import annotations


class FdfsError(Exception):
    """A request failed: the gateway's error `code` and `message`, the HTTP `status` (None when no answer), and
    the request's `method` and `url` (None for a check made before any request, such as a malformed ID).

    `str(error)` reads `PUT http://gw:8080/upload/a.jpg: message (HTTP 413 payload_too_large)`.
    """

    def __init__(
        self,
        code: str,
        message: str,
        status: int | None = None,
        *,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        where = f"{method} {url}: " if method and url else ""
        what = f"HTTP {status} {code}" if status is not None else code
        super().__init__(f"{where}{message} ({what})")
        self.code = code
        self.message = message
        self.status = status
        self.method = method
        self.url = url


class NotFound(FdfsError, FileNotFoundError):
    """The file (or its group) does not exist: HTTP 404, code `not_found`.

    Also a `FileNotFoundError`, so code written for files on disk (Django's, thumbnail libraries') handles it.
    """


class Unreachable(FdfsError):
    """No answer from the gateway (or the storage node it redirected to): connection refused, timeout, ..."""

    def __init__(self, message: str, *, method: str | None = None, url: str | None = None) -> None:
        super().__init__("unreachable", message, None, method=method, url=url)


class InvalidFileId(FdfsError, ValueError):
    """A string is not a well-formed file ID (checked locally, before any request)."""

    def __init__(self, file_id: str, why: str) -> None:
        super().__init__("bad_file_id", f"invalid file ID {file_id!r}: {why}", None)
