"""`python manage.py fdfs_migrate_media`: move the files the models reference from the legacy storage into fdfs
and rewrite the fields to file IDs (see `fdfs_http.django.migrate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ....errors import Unreachable
from ...migrate import Journal, MediaMigration, file_fields

DEFAULT_JOURNAL = "fdfs-migrate-media.jsonl"


class Command(BaseCommand):
    help = (
        "Upload every file referenced by a FileField/ImageField on an FdfsStorage from the legacy storage "
        "(FDFS_LEGACY_STORAGE, default MEDIA_ROOT) and rewrite the field to its file ID. Resumable: rerun it after "
        "an interruption."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="count what would move; upload and change nothing")
        parser.add_argument(
            "--model",
            action="append",
            metavar="APP.MODEL",
            help="only this model (repeatable; default every installed model)",
        )
        parser.add_argument(
            "--journal",
            default=DEFAULT_JOURNAL,
            help=f"the uploads done so far, name -> file ID, kept across runs (default ./{DEFAULT_JOURNAL})",
        )
        parser.add_argument("--batch-size", type=int, default=200, help="rows read at a time")

    def handle(self, *args: Any, **options: Any) -> None:
        models = None
        if options["model"]:
            try:
                models = [apps.get_model(label) for label in options["model"]]
            except (LookupError, ValueError) as e:
                raise CommandError(f"--model: {e}") from e
        targets = file_fields(models)
        if not targets:
            raise CommandError("no FileField or ImageField on an FdfsStorage in the models asked for")
        path = Path(options["journal"]).resolve()
        dry = bool(options["dry_run"])
        journal = Journal(None, read_from=path) if dry else Journal(path)
        verbosity = int(options["verbosity"])

        def report(line: str, error: bool) -> None:
            if error:
                self.stderr.write(line)
            elif verbosity >= 2:
                self.stdout.write(line)

        run = MediaMigration(journal, dry_run=dry, report=report, batch_size=options["batch_size"])
        fields = ", ".join(f"{m._meta.label}.{f.name}" for m, f in targets)
        self.stdout.write(f"{'dry run: ' if dry else ''}fields {fields}; journal {path}")
        try:
            summary = run.run(targets)
        except Unreachable as e:
            raise CommandError(f"stopped, the gateway does not answer (rerun to resume): {e}\n{run.summary}") from e
        finally:
            journal.close()
        self.stdout.write(("would have " if dry else "") + str(summary))
        if summary.failed:
            raise CommandError(f"{summary.failed} row(s) failed (listed above); rerun to retry them")
