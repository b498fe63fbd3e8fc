"""Prepares the browser form upload by presigned POST (s3post.test.mjs): creates a bucket on the S3 door, has
boto3 sign a POST policy (size 1 byte to 1 MiB, key under `uploads/`, Content-Type image/png, answer 201), and
writes the HTML page with that form (a real `<input type=file>`, the key in a text field a user could edit) and
a JSON file with presigned GET URLs of what the checks read back: the object the form stores, and the bucket's
listing.

usage: python s3_post_form.py S3_URL ACCESS_KEY SECRET_KEY OUT_DIR
"""

from __future__ import annotations

import html
import json
import sys
from pathlib import Path
from typing import Any

import boto3
from botocore.client import Config

BUCKET = "e2e-forms"
MAX_SIZE = 1 << 20


def main() -> None:
    url, access_key, secret_key, out = sys.argv[1:5]
    s3: Any = boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    s3.create_bucket(Bucket=BUCKET)
    post = s3.generate_presigned_post(
        BUCKET,
        "uploads/${filename}",
        Fields={"Content-Type": "image/png", "success_action_status": "201"},
        Conditions=[
            ["content-length-range", 1, MAX_SIZE],
            ["starts-with", "$key", "uploads/"],
            {"Content-Type": "image/png"},
            {"success_action_status": "201"},
        ],
        ExpiresIn=900,
    )
    hidden = "\n".join(
        f'    <input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in post["fields"].items()
        if k != "key"
    )
    page = f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Upload a picture</title></head>
<body>
  <h1>Upload a picture</h1>
  <form id="upload" action="{html.escape(post["url"])}" method="post" enctype="multipart/form-data">
    <label>Key <input id="key" type="text" name="key" value="{html.escape(post["fields"]["key"])}" size="40"></label>
{hidden}
    <label>Picture <input id="file" type="file" name="file" accept="image/png"></label>
    <button id="send" type="submit">Upload</button>
  </form>
</body>
</html>
"""
    Path(out, "form.html").write_text(page)

    def presigned(method: str, **params: Any) -> str:
        return str(s3.generate_presigned_url(method, Params={"Bucket": BUCKET, **params}, ExpiresIn=900))

    urls = {
        "bucket": BUCKET,
        "max_size": MAX_SIZE,
        "get_photo": presigned("get_object", Key="uploads/photo.png"),
        "list": presigned("list_objects_v2"),
    }
    Path(out, "urls.json").write_text(json.dumps(urls))


if __name__ == "__main__":
    main()
