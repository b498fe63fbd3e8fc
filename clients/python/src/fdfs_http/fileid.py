"""FastDFS file IDs and anti-leech tokens, computed locally (no network).

This mirrors `common/src/fileid.rs` and `common/src/token.rs` of the fdfs repository exactly: an ID is
`{group}/M{idx:02X}/{XX}/{YY}/{name}` where the first 27 characters of `name` are URL-safe base64 (no padding) of
20 big-endian bytes `source id (4) | created (4) | size field (8) | CRC32 (4)`; a master name then has
`6 - len(ext)` random digits and an optional `.ext` (FastDFS's own names have 7 digits when there is no extension),
a slave name keeps its master's digits and adds a prefix.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from .errors import InvalidFileId

ENCODED_LEN = 27
MAX_EXT_LEN = 6
MAX_PREFIX_LEN = 16
MAX_GROUP_LEN = 16
_RANDOM_MARK = 1 << 63
_LOW32 = (1 << 32) - 1

_GROUP = re.compile(r"[A-Za-z0-9_-]{1,16}\Z")
_HEX2 = re.compile(r"[0-9A-F]{2}\Z")
_EXT = re.compile(r"[A-Za-z0-9]{1,6}\Z")
_PREFIX = re.compile(r"[A-Za-z_-][A-Za-z0-9_-]{0,15}\Z")
_B64 = re.compile(r"[A-Za-z0-9_-]{27}\Z")
# 20 bytes in 27 characters leave 2 unused bits in the last one: they must be zero (the Rust decoder checks it).
_LAST = frozenset("AEIMQUYcgkosw048")


@dataclass(frozen=True)
class FileIdInfo:
    """What a file ID says about its file, decoded without asking the cluster."""

    file_id: str
    group: str
    store_path: int
    """Index of the store path on the storage node (`M00` = 0)."""
    source_id: int
    """Id of the storage node that first stored the file (FastDFS: its IPv4 address)."""
    created: int
    """Creation time, unix seconds."""
    size: int
    """Size in bytes (for a slave file: its master's size, which the name encodes)."""
    crc32: int
    """CRC32 (IEEE) of the content (for a slave file: its master's)."""
    prefix: str | None
    """The slave prefix (e.g. `_150x150`), or None for a master file."""
    ext: str | None
    """The extension without the dot, or None."""
    master_len: int
    """Length of the master part of the name (encoded part + random digits)."""

    @property
    def created_at(self) -> datetime:
        """The creation time as an aware UTC datetime."""
        return datetime.fromtimestamp(self.created, tz=timezone.utc)

    @property
    def crc32_hex(self) -> str:
        """The CRC32 as 8 lower-case hex digits, as the gateway writes it."""
        return f"{self.crc32:08x}"

    @property
    def source_ip(self) -> str:
        """The source id read as an IPv4 address (what FastDFS puts there)."""
        return str(ipaddress.IPv4Address(self.source_id))

    @property
    def path_in_group(self) -> str:
        """The ID without its group, `M00/XX/YY/name` (what anti-leech tokens sign)."""
        return self.file_id.split("/", 1)[1]

    @property
    def is_slave(self) -> bool:
        return self.prefix is not None


def _decode_name(encoded: str, file_id: str) -> tuple[int, int, int, int]:
    if not _B64.match(encoded) or encoded[-1] not in _LAST:
        raise InvalidFileId(file_id, "encoded part must be 27 characters of URL-safe base64")
    try:
        raw = base64.b64decode(encoded + "=", altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as e:  # pragma: no cover - the regex above admits only valid input
        raise InvalidFileId(file_id, "encoded part is not URL-safe base64") from e
    source_id = int.from_bytes(raw[0:4], "big")
    created = int.from_bytes(raw[4:8], "big")
    field = int.from_bytes(raw[8:16], "big")
    size = field & _LOW32 if field & _RANDOM_MARK else field
    crc32 = int.from_bytes(raw[16:20], "big")
    return source_id, created, size, crc32


def decode(file_id: str) -> FileIdInfo:
    """Validate and decode a file ID; raises `InvalidFileId` (a `ValueError`) for anything malformed."""
    if not isinstance(file_id, str):
        raise InvalidFileId(repr(file_id), "a file ID is a string")
    fid = file_id[1:] if file_id.startswith("/") else file_id
    parts = fid.split("/")
    if len(parts) != 5:
        raise InvalidFileId(file_id, f"must look like group/M00/XX/YY/name, got {len(parts)} parts")
    group, sp, d1, d2, name = parts
    if not _GROUP.match(group):
        raise InvalidFileId(file_id, "group name: 1-16 characters of A-Z a-z 0-9 _ -")
    if not (sp.startswith("M") and _HEX2.match(sp[1:])):
        raise InvalidFileId(file_id, "store path: M followed by two upper-case hex digits")
    if not (_HEX2.match(d1) and _HEX2.match(d2)):
        raise InvalidFileId(file_id, "directories: two upper-case hex digits each")
    if not name.isascii() or len(name) < ENCODED_LEN:
        raise InvalidFileId(file_id, "file name too short or not ASCII")
    source_id, created, size, crc32 = _decode_name(name[:ENCODED_LEN], file_id)
    rest = name[ENCODED_LEN:]
    ext: str | None = None
    body = rest
    if "." in rest:
        body, ext = rest.rsplit(".", 1)
        if not _EXT.match(ext):
            raise InvalidFileId(file_id, "extension: 1-6 characters of A-Z a-z 0-9")
    digits = len(body) - len(body.lstrip("0123456789"))
    prefix = body[digits:]
    if not prefix:
        # Without an extension FastDFS pads to 7 digits, fdfs to 6: both are master names.
        expected = MAX_EXT_LEN - (len(ext) if ext else 0)
        if digits != expected and not (ext is None and digits == MAX_EXT_LEN + 1):
            raise InvalidFileId(file_id, "wrong number of random digits")
    else:
        if digits > MAX_EXT_LEN + 1:
            raise InvalidFileId(file_id, "too many random digits")
        if not _PREFIX.match(prefix):
            raise InvalidFileId(file_id, "slave prefix: 1-16 of A-Z a-z 0-9 _ -, not starting with a digit")
    return FileIdInfo(
        file_id=fid,
        group=group,
        store_path=int(sp[1:], 16),
        source_id=source_id,
        created=created,
        size=size,
        crc32=crc32,
        prefix=prefix or None,
        ext=ext,
        master_len=ENCODED_LEN + digits,
    )


def is_file_id(value: str) -> bool:
    """True when `value` is a well-formed file ID."""
    try:
        decode(value)
    except InvalidFileId:
        return False
    return True


def slave_id(master_id: str, prefix: str, ext: str | None = None) -> str:
    """The ID a slave file of `master_id` with `prefix` gets: same directory, master part + prefix + ext.

    `ext` defaults to the master's extension (pass `""` for none).
    """
    info = decode(master_id)
    if info.is_slave:
        raise InvalidFileId(master_id, "a slave file cannot have slaves")
    if not _PREFIX.match(prefix):
        raise InvalidFileId(prefix, "slave prefix: 1-16 of A-Z a-z 0-9 _ -, not starting with a digit")
    if ext is None:
        ext = info.ext or ""
    directory, name = info.file_id.rsplit("/", 1)
    out = f"{directory}/{name[: info.master_len]}{prefix}" + (f".{ext}" if ext else "")
    decode(out)
    return out


THUMBNAIL_FORMATS = ("jpg", "jpeg", "png", "gif", "webp")
"""Extensions a thumbnail can have: its master's own format, or WebP."""
MAX_THUMBNAIL_SIDE = 8192
_SIZE = re.compile(r"(\d{1,5})x(\d{1,5})(c?)\Z")


@dataclass(frozen=True)
class ThumbnailSize:
    """A thumbnail size as the storage nodes' `thumbnail_sizes` write it: `WxH`, `c` to crop, one side may be 0."""

    width: int
    height: int
    crop: bool

    def __str__(self) -> str:
        return f"{self.width}x{self.height}" + ("c" if self.crop else "")


def parse_thumbnail_size(size: str) -> ThumbnailSize:
    """Parse `300x300`, `200x200c` or `800x0` as the storage nodes do; `ValueError` for anything else."""
    m = _SIZE.match(size.strip())
    if m is None:
        raise ValueError(f"invalid thumbnail size {size!r}: expected WxH or WxHc, e.g. 300x300")
    w, h, crop = int(m[1]), int(m[2]), m[3] == "c"
    if (w == 0 and h == 0) or w > MAX_THUMBNAIL_SIDE or h > MAX_THUMBNAIL_SIDE:
        raise ValueError(f"invalid thumbnail size {size!r}: sides up to {MAX_THUMBNAIL_SIDE}, not both 0")
    if crop and (w == 0 or h == 0):
        raise ValueError(f"invalid thumbnail size {size!r}: crop needs both sides")
    return ThumbnailSize(w, h, crop)


def thumbnail_id(master_id: str, size: str, fmt: str | None = None) -> str:
    """The ID of the thumbnail the storage nodes render of `master_id` at `size` (`300x300`), no network.

    It is the slave `<master>_300x300.<ext>`, where `ext` is `fmt` (`webp`, or the master's own format) or by
    default the master's extension. A node renders it on its first read if `size` is in its `thumbnail_sizes`.
    """
    spec = parse_thumbnail_size(size)
    ext = fmt.lower() if fmt else decode(master_id).ext
    if ext is None or ext.lower() not in THUMBNAIL_FORMATS:
        raise ValueError(
            f"no thumbnail of {master_id!r} as {ext!r}: thumbnails are {', '.join(THUMBNAIL_FORMATS)} (the master's "
            "format or webp)"
        )
    return slave_id(master_id, f"_{spec}", ext)


def make_token(file_id: str, secret: str, ts: int) -> str:
    """FastDFS anti-leech token: `hex(md5(path_in_group + secret + ts))`."""
    info = decode(file_id)
    return hashlib.md5(f"{info.path_in_group}{secret}{ts}".encode(), usedforsecurity=False).hexdigest()


def signed_query(file_id: str, secret: str, ttl: int | None = None, now: int | None = None) -> str:
    """The query `token=...&ts=...` that storage nodes configured with `secret` accept.

    A node accepts a token for `ttl` seconds (its `token_ttl_secs`) after `ts`. Without `ttl`, `ts` is now. With
    `ttl`, `ts` is now rounded down to a multiple of `ttl // 2`, so that the same link is produced for a while (it
    can be cached by browsers and CDNs) and still stays valid for at least `ttl // 2` seconds.
    """
    ts = int(time.time()) if now is None else int(now)
    if ttl is not None:
        if ttl < 2:
            raise ValueError("ttl must be at least 2 seconds")
        step = ttl // 2
        ts -= ts % step
    return f"token={make_token(file_id, secret, ts)}&ts={ts}"
