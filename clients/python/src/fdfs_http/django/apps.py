"""The `fdfs_http.django` app: checks every `FdfsStorage` of `STORAGES` when Django starts, and brings the
`{% load fdfs %}` tags and the `fdfs_migrate_media` command."""

from __future__ import annotations

from typing import Any, cast

from django.apps import AppConfig
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.functional import LazyObject, empty
from django.utils.module_loading import import_string


class FdfsConfig(AppConfig):
    name = "fdfs_http.django"
    label = "fdfs"
    verbose_name = "fdfs"

    def ready(self) -> None:
        setting_changed.connect(_reset_storages, dispatch_uid="fdfs_http.reset_storages")
        check_storages()


def fdfs_aliases() -> list[str]:
    """The keys of `STORAGES` whose backend is an `FdfsStorage`."""
    from .storage import FdfsStorage

    out = []
    for alias, spec in cast(dict[str, dict[str, Any]], settings.STORAGES).items():
        backend = spec.get("BACKEND", "")
        try:
            cls = import_string(backend)
        except ImportError:
            continue  # Django reports it when the storage is used
        if isinstance(cls, type) and issubclass(cls, FdfsStorage):
            out.append(alias)
    return out


def check_storages() -> None:
    """Make every `FdfsStorage` of `STORAGES` (and its legacy storage): a bad setting raises
    `ImproperlyConfigured` naming it, here rather than on the first request."""
    from django.core.files.storage import storages

    from .storage import FdfsStorage

    for alias in fdfs_aliases():
        try:
            storage = storages[alias]
            assert isinstance(storage, FdfsStorage)
            if storage.config.legacy_storage:
                _ = storage.legacy_storage
        except ImproperlyConfigured as e:
            raise ImproperlyConfigured(f"STORAGES[{alias!r}]: {e}") from e


def _reset_storages(*, setting: str, **kwargs: Any) -> None:
    """An `FDFS_*` setting changed (tests' `override_settings`): storages are made again with it."""
    # Imported here: AppConfig.create() inspects this module's names, which would make the default storage.
    from django.core.files.storage import default_storage, storages

    if setting.startswith("FDFS_") or setting in ("MEDIA_ROOT", "MEDIA_URL"):
        # As Django's own `storages_changed` does for STORAGES.
        storages._storages = {}  # type: ignore[attr-defined]
        cast("LazyObject[Any]", default_storage)._wrapped = empty
