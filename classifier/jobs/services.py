"""Batch jobs: many images (files or a ZIP) for one specimen, classified in the background.

The writes that start a job (``job_create``, ``job_rerun``); running one is ``jobs.runner``, queueing
it ``jobs.tasks``; the reads are ``jobs.selectors``. Every image still goes through
``cells.services.classification_get_or_create``, which checks, stores and classifies it; a job only
stages the uploaded files, runs them one by one and records what became of each.

Idempotent by construction: each file's classification gets an ``external_id``
derived from the accession and the file's SHA-256, so a job that is run twice
(a worker killed mid-batch, a redelivered message, two workers racing, the same
folder dropped twice) never stores the same image twice in a specimen.
"""

import hashlib
import itertools
import logging
from collections.abc import Iterable
from pathlib import PurePosixPath

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from classifier import staging
from classifier.cells.validation import ImageRejected, probe_image
from classifier.jobs.batch_files import Upload, archive_files, check_archive_size, max_files, uploaded_files
from classifier.models import BatchItem, BatchJob
from classifier.permissions import can_review, can_submit
from classifier.specimens import services as specimen_services

logger = logging.getLogger(__name__)


def job_create(
    *,
    user,
    accession: str,
    files: Iterable = (),
    archive=None,
    kind: str = BatchJob.Kind.CELLS,  # type: ignore[assignment]  # a str member; no Django stubs here
    enqueue: bool = True,
) -> BatchJob:
    """Stage the uploaded files as a job for ``accession`` and queue it once committed.

    With ``enqueue=False`` the caller runs it (``runner.job_run``), as ``classify_folder`` does.

    ``files`` are UploadedFile objects or ``(name, bytes)`` pairs; ``archive`` a
    ZIP file object. Files refused up front (not an image by name or header, too
    large to send or to decode, unsafe ZIP path) are recorded as failed items; the
    same image twice is skipped. An upload with no usable image is refused whole
    (``no_usable_files``): it opens no specimen and leaves nothing. So is a ZIP
    over the archive limit (ImageRejected, 413), and a job over the user's limit
    of unfinished jobs (``too_many_jobs``). Staged files are written in a
    ``staging.StagingArea``, so a crash before the commit leaves nothing that
    ``resume_jobs`` or ``cleanup_orphans`` cannot find.
    """
    files = _checked_request(user=user, kind=kind, files=files, archive=archive)
    staged: list[str] = []
    area = staging.StagingArea()
    try:
        with transaction.atomic():
            if enqueue:
                _check_queued_jobs(user)
            specimen = specimen_services.specimen_get_or_create(user=user, accession=accession or "")
            job = BatchJob.objects.create(specimen=specimen, created_by=user, kind=kind)
            uploads = uploaded_files(files)
            if archive is not None:
                uploads = itertools.chain(uploads, archive_files(archive))
            count = _stage_items(job, uploads, area=area, staged=staged)
            _check_usable(job, count=count, staged=staged)
            transaction.on_commit(area.release)
            if enqueue:
                transaction.on_commit(lambda: _enqueue(job.pk))
    except BaseException:
        area.discard(staged)
        raise
    return job


def _checked_request(*, user, kind: str, files: Iterable, archive) -> list:
    """The files as a list, once what needs no database is refused: a user who may not submit, an
    unknown kind, nothing sent, too many files, a ZIP over the archive limit."""
    if not can_submit(user):
        raise PermissionDenied("Only technologists and reviewers may submit images.")
    if kind not in BatchJob.Kind.values:
        raise ValidationError(f"Unknown job kind {kind!r}.", code="invalid_kind")
    files = list(files or ())
    if not files and archive is None:
        raise ValidationError("Upload at least one image or a ZIP archive.", code="no_files")
    if len(files) > max_files():
        raise ValidationError(
            f"{len(files)} files were sent; the limit is {max_files()} per job.", code="too_many_files"
        )
    if archive is not None:
        check_archive_size(archive)
    return files


def _stage_items(
    job: BatchJob, uploads: Iterable[Upload], *, area: staging.StagingArea, staged: list[str]
) -> int:
    """One item per upload, in order: staged in ``area`` (its file name appended to ``staged``),
    failed (refused up front), or skipped (the same image as an earlier file). Returns how many."""
    seen: dict[str, BatchItem] = {}
    position = 0
    for upload in uploads:
        position += 1
        if position > max_files():
            raise ValidationError(
                f"More than {max_files()} files were sent; the limit is {max_files()} per job.",
                code="too_many_files",
            )
        item = BatchItem(job=job, position=position, filename=upload.name)
        data = _probed(upload)
        if data.data is None:
            item.state = BatchItem.State.FAILED
            item.error_code, item.error_message = data.error_code, data.error_message
            item.finished_at = timezone.now()
        else:
            item.sha256 = hashlib.sha256(data.data).hexdigest()
            first = seen.get(item.sha256)
            if first is not None:
                item.state = BatchItem.State.SKIPPED
                item.error_code = "duplicate"
                item.error_message = f"Same image as file {first.position} ({first.filename})."
                item.finished_at = timezone.now()
            else:
                suffix = PurePosixPath(data.name.lower()).suffix
                item.source = area.save(suffix, data.data)
                staged.append(item.source.name)
                seen[item.sha256] = item
        item.save()
    return position


def _probed(upload: Upload) -> Upload:
    """The upload, or (not an image by its header, too big to decode) the same refused with the reason:
    the header only is read, and what is refused is not kept."""
    if upload.data is not None:
        try:
            probe_image(upload.data, filename=upload.name)
        except ImageRejected as exc:
            return Upload(upload.name, None, exc.code, exc.message)
    return upload


def _check_usable(job: BatchJob, *, count: int, staged: list[str]) -> None:
    """Refuse an upload that held no file, or no file that can be classified (the first item says why)."""
    if count == 0:
        raise ValidationError("The upload holds no files.", code="no_files")
    if not staged:
        first = job.items.order_by("position").first()
        raise ValidationError(
            f"No file in the upload is an image that can be classified ({first.filename}: "
            f"{first.error_message}); nothing was stored.",
            code="no_usable_files",
        )


def _check_queued_jobs(user) -> None:
    """Refuse a job over the user's limit of unfinished ones (HEMATOVISION_MAX_QUEUED_JOBS_PER_USER).

    The user's row is locked first, so two uploads at once cannot both pass the count.
    """
    from django.contrib.auth import get_user_model

    limit = settings.HEMATOVISION_MAX_QUEUED_JOBS_PER_USER
    get_user_model().objects.select_for_update().filter(pk=user.pk).first()
    waiting = BatchJob.objects.filter(
        created_by=user, state__in=[BatchJob.State.QUEUED, BatchJob.State.RUNNING]
    ).count()
    if waiting >= limit:
        raise ValidationError(
            f"You have {waiting} batch jobs waiting or running; the limit is {limit}. Send this one "
            "when one of them has finished.",
            code="too_many_jobs",
        )


def _enqueue(job_id: int) -> None:
    from classifier.jobs import tasks

    tasks.enqueue_job(job_id)


def job_rerun(*, job: BatchJob, user) -> BatchJob:
    """Retry the files that failed while running (their staged copy is kept); refused ones stay failed."""
    if job.created_by_id != user.pk and not can_review(user):
        raise PermissionDenied("Only the submitter or a reviewer may re-run a job.")
    with transaction.atomic():
        locked = BatchJob.objects.select_for_update().get(pk=job.pk)
        if not locked.is_finished:
            raise ValidationError("The job is still running.", code="running")
        retry = locked.items.filter(state=BatchItem.State.FAILED).exclude(source="")
        if not retry.exists():
            raise ValidationError("No failed file can be retried.", code="nothing_to_retry")
        retry.update(state=BatchItem.State.PENDING, error_code="", error_message="", finished_at=None)
        locked.state = BatchJob.State.QUEUED
        locked.finished_at = None
        locked.save(update_fields=["state", "finished_at"])
        transaction.on_commit(lambda: _enqueue(locked.pk))
    return locked
