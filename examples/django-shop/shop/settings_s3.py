"""The example shop with its pictures behind the cluster's S3 door, through django-storages' `S3Storage` (what a
shop already on S3 uses): only the endpoint changes. Run with DJANGO_SETTINGS_MODULE=shop.settings_s3 and
SHOP_S3_ENDPOINT (what `fdfs up --s3-port 9000` prints), SHOP_S3_ACCESS_KEY, SHOP_S3_SECRET_KEY, SHOP_S3_BUCKET
(default "shop"; create it first, e.g. `aws s3 mb`). Each picture is still one FastDFS file: the S3 door answers
its file ID in `x-fdfs-file-id`, and storage nodes and nginx serve it under that ID.
"""

import os

from .settings import *  # noqa: F403 - the same shop, another storage

STORAGES = {
    "default": {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "endpoint_url": os.environ.get("SHOP_S3_ENDPOINT", "http://127.0.0.1:9000"),
            "access_key": os.environ.get("SHOP_S3_ACCESS_KEY", ""),
            "secret_key": os.environ.get("SHOP_S3_SECRET_KEY", ""),
            "bucket_name": os.environ.get("SHOP_S3_BUCKET", "shop"),
            "region_name": "us-east-1",
            "addressing_style": "path",
            # Picture URLs are presigned (the bucket is private), valid for an hour.
            "querystring_auth": True,
            "querystring_expire": 3600,
            "file_overwrite": False,
        },
    },
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
