"""Python client and Django storage backend for the fdfs HTTP gateway.

from fdfs_http import Client
with Client("http://127.0.0.1:8080") as fdfs:
    file_id = fdfs.upload("photo.jpg", meta={"author": "alice"})["file_id"]
    data = fdfs.download(file_id)
"""

from ._common import CHUNK_SIZE, FileInfo, Source, UploadResult
from .client import AsyncClient, AsyncRemoteFile, Client, RemoteFile
from .errors import FdfsError, InvalidFileId, NotFound, Unreachable
from .fileid import FileIdInfo, decode, is_file_id, make_token, signed_query, slave_id

__version__ = "0.1.0"

__all__ = [
    "CHUNK_SIZE",
    "AsyncClient",
    "AsyncRemoteFile",
    "Client",
    "FdfsError",
    "FileIdInfo",
    "FileInfo",
    "InvalidFileId",
    "NotFound",
    "RemoteFile",
    "Source",
    "Unreachable",
    "UploadResult",
    "decode",
    "is_file_id",
    "make_token",
    "signed_query",
    "slave_id",
]
