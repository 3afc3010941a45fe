"""Batch jobs: many images (files or a ZIP) for one specimen, classified in the background.

The writes (``job_create``, ``job_run``, ``job_rerun``, ``job_resume_unfinished``)
and the reads (``job_list``, ``job_get``, ``job_progress``) for batch jobs. Every
image still goes through ``services.classification_create``, which checks,
stores and classifies it; a job only stages the uploaded files, runs them one
by one and records what became of each.

Idempotent by construction: each file's classification gets an ``external_id``
derived from the accession and the file's SHA-256, so a job that is run twice
(a worker killed mid-batch, a redelivered message, two workers racing, the same
folder dropped twice) never stores the same image twice in a specimen.
"""

import hashlib
import io
import logging
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import F, QuerySet
from django.db.models.functions import Coalesce
from django.utils import timezone

from . import limits, services, staging
from .models import BatchItem, BatchJob, Classification
from .permissions import can_review, can_submit
from .validation import ImageRejected, human_size, probe_image, too_large_message

logger = logging.getLogger(__name__)

ALREADY_IN_SPECIMEN = "already_in_specimen"  # a done item whose cell this job did not create
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}


def max_files() -> int:
    """Most files one job may hold (HEMATOVISION_BATCH_MAX_FILES, default 1000)."""
    return settings.HEMATOVISION_BATCH_MAX_FILES


def max_archive_bytes() -> int:
    """Most bytes a ZIP may hold, as sent and expanded (HEMATOVISION_BATCH_MAX_ARCHIVE_MB, default 2048)."""
    return int(settings.HEMATOVISION_BATCH_MAX_ARCHIVE_MB * 1024 * 1024)


def _file_size(file) -> int | None:
    """An upload's size (``.size``), or a file object's by seeking; None when it cannot tell."""
    size = getattr(file, "size", None)
    if size is not None:
        return size
    try:
        position = file.tell()
        size = file.seek(0, io.SEEK_END)
        file.seek(position)
    except (AttributeError, OSError, ValueError):
        return None
    return size


def check_archive_size(archive) -> None:
    """Refuse a ZIP over the archive limit before reading it (413, as an image over its own limit).

    The upload handler keeps no content of such a file (``uploads.OversizeUpload``), so it must be
    refused by its size, not reported as an unreadable ZIP.
    """
    size, limit = _file_size(archive), max_archive_bytes()
    if size is not None and size > limit:
        raise ImageRejected(
            "file_too_large", f"The archive is {human_size(size)}; the limit is {human_size(limit)}.", 413
        )


@dataclass(frozen=True)
class Upload:
    """One file of a batch as received: its bytes, or why it was refused before staging."""

    name: str
    data: bytes | None = None
    error_code: str = ""
    error_message: str = ""


def _display_name(name: str) -> str:
    return services._clean_filename(name) or "(unnamed)"


def _is_image_name(name: str) -> bool:
    return PurePosixPath(name.lower()).suffix in IMAGE_EXTENSIONS


def _too_large(name: str, size: int) -> Upload:
    return Upload(_display_name(name), None, "file_too_large", too_large_message(size))


def _not_an_image(name: str) -> Upload:
    return Upload(
        _display_name(name),
        None,
        "not_an_image",
        "Not an image file; upload JPEG, PNG, TIFF, BMP or WebP (by extension).",
    )


def uploaded_files(files: Iterable) -> Iterator[Upload]:
    """Uploads from Django UploadedFile objects or ``(name, bytes)`` pairs."""
    limit = settings.HEMATOVISION_MAX_UPLOAD_BYTES
    for item in files:
        if isinstance(item, tuple):
            name, data = item
            size = len(data)
        else:
            name, size, data = item.name, item.size, None
        if not _is_image_name(name):
            yield _not_an_image(name)
            continue
        if size > limit:
            yield _too_large(name, size)
            continue
        if data is None:
            data = item.read()
        yield Upload(_display_name(name), data)


def _unsafe_entry(name: str) -> bool:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":")


def archive_files(archive) -> Iterator[Upload]:
    """Uploads from a ZIP archive, read safely.

    Nothing is extracted to disk. Directories and macOS resource forks are
    skipped; entries with absolute or ``..`` paths, encrypted entries,
    non-images and oversized entries become per-file errors. Reads are bounded
    per entry (the upload limit) and in total (HEMATOVISION_BATCH_MAX_ARCHIVE_MB).
    """
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ValidationError("The archive is not a readable ZIP file.", code="bad_archive") from exc
    limit = settings.HEMATOVISION_MAX_UPLOAD_BYTES
    total_limit = max_archive_bytes()
    with zf:
        entries = [info for info in zf.infolist() if not info.is_dir()]
        if len(entries) > max_files():
            raise ValidationError(
                f"The archive holds {len(entries)} files; the limit is {max_files()} per job.",
                code="too_many_files",
            )
        total = 0
        for info in entries:
            name = info.filename
            parts = PurePosixPath(name.replace("\\", "/")).parts
            if "__MACOSX" in parts or (parts and parts[-1].startswith("._")):
                continue
            if _unsafe_entry(name):
                yield Upload(
                    _display_name(name),
                    None,
                    "unsafe_path",
                    "The archive entry has an absolute or '..' path; it was not read.",
                )
                continue
            if info.flag_bits & 0x1:
                yield Upload(_display_name(name), None, "encrypted", "The archive entry is encrypted.")
                continue
            if not _is_image_name(name):
                yield _not_an_image(name)
                continue
            if info.file_size > limit:
                yield _too_large(name, info.file_size)
                continue
            total += info.file_size
            if total > total_limit:
                raise ValidationError(
                    f"The archive expands to more than {human_size(total_limit)}; "
                    "split it into smaller jobs.",
                    code="archive_too_large",
                )
            try:
                with zf.open(info) as handle:
                    data = handle.read(limit + 1)
            except (zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError, EOFError) as exc:
                yield Upload(
                    _display_name(name), None, "corrupt_entry", f"The archive entry could not be read: {exc}"
                )
                continue
            if len(data) > limit:
                yield _too_large(name, len(data))
                continue
            yield Upload(_display_name(name), data)


def external_id_for(*, accession: str, sha256: str, cell: int | None = None) -> str:
    """The classification's idempotency key: one image (or one located cell) per specimen."""
    key = f"{accession}\n{sha256}" + (f"\n{cell}" if cell is not None else "")
    return ("fld-" if cell is not None else "bat-") + hashlib.sha256(key.encode()).hexdigest()


def job_create(
    *,
    user,
    accession: str,
    files: Iterable = (),
    archive=None,
    kind: str = BatchJob.Kind.CELLS,
    enqueue: bool = True,
) -> BatchJob:
    """Stage the uploaded files as a job for ``accession`` and queue it once committed.

    With ``enqueue=False`` the caller runs it (``job_run``), as ``classify_folder`` does.

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
    staged: list[str] = []
    area = staging.StagingArea()
    try:
        with transaction.atomic():
            if enqueue:
                _check_queued_jobs(user)
            specimen = services.specimen_get_or_create(user=user, accession=accession or "")
            job = BatchJob.objects.create(specimen=specimen, created_by=user, kind=kind)
            uploads = uploaded_files(files)
            if archive is not None:
                uploads = _chain(uploads, archive_files(archive))
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
                if upload.data is not None:
                    try:  # the header only: what is not an image, or too big to decode, is not kept
                        probe_image(upload.data, filename=upload.name)
                    except ImageRejected as exc:
                        upload = Upload(upload.name, None, exc.code, exc.message)
                if upload.data is None:
                    item.state = BatchItem.State.FAILED
                    item.error_code, item.error_message = upload.error_code, upload.error_message
                    item.finished_at = timezone.now()
                else:
                    item.sha256 = hashlib.sha256(upload.data).hexdigest()
                    first = seen.get(item.sha256)
                    if first is not None:
                        item.state = BatchItem.State.SKIPPED
                        item.error_code = "duplicate"
                        item.error_message = f"Same image as file {first.position} ({first.filename})."
                        item.finished_at = timezone.now()
                    else:
                        suffix = PurePosixPath(upload.name.lower()).suffix
                        item.source = area.save(suffix, upload.data)
                        staged.append(item.source.name)
                        seen[item.sha256] = item
                item.save()
            if position == 0:
                raise ValidationError("The upload holds no files.", code="no_files")
            if not staged:
                first = job.items.order_by("position").first()
                raise ValidationError(
                    f"No file in the upload is an image that can be classified ({first.filename}: "
                    f"{first.error_message}); nothing was stored.",
                    code="no_usable_files",
                )
            transaction.on_commit(area.release)
            if enqueue:
                transaction.on_commit(lambda: _enqueue(job.pk))
    except BaseException:
        area.discard(staged)
        raise
    return job


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


def _chain(*iterables):
    for iterable in iterables:
        yield from iterable


def _enqueue(job_id: int) -> None:
    from . import tasks

    tasks.enqueue_job(job_id)


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
            from . import fields

            with limits.image_work():  # the field's decode and locator; its cells re-enter the slot
                cells = fields.field_classify(
                    user=job.created_by,
                    data=data,
                    filename=item.filename,
                    accession=accession,
                    external_id=lambda n: external_id_for(accession=accession, sha256=item.sha256, cell=n),
                )
            BatchItem.objects.filter(pk=item.pk, state=BatchItem.State.PENDING).update(
                state=BatchItem.State.DONE,
                cells=cells,
                finished_at=timezone.now(),
                classification_id=cells[0]["classification_id"] if cells else None,
            )
            return
        classification, created = services.classification_get_or_create(
            user=job.created_by,
            data=data,
            filename=item.filename,
            accession=accession,
            external_id=external_id_for(accession=accession, sha256=item.sha256),
        )
    except ImageRejected as exc:
        _fail(item, exc.code, exc.message)
        if exc.code != "no_cells_found":  # a file the image checks refuse: a rerun cannot help, drop it
            if (
                BatchItem.objects.filter(pk=item.pk, state=BatchItem.State.FAILED)
                .exclude(source="")
                .update(source="")
            ):
                services._delete_files(item.source.name)
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
    updated = BatchItem.objects.filter(pk=item.pk, state=BatchItem.State.PENDING).update(
        state=BatchItem.State.DONE,
        classification=classification,
        finished_at=timezone.now(),
        # Another job (the same batch sent twice at once) or an earlier upload stored it: not a failure.
        error_code="" if created else ALREADY_IN_SPECIMEN,
    )
    if updated:  # the classification keeps its own copy; the staged one is no longer needed
        services._delete_files(item.source.name)
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


def job_resume_unfinished() -> list[int]:
    """Queue again every job a restart interrupted (queued or running); returns their ids."""
    ids = list(
        BatchJob.objects.filter(state__in=[BatchJob.State.QUEUED, BatchJob.State.RUNNING])
        .order_by("created_at", "id")
        .values_list("pk", flat=True)
    )
    for job_id in ids:
        _enqueue(job_id)
    return ids


# Reads -------------------------------------------------------------------------------------------


def job_list(*, user) -> QuerySet[BatchJob]:
    """Reviewers see every job; technologists their own; others nothing."""
    qs = BatchJob.objects.select_related("specimen", "created_by")
    if can_review(user):
        return qs
    if can_submit(user):
        return qs.filter(created_by=user)
    return qs.none()


def job_get(*, user, pk) -> BatchJob:
    """Raises BatchJob.DoesNotExist for jobs the user may not see."""
    return job_list(user=user).get(pk=pk)


def job_progress(*, job: BatchJob) -> dict:
    """The job's state, counts and per-file outcome (the API and the progress page show this)."""
    items = list(job.items.select_related("classification").order_by("position"))
    field_ids = {c["classification_id"] for item in items for c in item.cells}
    field_cells = {c.pk: c for c in Classification.objects.filter(pk__in=field_ids)}
    counts = {state.value: 0 for state in BatchItem.State}
    rows = []
    for item in items:
        counts[item.state] += 1
        cell = item.classification
        row = {
            "position": item.position,
            "filename": item.filename,
            "state": item.state,
            "error_code": (item.error_code or None) if item.state != BatchItem.State.DONE else None,
            "error": (item.error_message or None) if item.state != BatchItem.State.DONE else None,
            "classification_id": cell.pk if cell else None,
            "status": cell.status if cell else None,
            "label": (cell.label or None) if cell else None,
            "already_in_specimen": bool(
                cell and (item.error_code == ALREADY_IN_SPECIMEN or cell.created_at < job.created_at)
            ),
        }
        if job.kind == BatchJob.Kind.FIELDS:
            row["cells"] = [
                {
                    "n": c["n"],
                    "box": c["box"],
                    "classification_id": c["classification_id"],
                    "label": (field_cells[c["classification_id"]].label or None)
                    if c["classification_id"] in field_cells
                    else None,
                    "status": field_cells[c["classification_id"]].status
                    if c["classification_id"] in field_cells
                    else None,
                }
                for c in item.cells
            ]
        rows.append(row)
    total = len(items)
    finished = total - counts[BatchItem.State.PENDING]
    return {
        "id": job.pk,
        "accession": job.specimen.accession,
        "kind": job.kind,
        "state": job.state,
        "finished": job.is_finished,
        "created_by": job.created_by.get_username(),
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "total": total,
        "processed": finished,
        "percent": round(100.0 * finished / total, 1) if total else 100.0,
        "counts": counts,
        "items": rows,
    }
