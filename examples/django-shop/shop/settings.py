"""Settings of the example shop: product images live in an fdfs cluster (`FdfsStorage` is the default storage).

The storage reads its settings from the environment (or from FDFS_* settings here): FDFS_GATEWAY (default
http://127.0.0.1:8080, what `fdfs up` prints), FDFS_API_KEY, FDFS_BASE_URL (where image URLs point; default the
gateway), FDFS_LEGACY_BASE_URL (while old images in MEDIA_ROOT move in with `manage.py fdfs_migrate_media`), ...
(the README's table). The shop's own: SHOP_DB (SQLite file), SHOP_DEBUG (1 by default), SHOP_MEDIA_ROOT.
"""

import os
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("SHOP_SECRET_KEY", "example-shop-not-for-production")
DEBUG = os.environ.get("SHOP_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "fdfs_http.django",  # FDFS_* settings checked at start, {% load fdfs %}, manage.py fdfs_migrate_media
    "catalog",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "shop.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
WSGI_APPLICATION = "shop.wsgi.application"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SHOP_DB", str(BASE_DIR / "db.sqlite3")),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"
# Where pictures were kept before fdfs: what `manage.py fdfs_migrate_media` moves in.
MEDIA_ROOT = os.environ.get("SHOP_MEDIA_ROOT", str(BASE_DIR / "media"))

STORAGES: dict[str, dict[str, Any]] = {
    # Uploaded files (product images) go to fdfs; the model keeps the file ID. Settings: FDFS_* (environment).
    "default": {"BACKEND": "fdfs_http.django.FdfsStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
