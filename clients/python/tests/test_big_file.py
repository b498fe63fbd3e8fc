"""A 1 GiB upload and download stream with flat client memory (the data is generated, never written whole)."""

from __future__ import annotations

import io
import os
import resource
import tracemalloc
import zlib
from typing import Any

from fdfs_http import Client, decode

SIZE = int(os.environ.get("FDFS_PY_BIG_FILE_MB", "1024")) << 20
# Python allocations at the peak of a transfer: a few chunks in flight, not the file.
MAX_TRACED = 16 << 20
MAX_RSS_GROWTH = 64 << 20


class Generated(io.RawIOBase):
    """A non-seekable file object of `size` pseudo-random bytes, produced as it is read."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.block = os.urandom(1 << 20)
        self.n = 0
        self.crc = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        k = min(len(view), self.left, len(self.block))
        if k <= 0:
            return 0
        shift = (self.n * 7919) % len(self.block)
        chunk = (self.block[shift:] + self.block[:shift])[:k]
        view[:k] = chunk
        self.crc = zlib.crc32(chunk, self.crc)
        self.left -= k
        self.n += 1
        return k


class CrcSink(io.RawIOBase):
    def __init__(self) -> None:
        self.crc = 0
        self.n = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.crc = zlib.crc32(b, self.crc)
        self.n += len(b)
        return len(b)


def max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def test_one_gib_streams_up_and_down_with_flat_memory(client: Client) -> None:
    src = Generated(SIZE)
    rss_before = max_rss()
    tracemalloc.start()
    try:
        result = client.upload(src, filename="big.bin", size=SIZE)
        _, upload_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        sink = CrcSink()
        assert client.download_to(result["file_id"], sink) == SIZE  # type: ignore[arg-type]
        _, download_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss_growth = max_rss() - rss_before
    print(
        f"1 GiB: upload peak {upload_peak / 2**20:.1f} MiB traced, download peak {download_peak / 2**20:.1f} MiB"
        f" traced, max RSS growth {rss_growth / 2**20:.1f} MiB"
    )
    assert result["size"] == SIZE
    info = decode(result["file_id"])
    assert info.size == SIZE and info.crc32 == src.crc
    assert sink.n == SIZE and sink.crc == src.crc
    assert upload_peak < MAX_TRACED, upload_peak
    assert download_peak < MAX_TRACED, download_peak
    assert rss_growth < MAX_RSS_GROWTH, rss_growth
    client.delete(result["file_id"])
