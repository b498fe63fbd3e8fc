"""Deleting a master through Django and the clients removes the thumbnails the cluster rendered from it on every
member of its group (checked on each storage node: over HTTP and on its disk); uploaded slaves stay unless asked."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import httpx
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from PIL import Image

from fdfs_http import AsyncClient, Client, decode, thumbnail_id
from fdfs_http.django import FdfsStorage
from fdfs_http.testing import LocalCluster, Member


def jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (30, 140, 60)).save(buf, format="JPEG")
    return buf.getvalue()


def members_of(cluster: LocalCluster, file_id: str) -> list[Member]:
    group = decode(file_id).group
    found = [m for m in cluster.members if m.group == group]
    assert len(found) == 2, cluster.members
    return found


def on_disk(member: Member, file_id: str) -> Path:
    """Where a storage node keeps a file of its first store path: `<store path>/data/XX/YY/<name>`."""
    info = decode(file_id)
    assert info.store_path == 0
    _, _, d1, d2, name = info.file_id.split("/")
    return Path(member.data_dir, "data", d1, d2, name)


def eventually(check: object, what: str, timeout: float = 30.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


def held_by_every_member(cluster: LocalCluster, file_id: str) -> bool:
    return all(on_disk(m, file_id).exists() for m in members_of(cluster, file_id))


def gone_from_every_member(cluster: LocalCluster, file_id: str) -> bool:
    """Not on any member's disk, and each node answers 404 (which also shows a thumbnail is not rendered again)."""
    for m in members_of(cluster, file_id):
        if on_disk(m, file_id).exists() or httpx.get(f"{m.url}/{file_id}").status_code != 404:
            return False
    return True


@pytest.fixture()
def storage(cluster: LocalCluster) -> FdfsStorage:
    s = storages["default"]
    assert isinstance(s, FdfsStorage)
    return s


def render(storage: FdfsStorage, name: str) -> list[str]:
    """Have the cluster render the thumbnails a page would ask for (through the gateway's redirect)."""
    thumbs = [
        storage.thumbnail_name(name, "150x150"),
        storage.thumbnail_name(name, "300x300"),
        storage.thumbnail_name(name, "600x600"),
        storage.thumbnail_name(name, "150x150", "webp"),
    ]
    for t in thumbs:
        resp = httpx.get(storage.url(t), follow_redirects=True)
        assert resp.status_code == 200, (t, resp.text)
        Image.open(io.BytesIO(resp.content)).verify()
    return thumbs


def test_deleting_a_master_removes_its_rendered_thumbnails_on_both_members_and_keeps_uploaded_slaves(
    cluster: LocalCluster, storage: FdfsStorage
) -> None:
    name = storage.save("products/mug.jpg", ContentFile(jpeg(900, 700)))
    thumbs = render(storage, name)
    slave = storage.save_slave(name, "_64x64", ContentFile(jpeg(64, 50), name="small.jpg"))
    for fid in [name, slave, *thumbs]:
        eventually(lambda fid=fid: held_by_every_member(cluster, fid), f"{fid} on both members")

    storage.delete(name)  # what Django's FieldFile.delete() calls

    for fid in [name, *thumbs]:
        eventually(lambda fid=fid: gone_from_every_member(cluster, fid), f"{fid} deleted on both members")
    # A thumbnail asked for again is a 404 that renders nothing (its master is gone).
    resp = httpx.get(storage.url(thumbs[1]), follow_redirects=True)
    assert resp.status_code == 404
    for m in members_of(cluster, name):
        assert not on_disk(m, thumbs[1]).exists()
    # The slave uploaded next to it stays, as in FastDFS.
    assert held_by_every_member(cluster, slave)
    for m in members_of(cluster, slave):
        assert httpx.get(f"{m.url}/{slave}").status_code == 200


def test_delete_with_slaves_removes_the_uploaded_slaves_too(cluster: LocalCluster, storage: FdfsStorage) -> None:
    name = storage.save("products/plate.jpg", ContentFile(jpeg(500, 500)))
    thumbs = render(storage, name)
    slave = storage.save_slave(name, "_64x64", ContentFile(jpeg(64, 64), name="small.jpg"))
    eventually(lambda: held_by_every_member(cluster, slave), "the slave on both members")

    storage.delete(name, slaves=True)

    for fid in [name, slave, *thumbs]:
        eventually(lambda fid=fid: gone_from_every_member(cluster, fid), f"{fid} deleted on both members")


def test_client_delete_answers_the_slaves_it_deleted(cluster: LocalCluster) -> None:
    with Client(cluster.gateway) as client:
        fid = client.upload(jpeg(300, 200), filename="a.jpg", thumbnails=["150x150"])["file_id"]
        slave = client.upload_slave(fid, "_64x64", jpeg(64, 40))["file_id"]
        kept = client.delete(fid)
        assert kept["deleted"] and kept["file_id"] == fid and slave not in kept.get("slaves_deleted", [])
        eventually(lambda: gone_from_every_member(cluster, fid), "the master deleted")
        assert client.exists(slave)

        fid2 = client.upload(jpeg(300, 200), filename="b.jpg")["file_id"]
        slave2 = client.upload_slave(fid2, "_64x64", jpeg(64, 40))["file_id"]
        answer = client.delete(fid2, slaves=True)
        assert slave2 in answer.get("slaves_deleted", [])
        eventually(lambda: gone_from_every_member(cluster, slave2), "the slave deleted")

    async def run() -> None:
        async with AsyncClient(cluster.gateway) as ac:
            fid = (await ac.upload(jpeg(300, 200), filename="c.jpg"))["file_id"]
            slave = (await ac.upload_slave(fid, "_64x64", jpeg(64, 40)))["file_id"]
            answer = await ac.delete(fid, slaves=True)
            assert answer["deleted"] and slave in answer.get("slaves_deleted", [])

    asyncio.run(run())


def test_thumbnail_id_is_the_rendered_slave() -> None:
    fid = "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg"
    assert thumbnail_id(fid, "300x300") == "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419_300x300.jpg"
    assert thumbnail_id(fid, "200x200c", "webp").endswith("419_200x200c.webp")
    for bad in ["300", "0x0", "10x0c", "300x300x"]:
        with pytest.raises(ValueError, match="invalid thumbnail size"):
            thumbnail_id(fid, bad)
    with pytest.raises(ValueError, match="webp"):
        thumbnail_id(fid, "300x300", "bmp")
