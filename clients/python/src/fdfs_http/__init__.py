"""Python client and Django storage backend for the fdfs HTTP gateway.

from fdfs_http import Client
with Client("http://127.0.0.1:8080") as fdfs:
    file_id = fdfs.upload("photo.jpg", meta={"author": "alice"})["file_id"]
    data = fdfs.download(file_id)
"""

from ._common import CHUNK_SIZE, DeleteResult, FileInfo, Source, Thumbnail, UploadResult
from .client import AsyncClient, AsyncRemoteFile, Client, RemoteFile
from .errors import FdfsError, InvalidFileId, NotFound, Unreachable
from .fileid import (
    FileIdInfo,
    ThumbnailSize,
    decode,
    is_file_id,
    make_token,
    parse_thumbnail_size,
    signed_query,
    slave_id,
    thumbnail_id,
)

__version__ = "0.1.0"

__all__ = [
    "CHUNK_SIZE",
    "AsyncClient",
    "AsyncRemoteFile",
    "Client",
    "DeleteResult",
    "FdfsError",
    "FileIdInfo",
    "FileInfo",
    "InvalidFileId",
    "NotFound",
    "RemoteFile",
    "Source",
    "Thumbnail",
    "ThumbnailSize",
    "Unreachable",
    "UploadResult",
    "decode",
    "is_file_id",
    "make_token",
    "parse_thumbnail_size",
    "signed_query",
    "slave_id",
    "thumbnail_id",
]
