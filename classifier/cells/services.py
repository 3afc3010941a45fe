"""Every write to one cell's classification: check, store and classify an upload, and delete one.

Views, API viewsets, tasks and management commands call these; they hold the business rules (who
may do what, which state follows which), one transaction each.
"""

import hashlib
import logging
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.base import ContentFile
from django.db import IntegrityError, InterfaceError, OperationalError, transaction

from classifier import files, inference, limits, staging
from classifier.cells import pending, spool
from classifier.cells.validation import ImageRejected, check_image
from classifier.models import Classification, ReviewState, Status, accession_validator
from classifier.permissions import can_submit
from classifier.specimens import services as specimen_services

logger = logging.getLogger(__name__)


def classification_create(
    *,
    user,
    data: bytes,
    filename: str = "",
    accession: str | None = None,
    external_id: str | None = None,
) -> Classification:
    """Check, store and classify one image; return the new (or retried) classification.

    ``classification_get_or_create`` without the flag that says which.
    """
    classification, _ = classification_get_or_create(
        user=user, data=data, filename=filename, accession=accession, external_id=external_id
    )
    return classification


def classification_get_or_create(
    *,
    user,
    data: bytes,
    filename: str = "",
    accession: str | None = None,
    external_id: str | None = None,
) -> tuple[Classification, bool]:
    """Check, store and classify one image: ``(classification, created)``.

    A repeated ``external_id`` (with the same image and accession) returns the existing result with
    ``created`` False, also when the repeats arrive at the same moment; with another image or accession
    it is refused (``external_id_conflict``). A resend of an upload kept while the database was
    unavailable finds that upload (by owner, image hash and accession) instead of storing it again.
    Bad input raises ImageRejected or ValidationError and leaves no row and no file. When the model
    cannot load, the image is kept with status ``pending`` for later.
    """
    if not can_submit(user):
        raise PermissionDenied("Only technologists and reviewers may submit images.")
    external_id = (external_id or "").strip() or None
    sha256 = hashlib.sha256(data).hexdigest()
    kept = spool.find_kept_upload(user=user, sha256=sha256, accession=accession, external_id=external_id)
    if kept is not None:
        return _file_kept_upload(*kept), False
    if external_id:
        existing = Classification.objects.filter(owner=user, external_id=external_id).first()
        if existing is not None:
            return _retry(existing, data, accession), False
    else:
        filed = spool.filed_kept_upload(user=user, sha256=sha256, accession=accession)
        if filed is not None:
            return filed, False
    return _create(user=user, data=data, filename=filename, accession=accession, external_id=external_id)


def _retry(existing: Classification, data: bytes, accession: str | None) -> Classification:
    _refuse_reused_external_id(existing, data, accession)
    if existing.status == Status.PENDING:  # a retry: classify it now if the model is back
        try:
            return pending.classification_classify_pending(classification=existing)
        except inference.PredictorUnavailable:
            pass
    return existing


@dataclass(frozen=True)
class _CheckedUpload:
    """What the image work leaves for the transaction: the re-encoded file, its size, the model's
    answer (None while the model is unavailable), the upload's hash and display name; the decoded
    pixels are gone."""

    content: bytes
    extension: str
    width: int
    height: int
    prediction: object | None
    sha256: str
    original_filename: str


def _check_and_predict(data: bytes, filename: str) -> _CheckedUpload:
    """Check the image and run the model in an image-work slot; the pixels are dropped inside it."""
    with limits.image_work():  # a few decoded images per process at a time, however many arrive
        checked = check_image(data, filename=filename)
        prediction = pending.predict(checked)
        upload = _CheckedUpload(
            content=checked.content,
            extension=checked.extension,
            width=checked.width,
            height=checked.height,
            prediction=prediction,
            sha256=sha256_of(data),
            original_filename=files.clean_filename(filename),
        )
        del checked  # the decoded pixels go now, before the slot is released
    return upload


def _lock_specimen(*, user, accession, external_id, sha256: str):
    """In the transaction: the specimen locked for a new cell (None without an accession). Raises
    _ConcurrentRetry when a concurrent retry with the same external_id committed first."""
    retry = None
    specimen = None
    if accession:
        specimen, retry = specimen_services.lock_specimen_for_new_cell(
            user=user, accession=accession, sha256=sha256, external_id=external_id
        )
    elif external_id:
        retry = Classification.objects.filter(owner=user, external_id=external_id).first()
    if retry is not None:  # a concurrent retry committed first: its result is the answer
        raise _ConcurrentRetry(retry)
    return specimen


def _insert(*, user, specimen, external_id, upload: _CheckedUpload, stored: list[str]) -> Classification:
    """In the transaction: the image file and the row. The file's name goes into ``stored`` as soon as
    it is written, so that the caller deletes it whatever fails after."""
    classification = Classification(
        owner=user,
        specimen=specimen,
        external_id=external_id,
        original_filename=upload.original_filename,
        image_sha256=upload.sha256,
        width=upload.width,
        height=upload.height,
    )
    classification.image.save(f"x{upload.extension}", ContentFile(upload.content), save=False)
    stored.append(classification.image.name)
    if upload.prediction is not None:
        pending.apply_prediction(classification, upload.prediction)
    classification.save()
    return classification


def _create(
    *, user, data: bytes, filename: str, accession, external_id, keep_on_db_error: bool = True
) -> tuple[Classification, bool]:
    """The check, the model and the transaction of ``classification_get_or_create``.

    ``keep_on_db_error``: keep the upload in the spool when the database fails (else the error
    propagates: the spool's own retries must not keep a second copy).
    """
    if accession:
        # Validate before the slow model call; the row is created in the transaction below.
        accession_validator(accession.strip())
    upload = _check_and_predict(data, filename)

    stored: list[str] = []
    try:
        with transaction.atomic():
            specimen = _lock_specimen(
                user=user, accession=accession, external_id=external_id, sha256=upload.sha256
            )
            classification = _insert(
                user=user, specimen=specimen, external_id=external_id, upload=upload, stored=stored
            )
    except _ConcurrentRetry as race:
        return _retry(race.existing, data, accession), False
    except IntegrityError:
        files.delete_files(*stored)
        if external_id:  # a concurrent retry with the same external_id won the race
            existing = Classification.objects.get(owner=user, external_id=external_id)
            return _retry(existing, data, accession), False
        raise
    except (OperationalError, InterfaceError) as exc:
        files.delete_files(*stored)
        if not keep_on_db_error:
            raise
        reference = _spool_upload(
            user=user, data=data, filename=filename, accession=accession, external_id=external_id
        )
        raise spool.UploadSpooled(reference) from exc
    except BaseException:
        files.delete_files(*stored)
        raise
    return classification, True


class _ConcurrentRetry(Exception):
    def __init__(self, existing: Classification):
        super().__init__(existing.pk)
        self.existing = existing


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _refuse_reused_external_id(existing: Classification, data: bytes, accession: str | None) -> None:
    """A retry sends the same image for the same accession. Anything else under a used id is a
    client's mistake (an id reused for another cell): answering with the stored result would file
    one cell's class under another's order, so it is refused."""
    stored_accession = existing.specimen.accession.upper() if existing.specimen_id else ""
    if existing.image_sha256 != sha256_of(data) or stored_accession != spool.norm_accession(accession):
        raise ValidationError(
            f"external_id {existing.external_id!r} was already used for another image or accession "
            f"(result #{existing.pk}); a retry must send the same image and accession, a new image "
            "needs a new id.",
            code="external_id_conflict",
        )


def _spool_upload(*, user, data: bytes, filename: str, accession, external_id) -> str:
    """Keep an upload the database could not take, and make sure something retries it soon."""
    reference = spool.keep(
        user=user,
        data=data,
        filename=filename,
        accession=accession,
        external_id=external_id,
        sha256=sha256_of(data),
    )
    spool_retry_start()
    return reference


_spool_thread_lock = threading.Lock()


def _file_kept_upload(reference: str, meta: dict) -> Classification:
    """File one kept upload now; raise spool.UploadSpooled(reference) while the database is still away.

    Refused uploads (the image or accession is not accepted after all) are logged and dropped.
    One at a time per process, and between processes (a lock file), so two never file one upload.
    """
    from django.contrib.auth import get_user_model

    with _spool_thread_lock, staging.exclusive(f"{staging.LOCK_DIR}/spool.mutex"):
        data = spool.read(reference)
        try:
            if data is None:  # filed meanwhile, by another thread or process
                return Classification.objects.get(owner_id=meta["user_id"], external_id=meta["external_id"])
            user = get_user_model().objects.get(pk=meta["user_id"])
            existing = Classification.objects.filter(owner=user, external_id=meta["external_id"]).first()
            if existing is not None:
                classification = existing
            else:
                classification, _ = _create(
                    user=user,
                    data=data,
                    filename=meta["filename"],
                    accession=meta["accession"],
                    external_id=meta["external_id"],
                    keep_on_db_error=False,
                )
        except (OperationalError, InterfaceError) as exc:
            raise spool.UploadSpooled(reference) from exc
        except (ValidationError, ImageRejected, PermissionDenied) as exc:
            logger.error("spooled upload %s refused: %s", reference, exc)
            spool.drop(reference)
            raise
        spool.drop(reference)
        return classification


def classification_ingest_spool() -> list[Classification]:
    """File every upload kept while the database was unavailable, oldest first; stops (raising
    spool.UploadSpooled) at the first one the database still cannot take."""
    done = []
    for reference, meta in spool.spool_entries():
        try:
            done.append(_file_kept_upload(reference, meta))
        except (ValidationError, ImageRejected, PermissionDenied, Classification.DoesNotExist):
            continue
    return done


_retrier: threading.Thread | None = None


_retrier_lock = threading.Lock()


def spool_retry_start() -> None:
    """Start this process's retry loop for kept uploads, unless it runs already (or is turned off:
    HEMATOVISION_SPOOL_RETRY_SECONDS = 0). It files them as soon as the database takes writes again
    and stops when the spool is empty."""
    global _retrier
    interval = float(settings.HEMATOVISION_SPOOL_RETRY_SECONDS)
    if interval <= 0:
        return
    with _retrier_lock:
        if _retrier is not None and _retrier.is_alive():
            return
        _retrier = threading.Thread(
            target=_spool_retry_loop, args=(interval,), name="spool-retry", daemon=True
        )
        _retrier.start()


def _spool_retry_loop(interval: float) -> None:
    global _retrier
    from django.db import close_old_connections, connection

    while True:
        time.sleep(interval)
        close_old_connections()
        try:
            filed = classification_ingest_spool()
            if filed:
                logger.info("filed %d kept upload(s)", len(filed))
            with _retrier_lock:  # a spool after this check starts a new loop (spool_retry_start)
                if not spool.spool_entries():
                    _retrier = None
                    return
        except spool.UploadSpooled:
            continue  # the database is still away: try again after the interval
        except Exception:  # noqa: BLE001 - a retry loop has no caller; it logs and tries again
            logger.exception("filing kept uploads failed; retrying")
        finally:
            connection.close()


def classification_finish_stored() -> dict:
    """Classify what was kept while the database (spooled uploads) or the model (pending images)
    was unavailable: ``{"spooled": n, "pending": n}``. Run at start-up (``manage.py resume_jobs``)
    and when a Celery worker starts (``tasks.finish_stored_uploads``)."""
    try:
        spooled = len(classification_ingest_spool())
    except spool.UploadSpooled:  # the database takes no writes yet: the retry loop files them later
        spool_retry_start()
        spooled = 0
    return {"spooled": spooled, "pending": pending.classification_classify_all_pending()}


def classification_delete(*, classification: Classification, user) -> None:
    """Delete an unreviewed result of the user's own, with its files."""
    with transaction.atomic():
        locked = Classification.objects.select_for_update().get(pk=classification.pk)
        if locked.owner_id != user.pk:
            raise PermissionDenied("Only the submitter may delete a result.")
        if locked.review_state != ReviewState.UNREVIEWED:
            raise ValidationError(
                "Reviewed or signed results are part of the record and cannot be deleted.",
                code="reviewed",
            )
        names = (locked.image.name, locked.heatmap.name)
        _log_deletion(locked, user)
        locked.delete()
        transaction.on_commit(lambda: files.delete_files(*names))


def _log_deletion(cell: Classification, user) -> None:
    """An audit record that outlives the row (Django's admin log: who, when, which image, where)."""
    from django.contrib.admin.models import DELETION, LogEntry

    where = f"specimen {cell.specimen.accession}" if cell.specimen_id else "no specimen"
    LogEntry.objects.log_actions(
        user.pk,
        [cell],
        DELETION,
        change_message=(
            f"Deleted unreviewed result #{cell.pk} ({where}; file {cell.original_filename or '-'}; "
            f"image sha256 {cell.image_sha256}; model {cell.status} {cell.predicted_label or '-'})"
        ),
        single_object=True,
    )
