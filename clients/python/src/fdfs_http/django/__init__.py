"""Django integration: `FdfsStorage` keeps files in an fdfs cluster and the file ID in the model.

    STORAGES = {
        "default": {"BACKEND": "fdfs_http.django.FdfsStorage"},   # settings: FDFS_GATEWAY, ... (see conf)
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    INSTALLED_APPS = [..., "fdfs_http.django"]   # settings checked at start, {% load fdfs %}, fdfs_migrate_media

The stored name of a file is its fdfs file ID (`group1/M00/0A/1F/<name>.jpg`); the name a model asked for
(`products/mug.jpg`) gives the extension and is kept in the file's metadata as `filename`.
"""

from .storage import FdfsStorage

__all__ = ["FdfsStorage"]
