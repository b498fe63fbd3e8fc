"""File ID decoding and anti-leech tokens agree with the Rust implementation (`fdfs sign`, `fdfs info --offline`)."""

from __future__ import annotations

import json
import subprocess

import pytest

from fdfs_http import InvalidFileId, decode, is_file_id, make_token, signed_query, slave_id

FASTDFS_ID = "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg"


def test_decodes_a_fastdfs_name_like_the_rust_codec() -> None:
    info = decode(FASTDFS_ID)
    assert info.source_id == (192 << 24) | (168 << 16) | 3
    assert info.source_ip == "192.168.0.3"
    assert info.created == 1_518_478_775
    assert info.size == 0x5ED3
    assert info.crc32 == 0x1BE9_C774
    assert info.crc32_hex == "1be9c774"
    assert info.ext == "jpg"
    assert info.prefix is None
    assert info.group == "group1"
    assert info.store_path == 0
    assert info.path_in_group == "M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg"
    assert info.created_at.isoformat() == "2018-02-12T23:39:35+00:00"


def test_decodes_a_real_fastdfs_name_without_extension() -> None:
    # Uploaded to FastDFS 6.16 (`fdfs_upload_file`, content "hello fastdfs\n"): 7 random digits, no extension.
    info = decode("group1/M00/00/00/wAACAmsPcvWACMaKAAAADg4Qul08238963")
    assert (info.source_ip, info.size, info.crc32, info.ext, info.prefix) == ("192.0.2.2", 14, 0x0E10BA5D, None, None)
    assert decode("group1/M00/00/00/wAACAmsPcvWACMaKAAAADg4Qul08238963_big").prefix == "_big"
    assert not is_file_id("group1/M00/00/00/wAACAmsPcvWACMaKAAAADg4Qul082389631")


def test_leading_slash_is_accepted_and_dropped() -> None:
    assert decode("/" + FASTDFS_ID).file_id == FASTDFS_ID


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "group1",
        "group1/M00/00/00",
        "group1/M00/00/00/../../etc/passwd",
        "group1/M00/00/00/..",
        "group1/m00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg",
        "group1/M0G/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg",
        "group1/M00/0a/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg",
        "group1/M00/00/000/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg",
        "gr oup/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg",
        "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q.jpg",
        "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q4*9.jpg",
        "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jp/g",
        "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.toolong",
        "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.",
        "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg/",
        "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q4199999.jpg",
        "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvp+3Q419.jpg",
        "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpxé419.jpg",
        "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg\0",
        "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419%2F.jpg",
        "a_very_long_group_name/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg",
        # Non-zero trailing bits in the 27th character (the Rust base64 decoder refuses them).
        "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3R419.jpg",
    ],
)
def test_rejects_what_the_rust_parser_rejects(bad: str) -> None:
    with pytest.raises(InvalidFileId):
        decode(bad)
    assert not is_file_id(bad)


def test_slave_ids_match_the_rust_examples() -> None:
    master = "group1/M00/0A/FF/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg"
    slave = slave_id(master, "_150x150")
    assert slave == "group1/M00/0A/FF/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419_150x150.jpg"
    info = decode(slave)
    assert info.prefix == "_150x150"
    assert (info.source_id, info.created, info.size, info.crc32) == (
        decode(master).source_id,
        decode(master).created,
        decode(master).size,
        decode(master).crc32,
    )
    assert slave_id(master, "_s", "png").endswith("419_s.png")
    for bad in ["1bad", "a/b", "waytoolongprefix_x"]:
        with pytest.raises(InvalidFileId):
            slave_id(master, bad)


def test_token_matches_fdfs_sign(fdfs_bin: str) -> None:
    for fid, secret, ts in [
        (FASTDFS_ID, "s3cret", 1000),
        ("group2/M01/AB/CD/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419_150x150.png", "äöü secret", 1_795_000_000),
    ]:
        out = subprocess.run(
            [fdfs_bin, "sign", fid, "--secret", secret, "--ts", str(ts), "--base", "http://n:1"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        assert out == f"http://n:1/{fid}?token={make_token(fid, secret, ts)}&ts={ts}"
        assert signed_query(fid, secret, now=ts) == out.split("?", 1)[1]


def test_signed_query_with_ttl_is_stable_within_half_the_ttl() -> None:
    a = signed_query(FASTDFS_ID, "s", ttl=600, now=1_000_000_000)
    b = signed_query(FASTDFS_ID, "s", ttl=600, now=1_000_000_000 + 199)
    assert a == b
    ts = int(a.rsplit("ts=", 1)[1])
    assert 1_000_000_000 - 300 < ts <= 1_000_000_000


def test_decode_matches_fdfs_info_offline(fdfs_bin: str) -> None:
    for fid in [FASTDFS_ID, slave_id(FASTDFS_ID, "_150x150")]:
        out = subprocess.run([fdfs_bin, "info", "--offline", fid], check=True, capture_output=True, text=True).stdout
        rust = json.loads(out)
        info = decode(fid)
        assert rust["file_id"] == info.file_id
        assert rust["group"] == info.group
        assert rust["source_id"] == info.source_id
        assert rust["created"] == info.created
        assert rust["size"] == info.size
        assert rust["crc32"] == info.crc32_hex
        assert rust.get("prefix") == info.prefix
