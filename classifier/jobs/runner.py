"""Running a batch job: each staged file classified in turn, its outcome recorded.

Safe to run twice (see ``jobs.services``): a file whose cell exists already is recorded, not stored again.
"""

import logging

from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import F
from django.db.models.functions import Coalesce
from django.utils import timezone

from classifier import files, limits
from classifier.cells import services as cell_services
from classifier.cells.validation import ImageRejected
from classifier.jobs import batch_files, fields
from classifier.models import BatchItem, BatchJob

logger = logging.getLogger(__name__)


ALREADY_IN_SPECIMEN = "already_in_specimen"  # a done item whose cell this job did not create


def _fail(item: BatchItem, code: str, message: str) -> None:
    BatchItem.objects.filter(pk=item.pk, state=BatchItem.State.PENDING).update(
        state=BatchItem.State.FAILED,
        error_code=code[:32],
        error_message=message[:500],
        finished_at=timezone.now(),
    )


def _run_item(job: BatchJob, item: BatchItem) -> None:
    """Classify one staged file; record the result or the reason it failed."""
    accession = job.specimen.accession
    try:
        with item.source.open("rb") as handle:
            data = handle.read()
        if job.kind == BatchJob.Kind.FIELDS:
            _run_field(job, item, data, accession=accession)
            return
        classification, created = cell_services.classification_get_or_create(
            user=job.created_by,
            data=data,
            filename=item.filename,
            accession=accession,
            external_id=batch_files.external_id_for(accession=accession, sha256=item.sha256),
        )
    except ImageRejected as exc:
        _refused(item, exc)
        return
    except ValidationError as exc:
        _fail(item, exc.code or "invalid", " ".join(exc.messages))
        return
    except PermissionDenied as exc:
        _fail(item, "forbidden", str(exc))
        return
    except FileNotFoundError:
        _fail(item, "source_missing", "The staged upload is missing; upload the file again.")
        return
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch
        # The details (which may name server paths or internals) go to the log, not to the user.
        logger.exception("batch job %s item %s (%s) failed: %r", job.pk, item.pk, item.filename, exc)
        _fail(
            item,
            "internal_error",
            f"Unexpected server error (logged as job {job.pk}, item {item.pk}); retry the failed files, "
            "and tell the administrator if it happens again.",
        )
        return
    _done(item, classification, created=created)


def _run_field(job: BatchJob, item: BatchItem, data: bytes, *, accession: str) -> None:
    """A whole field: every located cell classified (``fields.field_classify``), the item done."""
    with limits.image_work():  # the field's decode and locator; its cells re-enter the slot
        cells = fields.field_classify(
            user=job.created_by,
            data=data,
            filename=item.filename,
            accession=accession,
            external_id=lambda n: batch_files.external_id_for(
                accession=accession, sha256=item.sha256, cell=n
            ),
        )
    BatchItem.objects.filter(pk=item.pk, state=BatchItem.State.PENDING).update(
        state=BatchItem.State.DONE,
        cells=cells,
        finished_at=timezone.now(),
        classification_id=cells[0]["classification_id"] if cells else None,
    )


def _refused(item: BatchItem, exc: ImageRejected) -> None:
    """A file the image checks refuse: failed, and (but for no_cells_found) its staged copy dropped,
    since a rerun cannot help."""
    _fail(item, exc.code, exc.message)
    if exc.code != "no_cells_found":
        if (
            BatchItem.objects.filter(pk=item.pk, state=BatchItem.State.FAILED)
            .exclude(source="")
            .update(source="")
        ):
            files.delete_files(item.source.name)


def _done(item: BatchItem, classification, *, created: bool) -> None:
    """The item done with its cell; the staged copy deleted (the classification keeps its own)."""
    updated = BatchItem.objects.filter(pk=item.pk, state=BatchItem.State.PENDING).update(
        state=BatchItem.State.DONE,
        classification=classification,
        finished_at=timezone.now(),
        # Another job (the same batch sent twice at once) or an earlier upload stored it: not a failure.
        error_code="" if created else ALREADY_IN_SPECIMEN,
    )
    if updated:
        files.delete_files(item.source.name)
        BatchItem.objects.filter(pk=item.pk).update(source="")


def job_run(*, job_id: int) -> BatchJob:
    """Classify the job's pending files in order; safe to call again or concurrently."""
    job = BatchJob.objects.select_related("specimen", "created_by").get(pk=job_id)
    if job.is_finished:
        return job
    now = timezone.now()
    BatchJob.objects.filter(pk=job.pk).update(
        state=BatchJob.State.RUNNING, started_at=Coalesce(F("started_at"), now), runs=F("runs") + 1
    )
    with limits.patient():  # a job waits its turn for an image slot; no client is waiting on it
        for item in job.items.filter(state=BatchItem.State.PENDING).order_by("position"):
            _run_item(job, item)
    return _job_finish(job)


def _job_finish(job: BatchJob) -> BatchJob:
    items = job.items.all()
    if items.filter(state=BatchItem.State.PENDING).exists():
        job.refresh_from_db()
        return job
    failed = items.filter(state=BatchItem.State.FAILED).exists()
    state = BatchJob.State.DONE_WITH_ERRORS if failed else BatchJob.State.DONE
    BatchJob.objects.filter(pk=job.pk).exclude(state=state).update(state=state, finished_at=timezone.now())
    job.refresh_from_db()
    return job

