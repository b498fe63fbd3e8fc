"""Moving existing media into fdfs (`manage.py fdfs_migrate_media`): every `FileField`/`ImageField` on an
`FdfsStorage` whose value is not a file ID yet is uploaded from the legacy storage and rewritten to its file ID.

- A row is rewritten with a queryset `update()` that also matches its old value: no `save()`, no signals, no
  `upload_to`, and a row edited meanwhile is left alone.
- Files are streamed from the legacy storage (`CHUNK_SIZE` at a time), never read whole.
- The journal (JSON lines `{"name": ..., "file_id": ...}`) records each upload, fsynced, before its row is
  rewritten: a rerun after an interruption skips rows already holding file IDs and reuses a recorded upload whose
  row was not rewritten, and a name referenced by several rows is uploaded once. (An upload whose answer came but
  whose journal line was not written, a kill in that instant, is uploaded again on the rerun.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from django.apps import apps
from django.db import models

from .._common import CHUNK_SIZE
from ..errors import FdfsError, Unreachable
from ..fileid import is_file_id
from .storage import FdfsStorage


@dataclass
class Summary:
    """What a run did (or, with `dry_run`, would do)."""

    moved: int = 0
    """Rows rewritten to file IDs."""
    uploaded: int = 0
    """Files uploaded (a name shared by several rows, or recorded in the journal, is uploaded once)."""
    bytes: int = 0
    """Bytes uploaded."""
    skipped: int = 0
    """Rows already holding a file ID, or changed by someone else meanwhile."""
    missing: int = 0
    """Rows whose file is not in the legacy storage (left as they are)."""
    failed: int = 0
    """Rows whose upload or update failed (left as they are; listed on stderr)."""

    def __str__(self) -> str:
        return (
            f"moved {self.moved}, skipped {self.skipped}, missing {self.missing}, failed {self.failed}; "
            f"uploaded {self.uploaded} file(s), {self.bytes} bytes"
        )


class Journal:
    """The uploads done so far, name -> file ID, in a JSON-lines file (None: in memory, for a dry run)."""

    def __init__(self, path: Path | None, *, read_from: Path | None = None) -> None:
        self.path = path
        self.ids: dict[str, str] = {}
        source = read_from or path
        if source is not None and source.exists():
            with open(source, encoding="utf-8") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                        self.ids[str(entry["name"])] = str(entry["file_id"])
                    except (ValueError, KeyError, TypeError):
                        continue  # a line torn by a kill
        self._out = open(path, "a", encoding="utf-8") if path is not None else None  # noqa: SIM115 - close()

    def get(self, name: str) -> str | None:
        return self.ids.get(name)

    def add(self, name: str, file_id: str) -> None:
        """Record an upload durably (written and fsynced) before its row is rewritten."""
        self.ids[name] = file_id
        if self._out is not None:
            self._out.write(json.dumps({"name": name, "file_id": file_id}) + "\n")
            self._out.flush()
            os.fsync(self._out.fileno())

    def close(self) -> None:
        if self._out is not None:
            self._out.close()


Target = tuple[type[models.Model], models.FileField]


def file_fields(model_list: Iterable[type[models.Model]] | None = None) -> list[Target]:
    """Every file field on an `FdfsStorage` of the given models (default: all installed), each table once."""
    out: list[Target] = []
    for model in model_list if model_list is not None else apps.get_models():
        if model._meta.proxy:
            continue
        for field in model._meta.local_concrete_fields:
            if isinstance(field, models.FileField) and isinstance(field.storage, FdfsStorage):
                out.append((model, field))
    return out


class MediaMigration:
    """One run over some file fields; `report(line, error)` prints progress and problems."""

    def __init__(
        self,
        journal: Journal,
        *,
        dry_run: bool = False,
        report: Callable[[str, bool], None] = lambda line, error: None,
        batch_size: int = 200,
    ) -> None:
        self.journal = journal
        self.dry_run = dry_run
        self.report = report
        self.batch_size = batch_size
        self.summary = Summary()

    def run(self, targets: Iterable[Target]) -> Summary:
        """Move every row of every target; `Unreachable` (the gateway does not answer) stops the run."""
        for model, field in targets:
            self._field(model, field)
        return self.summary

    def _field(self, model: type[models.Model], field: models.FileField) -> None:
        storage = cast(FdfsStorage, field.storage)
        legacy = storage.legacy_storage
        rows = model._base_manager.order_by("pk").values_list("pk", field.attname)
        last: Any = None
        while True:
            page = list((rows if last is None else rows.filter(pk__gt=last))[: self.batch_size])
            if not page:
                return
            for pk, name in page:
                if name:
                    self._row(model, field, storage, legacy, pk, name)
            last = page[-1][0]

    def _row(
        self,
        model: type[models.Model],
        field: models.FileField,
        storage: FdfsStorage,
        legacy: Any,
        pk: Any,
        name: str,
    ) -> None:
        s = self.summary
        where = f"{model._meta.label}.{field.name} pk={pk} {name!r}"
        if is_file_id(name):
            s.skipped += 1
            return
        file_id = self.journal.get(name)
        try:
            if file_id is None:
                if not legacy.exists(name):
                    s.missing += 1
                    self.report(f"missing: {where} is not in the legacy storage", True)
                    return
                if self.dry_run:
                    size = legacy.size(name)
                    file_id = f"(would upload {size} bytes)"
                    s.uploaded += 1
                    s.bytes += size
                    self.journal.add(name, file_id)
                else:
                    file_id = self._upload(storage, legacy, name)
            if field.max_length is not None and len(file_id) > field.max_length and not self.dry_run:
                raise ValueError(f"the file ID {file_id} is longer than the field's max_length {field.max_length}")
            if self.dry_run:
                s.moved += 1
                return
            updated = model._base_manager.filter(pk=pk, **{field.attname: name}).update(**{field.attname: file_id})
        except Unreachable:
            raise
        except (FdfsError, OSError, ValueError) as e:
            s.failed += 1
            self.report(f"failed: {where}: {e}", True)
            return
        if updated:
            s.moved += 1
            self.report(f"moved: {where} -> {file_id}", False)
        else:
            s.skipped += 1
            self.report(f"skipped: {where} changed meanwhile", False)

    def _upload(self, storage: FdfsStorage, legacy: Any, name: str) -> str:
        size = legacy.size(name)
        with legacy.open(name, "rb") as f:
            result = storage.upload(f.chunks(CHUNK_SIZE), name, size)
        file_id = result["file_id"]
        self.journal.add(name, file_id)
        self.summary.uploaded += 1
        self.summary.bytes += result["size"]
        return file_id
