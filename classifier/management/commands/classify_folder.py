"""Classify every image in a folder as one batch job for a specimen (labs that drop files on a share)."""

from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import BaseCommand, CommandError

from classifier.jobs import runner
from classifier.jobs import selectors as job_selectors
from classifier.jobs import services as job_services
from classifier.models import BatchJob


class Command(BaseCommand):
    help = (
        "Classify the images in DIR for specimen ACCESSION as one batch job. Runs here and prints each "
        "file's outcome, or with --queue leaves the job to the background workers. Running it again on "
        "the same folder adds nothing twice."
    )

    def add_arguments(self, parser):
        parser.add_argument("directory", type=Path)
        parser.add_argument("--accession", required=True)
        parser.add_argument("--user", required=True, help="username the results are recorded under")
        parser.add_argument("--fields", action="store_true", help="images are whole fields of view")
        parser.add_argument("--recursive", action="store_true", help="include sub-folders")
        parser.add_argument("--queue", action="store_true", help="queue the job instead of running it here")

    def handle(self, *args, directory: Path, accession, user, fields, recursive, queue, **options):
        if not directory.is_dir():
            raise CommandError(f"{directory} is not a folder.")
        try:
            owner = get_user_model().objects.get(username=user, is_active=True)
        except get_user_model().DoesNotExist as exc:
            raise CommandError(f"No active user {user!r}.") from exc
        paths = sorted(p for p in (directory.rglob("*") if recursive else directory.iterdir()) if p.is_file())
        paths = [p for p in paths if not p.name.startswith(".")]
        if not paths:
            raise CommandError(f"{directory} holds no files.")
        files = [(str(p.relative_to(directory)), p.read_bytes()) for p in paths]
        kind = BatchJob.Kind.FIELDS if fields else BatchJob.Kind.CELLS
        try:
            job = job_services.job_create(
                user=owner, accession=accession, files=files, kind=kind, enqueue=queue
            )
        except (ValidationError, PermissionDenied) as exc:
            raise CommandError(" ".join(getattr(exc, "messages", [str(exc)]))) from exc
        if queue:
            self.stdout.write(f"queued job {job.pk} with {len(files)} file(s) for {accession}")
            return
        job = runner.job_run(job_id=job.pk)
        progress = job_selectors.job_progress(job=job)
        for row in progress["items"]:
            if row["state"] == "done":
                outcome = row["label"] or row["status"]
                if progress["kind"] == "fields":
                    outcome = ", ".join(f"{c['n']}:{c['label'] or c['status']}" for c in row["cells"])
                if row["already_in_specimen"]:
                    outcome += " (already in specimen)"
            else:
                outcome = f"{row['state'].upper()}: {row['error']}"
            self.stdout.write(f"{row['filename']}: {outcome}")
        counts = progress["counts"]
        self.stdout.write(
            f"job {job.pk} for {accession}: {job.state}; {counts['done']} done, {counts['failed']} failed, "
            f"{counts['skipped']} skipped"
        )
