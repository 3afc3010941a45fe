"""Every write to the classifier's data, one transaction each.

Views, API viewsets, tasks and management commands call these; they hold the
business rules (who may do what, which state follows which).
"""

import hashlib
import json
import logging
import threading
import time
import uuid
from datetime import timedelta
from pathlib import PurePath

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.utils import timezone

from . import inference, limits, staging
from .models import (
    CellClass,
    Classification,
    ReviewEvent,
    ReviewState,
    Specimen,
    Status,
    accession_validator,
)
from .permissions import can_review, can_submit
from .validation import CheckedImage, ImageRejected, check_image

logger = logging.getLogger(__name__)


def _clean_filename(name: str) -> str:
    """Keep only the base name, printable and at most 255 characters, for display."""
    base = PurePath(name.replace("\\", "/")).name if name else ""
    base = "".join(ch for ch in base if ch.isprintable())
    return base[-255:]


def _delete_files(*names: str) -> None:
    for name in names:
        if name:
            try:
                default_storage.delete(name)
            except OSError:  # already gone; nothing to leak
                logger.warning("could not delete stored file %s", name)


def specimen_get_or_create(*, user, accession: str) -> Specimen:
    """The specimen for ``accession``, created for ``user`` if new (inside the caller's transaction).

    A technologist may only add to specimens they opened, or to one that holds nothing yet (no cell,
    no job running: opened by an upload that stored nothing), which then becomes theirs; reviewers may
    add to any. Callers commit the specimen only with the cell or staged job that uses it, so a
    failed upload never opens one.
    """
    accession = accession.strip()
    accession_validator(accession)
    _require_order(accession)
    # Case-insensitive: acc-7 is ACC-7 (the first spelling is kept; the database enforces it too).
    specimen, _ = Specimen.objects.get_or_create(
        accession__iexact=accession, defaults={"accession": accession, "created_by": user}
    )
    _check_may_add(specimen, user, typed=accession)
    return specimen


def _is_unclaimed(specimen: Specimen) -> bool:
    """No cell and no unfinished job: nothing in it binds the accession to whoever opened it."""
    from .models import BatchJob

    return not specimen.cells.exists() and not specimen.batch_jobs.filter(
        state__in=[BatchJob.State.QUEUED, BatchJob.State.RUNNING]
    ).exists()


def _check_may_add(specimen: Specimen, user, *, typed: str | None = None) -> None:
    """Raise unless ``user`` may add cells to ``specimen`` now; claim it if it holds nothing yet.

    The refusal names the accession as typed and says nothing else about the stored specimen (its
    spelling, who opened it, whether it is signed): accession numbers are predictable.
    """
    mine = specimen.created_by_id == user.pk or can_review(user)
    if not mine and not specimen.is_signed and _is_unclaimed(specimen):
        specimen.created_by = user  # the first upload that stores something binds the accession
        specimen.save(update_fields=["created_by"])
        mine = True
    if not mine:
        raise ValidationError(
            f"Images cannot be added to accession {typed or specimen.accession} from your account; "
            "ask a reviewer to add them, or to assign the specimen to you.",
            code="accession_taken",
        )
    if specimen.is_signed:
        raise ValidationError(
            f"Specimen {specimen.accession} is signed; no images can be added.", code="specimen_signed"
        )


def specimen_reassign(*, specimen: Specimen, reviewer, owner) -> Specimen:
    """Give a specimen (the accession, its report and every cell in it) to another submitter."""
    if not can_review(reviewer):
        raise PermissionDenied("Only reviewers may assign a specimen to another user.")
    if not can_submit(owner):
        raise ValidationError(
            f"{owner.get_username()} has no role that may submit images.", code="invalid_owner"
        )
    with transaction.atomic():
        locked = Specimen.objects.select_for_update().get(pk=specimen.pk)
        previous = locked.created_by
        locked.created_by = owner
        locked.save(update_fields=["created_by"])
        from django.contrib.admin.models import CHANGE, LogEntry

        LogEntry.objects.log_actions(
            reviewer.pk, [locked], CHANGE, single_object=True,
            change_message=f"Assigned specimen {locked.accession} from {previous.get_username()} to "
            f"{owner.get_username()}",
        )
    return locked


def _lock_specimen_for_new_cell(
    *, user, accession: str, sha256: str, external_id: str | None = None
) -> tuple[Specimen, Classification | None]:
    """The specimen, locked until the new cell is committed (inside the caller's transaction), and the
    cell this upload already stored, if it is a retry (same owner and ``external_id``).

    Signing locks the specimen too, so a cell can never join a specimen that is being signed;
    and one image is counted once per specimen, whoever sends it again.
    """
    specimen = specimen_get_or_create(user=user, accession=accession)
    specimen = Specimen.objects.select_for_update().get(pk=specimen.pk)
    if external_id:  # under the lock a concurrent retry's committed row is visible: it is the answer
        retry = Classification.objects.filter(owner=user, external_id=external_id).first()
        if retry is not None:
            return specimen, retry
    _check_may_add(specimen, user, typed=accession)  # again: it may have been signed since it was read
    twin = specimen.cells.filter(image_sha256=sha256).order_by("id").first()
    if twin is not None:
        raise ValidationError(
            f"This image is already in specimen {specimen.accession} (cell #{twin.pk}); "
            "a cell is counted once.",
            code="duplicate_image",
        )
    return specimen, None


def _apply_prediction(classification: Classification, prediction) -> None:
    classification.status = prediction.status
    classification.predicted_label = prediction.label
    classification.confidence = float(prediction.confidence)
    classification.probabilities = {k: float(v) for k, v in prediction.probabilities.items()}
    classification.flag_reason = prediction.flag_reason or ""
    classification.flag_message = prediction.flag_message or ""
    classification.model_version = prediction.model_version
    classification.cell_box = list(prediction.cell_box) if prediction.cell_box else None


def _predict(checked: CheckedImage):
    """(prediction, heat-map PNG) or (None, None) when the model is unavailable."""
    try:
        predictor = inference.get_predictor()
        prediction = predictor.predict_one(checked.image)
        heatmap = predictor.gradcam_png(checked.image, prediction.label)
    except inference.PredictorUnavailable as exc:
        logger.error("model unavailable, keeping upload as pending: %s", exc)
        return None, None
    except inference.image_decode_errors() as exc:
        raise ImageRejected("not_an_image", f"The image could not be analysed: {exc}", 415) from exc
    return prediction, heatmap


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
    kept = _find_kept_upload(user=user, sha256=sha256, accession=accession, external_id=external_id)
    if kept is not None:
        return _file_kept_upload(*kept), False
    if external_id:
        existing = Classification.objects.filter(owner=user, external_id=external_id).first()
        if existing is not None:
            return _retry(existing, data, accession), False
    else:
        filed = _filed_kept_upload(user=user, sha256=sha256, accession=accession)
        if filed is not None:
            return filed, False
    return _create(
        user=user, data=data, filename=filename, accession=accession, external_id=external_id
    )


def _retry(existing: Classification, data: bytes, accession: str | None) -> Classification:
    _refuse_reused_external_id(existing, data, accession)
    if existing.status == Status.PENDING:  # a retry: classify it now if the model is back
        try:
            return classification_classify_pending(classification=existing)
        except inference.PredictorUnavailable:
            pass
    return existing


def _create(
    *, user, data: bytes, filename: str, accession, external_id, spool: bool = True
) -> tuple[Classification, bool]:
    """The check, the model and the transaction of ``classification_get_or_create``.

    ``spool``: keep the upload when the database fails (else the error propagates: the spool's own
    retries must not keep a second copy).
    """
    if accession:
        # Validate before the slow model call; the row is created in the transaction below.
        accession_validator(accession.strip())
    with limits.image_work():  # a few decoded images per process at a time, however many arrive
        checked = check_image(data, filename=filename)
        prediction, heatmap_png = _predict(checked)
        content, extension, width, height = checked.content, checked.extension, checked.width, checked.height
        del checked  # the decoded pixels go now, before the slot is released

    stored: list[str] = []
    try:
        with transaction.atomic():
            retry = None
            specimen = None
            if accession:
                specimen, retry = _lock_specimen_for_new_cell(
                    user=user, accession=accession, sha256=sha256_of(data), external_id=external_id
                )
            elif external_id:
                retry = Classification.objects.filter(owner=user, external_id=external_id).first()
            if retry is not None:  # a concurrent retry committed first: its result is the answer
                raise _ConcurrentRetry(retry)
            classification = Classification(
                owner=user,
                specimen=specimen,
                external_id=external_id,
                original_filename=_clean_filename(filename),
                image_sha256=sha256_of(data),
                width=width,
                height=height,
            )
            classification.image.save(f"x{extension}", ContentFile(content), save=False)
            stored.append(classification.image.name)
            if prediction is not None:
                _apply_prediction(classification, prediction)
                classification.heatmap.save("x.png", ContentFile(heatmap_png), save=False)
                stored.append(classification.heatmap.name)
            classification.save()
    except _ConcurrentRetry as race:
        return _retry(race.existing, data, accession), False
    except IntegrityError:
        _delete_files(*stored)
        if external_id:  # a concurrent retry with the same external_id won the race
            existing = Classification.objects.get(owner=user, external_id=external_id)
            return _retry(existing, data, accession), False
        raise
    except (OperationalError, InterfaceError) as exc:
        _delete_files(*stored)
        if not spool:
            raise
        reference = _spool_upload(
            user=user, data=data, filename=filename, accession=accession, external_id=external_id
        )
        raise UploadSpooled(reference) from exc
    except BaseException:
        _delete_files(*stored)
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
    if existing.image_sha256 != sha256_of(data) or stored_accession != _norm_accession(accession):
        raise ValidationError(
            f"external_id {existing.external_id!r} was already used for another image or accession "
            f"(result #{existing.pk}); a retry must send the same image and accession, a new image "
            "needs a new id.",
            code="external_id_conflict",
        )


def _norm_accession(accession: str | None) -> str:
    return (accession or "").strip().upper()


SPOOL_DIR = "spool"
SPOOL_PREFIX = "spool-"


class UploadSpooled(OperationalError):
    """The database failed mid-upload; the image was kept in the spool under ``reference``."""

    def __init__(self, reference: str):
        super().__init__(f"database unavailable; upload kept as {reference}")
        self.reference = reference


def _spool_upload(*, user, data: bytes, filename: str, accession, external_id) -> str:
    """Keep an upload the database could not take, and make sure something retries it soon."""
    reference = uuid.uuid4().hex
    meta = {
        "user_id": user.pk,
        "filename": filename,
        "accession": accession,
        # Re-ingesting twice (or a client retry after recovery) must not duplicate the result.
        "external_id": external_id or f"{SPOOL_PREFIX}{reference}",
        "client_external_id": external_id,
        "sha256": sha256_of(data),
        "received_at": timezone.now().isoformat(),
    }
    default_storage.save(f"{SPOOL_DIR}/{reference}.bin", ContentFile(data))
    default_storage.save(f"{SPOOL_DIR}/{reference}.json", ContentFile(json.dumps(meta).encode()))
    logger.error("database unavailable: upload spooled as %s", reference)
    spool_retry_start()
    return reference


def _spool_entries() -> list[tuple[str, dict]]:
    """``(reference, meta)`` of every kept upload, oldest first (the folder and the files may vanish
    while another thread files them)."""
    if not default_storage.exists(SPOOL_DIR):
        return []
    entries = []
    for name in sorted(default_storage.listdir(SPOOL_DIR)[1]):
        if not name.endswith(".json"):
            continue
        try:
            with default_storage.open(f"{SPOOL_DIR}/{name}") as handle:
                meta = json.load(handle)
        except (OSError, ValueError):
            continue
        entries.append((name.removesuffix(".json"), meta))
    entries.sort(key=lambda entry: entry[1].get("received_at", ""))
    return entries


def _find_kept_upload(*, user, sha256: str, accession, external_id) -> tuple[str, dict] | None:
    """``(reference, meta)`` of this user's kept upload of the same image for the same accession (and, with an
    ``external_id``, under the same one): a resend of an upload answered 503 "kept"."""
    for reference, meta in _spool_entries():
        if (
            meta.get("user_id") == user.pk
            and meta.get("sha256") == sha256
            and _norm_accession(meta.get("accession")) == _norm_accession(accession)
            and (meta.get("client_external_id") or None) == external_id
        ):
            return reference, meta
    return None


RESEND_WINDOW = timedelta(days=1)


def _filed_kept_upload(*, user, sha256: str, accession) -> Classification | None:
    """A kept upload of the same image and accession, filed in the last day: what a user who was told
    "kept, do not send it again" finds when they send it again anyway."""
    kept = Classification.objects.filter(
        owner=user,
        image_sha256=sha256,
        external_id__startswith=SPOOL_PREFIX,
        created_at__gte=timezone.now() - RESEND_WINDOW,
    )
    if accession:
        kept = kept.filter(specimen__accession__iexact=accession.strip())
    else:
        kept = kept.filter(specimen__isnull=True)
    return kept.order_by("id").first()


_spool_thread_lock = threading.Lock()


def _file_kept_upload(reference: str, meta: dict) -> Classification:
    """File one kept upload now; raise UploadSpooled(reference) while the database is still away.

    Refused uploads (the image or accession is not accepted after all) are logged and dropped.
    One at a time per process, and between processes (a lock file), so two never file one upload.
    """
    from django.contrib.auth import get_user_model

    with _spool_thread_lock, staging.exclusive(f"{staging.LOCK_DIR}/spool.mutex"):
        try:
            with default_storage.open(f"{SPOOL_DIR}/{reference}.bin") as handle:
                data = handle.read()
        except FileNotFoundError:
            data = None
        try:
            if data is None:  # filed meanwhile, by another thread or process
                return Classification.objects.get(owner_id=meta["user_id"], external_id=meta["external_id"])
            user = get_user_model().objects.get(pk=meta["user_id"])
            existing = Classification.objects.filter(owner=user, external_id=meta["external_id"]).first()
            if existing is not None:
                classification = existing
            else:
                classification, _ = _create(
                    user=user, data=data, filename=meta["filename"], accession=meta["accession"],
                    external_id=meta["external_id"], spool=False,
                )
        except (OperationalError, InterfaceError) as exc:
            raise UploadSpooled(reference) from exc
        except (ValidationError, ImageRejected, PermissionDenied) as exc:
            logger.error("spooled upload %s refused: %s", reference, exc)
            _delete_files(f"{SPOOL_DIR}/{reference}.bin", f"{SPOOL_DIR}/{reference}.json")
            raise
        _delete_files(f"{SPOOL_DIR}/{reference}.bin", f"{SPOOL_DIR}/{reference}.json")
        return classification


def classification_ingest_spool() -> list[Classification]:
    """File every upload kept while the database was unavailable, oldest first; stops (raising
    UploadSpooled) at the first one the database still cannot take."""
    done = []
    for reference, meta in _spool_entries():
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
                if not _spool_entries():
                    _retrier = None
                    return
        except UploadSpooled:
            continue  # the database is still away: try again after the interval
        except Exception:  # noqa: BLE001 - a retry loop has no caller; it logs and tries again
            logger.exception("filing kept uploads failed; retrying")
        finally:
            connection.close()


def classification_classify_pending(*, classification: Classification) -> Classification:
    """Run the model on an image stored while the model was unavailable."""
    if classification.status != Status.PENDING:
        return classification
    with classification.image.open("rb") as handle:
        data = handle.read()
    with limits.image_work():
        checked = check_image(data, filename=classification.original_filename)
        prediction, heatmap_png = _predict(checked)
        del checked
    if prediction is None:
        raise inference.PredictorUnavailable("The model is still unavailable.")
    old_heatmap = classification.heatmap.name
    with transaction.atomic():
        locked = Classification.objects.select_for_update().get(pk=classification.pk)
        if locked.status != Status.PENDING:
            return locked
        _apply_prediction(locked, prediction)
        locked.heatmap.save("x.png", ContentFile(heatmap_png), save=False)
        locked.save()
    _delete_files(old_heatmap)
    return locked


def classification_classify_all_pending() -> int:
    """Classify every image stored while the model was unavailable; stops if it still is."""
    count = 0
    for classification in Classification.objects.filter(status=Status.PENDING).order_by("id"):
        try:
            classification_classify_pending(classification=classification)
        except inference.PredictorUnavailable as exc:
            logger.error("model still unavailable; pending images wait: %s", exc)
            break
        count += 1
    return count


def classification_finish_stored() -> dict:
    """Classify what was kept while the database (spooled uploads) or the model (pending images)
    was unavailable: ``{"spooled": n, "pending": n}``. Run at start-up (``manage.py resume_jobs``)
    and when a Celery worker starts (``tasks.finish_stored_uploads``)."""
    try:
        spooled = len(classification_ingest_spool())
    except UploadSpooled:  # the database takes no writes yet: the retry loop files them later
        spool_retry_start()
        spooled = 0
    return {"spooled": spooled, "pending": classification_classify_all_pending()}


def _require_unsigned(classification: Classification) -> None:
    if classification.is_signed:
        raise ValidationError("This result is signed and final; it cannot be changed.", code="signed")


def classification_confirm(*, classification: Classification, reviewer) -> Classification:
    """Confirm the model's class. An unidentified cell has no class to confirm: the reviewer
    chooses one (``classification_review``)."""
    if classification.status == Status.UNIDENTIFIED:
        raise ValidationError(
            "The model did not classify this cell (unidentified); choose its class.", code="unidentified"
        )
    return classification_review(
        classification=classification, reviewer=reviewer, label=classification.predicted_label
    )


def _require_seen(locked: Classification, seen: str | None) -> None:
    """Refuse a review or sign-off decided on a page older than the cell's last review.

    Two reviewers on one cell: the second one's click must not silently overwrite (or sign) a
    class the first one set after the second one's page was drawn.
    """
    if seen is None or seen == locked.review_version:
        return
    if locked.review_state == ReviewState.UNREVIEWED:
        now = "unreviewed"
    else:
        who = locked.reviewed_by.get_username() if locked.reviewed_by else "another reviewer"
        now = f"{locked.get_review_state_display().lower()} as {locked.get_final_label_display()} by {who}"
    raise ValidationError(
        f"This cell changed after your page was loaded (now {now}); look at it again before you decide.",
        code="changed",
    )


def classification_review(
    *, classification: Classification, reviewer, label: str, seen: str | None = None
) -> Classification:
    """Confirm the model's label or reclassify the cell; keep an audit entry.

    ``seen``: the ``review_version`` the reviewer's page showed (portal forms send it); a cell
    reviewed since then is refused (``changed``) rather than overwritten.
    """
    if not can_review(reviewer):
        raise PermissionDenied("Only reviewers may review results.")
    if label not in CellClass.values:
        raise ValidationError(f"Unknown cell class {label!r}.", code="invalid_label")
    with transaction.atomic():
        locked = Classification.objects.select_for_update().get(pk=classification.pk)
        _require_unsigned(locked)
        _require_seen(locked, seen)
        if locked.status == Status.PENDING:
            raise ValidationError("The model has not classified this image yet.", code="pending")
        from_label = locked.label
        confirmed = label == locked.predicted_label and locked.status == Status.CLASSIFIED
        locked.final_label = label
        locked.review_state = ReviewState.CONFIRMED if confirmed else ReviewState.RECLASSIFIED
        locked.reviewed_by = reviewer
        locked.reviewed_at = timezone.now()
        locked.save(update_fields=["final_label", "review_state", "reviewed_by", "reviewed_at"])
        ReviewEvent.objects.create(
            classification=locked,
            actor=reviewer,
            action=ReviewEvent.Action.CONFIRM if confirmed else ReviewEvent.Action.RECLASSIFY,
            from_label=from_label,
            to_label=label,
        )
    return locked


def _sign(locked: Classification, reviewer, now) -> None:
    locked.review_state = ReviewState.SIGNED
    locked.signed_by = reviewer
    locked.signed_at = now
    locked.save(update_fields=["review_state", "signed_by", "signed_at"])
    ReviewEvent.objects.create(
        classification=locked, actor=reviewer, action=ReviewEvent.Action.SIGN,
        from_label=locked.final_label, to_label=locked.final_label,
    )


def specimen_review(
    *, specimen: Specimen, reviewer, seen: dict[int, str], label: str | None = None
) -> list[Classification]:
    """Review many cells of one specimen at once (the gallery): give them ``label``, or with no label
    confirm each one's model class ("accept"). All or nothing, one audit row per cell.

    ``seen``: cell id -> the ``review_version`` the reviewer's page showed; a cell changed since then
    (another reviewer) refuses the whole change (``changed``), as does a cell of another specimen.
    """
    if not can_review(reviewer):
        raise PermissionDenied("Only reviewers may review results.")
    if not seen:
        raise ValidationError("Select at least one cell.", code="no_cells")
    with transaction.atomic():
        locked = Specimen.objects.select_for_update().get(pk=specimen.pk)
        if locked.is_signed:
            raise ValidationError(
                f"Specimen {locked.accession} is signed; it cannot be changed.", code="signed"
            )
        cells = {c.pk: c for c in locked.cells.filter(pk__in=list(seen))}
        missing = sorted(set(seen) - set(cells))
        if missing:
            raise ValidationError(
                f"Cell(s) {', '.join(f'#{pk}' for pk in missing)} are not in specimen {locked.accession}.",
                code="not_in_specimen",
            )
        done = []
        for pk in sorted(seen):
            cell = cells[pk]
            try:
                if label is None:
                    done.append(_confirm(cell, reviewer, seen[pk]))
                else:
                    done.append(classification_review(
                        classification=cell, reviewer=reviewer, label=label, seen=seen[pk]
                    ))
            except ValidationError as exc:
                raise ValidationError(f"#{pk}: {' '.join(exc.messages)}", code=exc.code) from exc
    return done


def _confirm(cell: Classification, reviewer, seen: str | None) -> Classification:
    if cell.status == Status.UNIDENTIFIED:
        raise ValidationError(
            "The model did not classify this cell (unidentified); choose its class.", code="unidentified"
        )
    return classification_review(
        classification=cell, reviewer=reviewer, label=cell.predicted_label, seen=seen
    )


def specimen_sign(
    *, specimen: Specimen, reviewer, comment: str = "", seen: str | None = None
) -> Specimen:
    """Sign a specimen as a whole (its differential and every cell); refused while any cell is
    unreviewed or pending. Cells are never signed one by one.

    ``seen``: the specimen's ``review_version`` (``selectors.specimen_review_version``) on the
    confirmation the reviewer saw; a cell reviewed since then refuses the sign-off (``changed``), so
    the differential signed is the one shown.
    """
    from .selectors import specimen_review_version

    if not can_review(reviewer):
        raise PermissionDenied("Only reviewers may sign specimens.")
    comment = (comment or "").strip()
    if len(comment) > 2000:
        raise ValidationError("The comment is longer than 2000 characters.", code="comment_too_long")
    with transaction.atomic():
        locked = Specimen.objects.select_for_update().get(pk=specimen.pk)
        if locked.is_signed:
            raise ValidationError(f"Specimen {locked.accession} is already signed.", code="signed")
        cells = list(locked.cells.select_for_update().order_by("id"))
        if not cells:
            raise ValidationError(f"Specimen {locked.accession} has no cells to sign.", code="empty")
        if seen is not None and seen != specimen_review_version(cells):
            raise ValidationError(
                f"Specimen {locked.accession} changed after the confirmation was shown (a cell was "
                "reviewed or added); look at the differential again before signing.",
                code="changed",
            )
        unreviewed = [c for c in cells if c.review_state == ReviewState.UNREVIEWED]
        if unreviewed:
            unidentified = sum(1 for c in unreviewed if c.status != Status.CLASSIFIED)
            raise ValidationError(
                f"{len(unreviewed)} cell(s) are not reviewed yet ({unidentified} unidentified); "
                "review every cell before signing.",
                code="unreviewed",
            )
        now = timezone.now()
        for cell in cells:
            if not cell.is_signed:
                _sign(cell, reviewer, now)
        locked.signed_by = reviewer
        locked.signed_at = now
        locked.signed_by_name = reviewer.get_full_name() or reviewer.get_username()
        locked.signed_by_role = _role(reviewer)
        locked.review_comment = comment
        locked.save(
            update_fields=["signed_by", "signed_at", "signed_by_name", "signed_by_role", "review_comment"]
        )
    return locked


def _role(user) -> str:
    """The signer's role as the report prints it."""
    from accounts.roles import REVIEWER

    groups = set(user.groups.values_list("name", flat=True))
    if REVIEWER in groups:
        return REVIEWER
    return "Administrator" if user.is_superuser else ", ".join(sorted(groups))


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
        transaction.on_commit(lambda: _delete_files(*names))


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


# ---- LIS interface (issue 19): orders, report versions and amendments, the outbound message log ----

IDENTIFIER_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def order_create(*, user, data: dict) -> tuple["Order", bool]:  # noqa: F821 - models.Order, imported below
    """File an LIS order: bind the accession to its patient and placer order number.

    ``data``: accession, placer_order_number, placer_namespace, patient_id, patient_id_authority,
    patient_family_name, patient_given_name, patient_birth_date, patient_sex, ordering_provider_*,
    collected_at, wbc_count, source, message_control_id. The specimen is created (or bound when it was
    opened by an upload and has no order yet). The same order sent again (same accession and placer
    number) is answered with the stored one, ``created`` False; another accession under a used placer
    number, or another placer number for an ordered accession, is refused (``order_conflict``).
    """
    import re

    from .models import Order
    from .permissions import can_order

    if not can_order(user):
        raise PermissionDenied("Only interface accounts and reviewers may place orders.")
    accession = (data.get("accession") or "").strip()
    accession_validator(accession)
    placer = (data.get("placer_order_number") or "").strip()
    namespace = (data.get("placer_namespace") or "").strip()
    for name, value in (("placer_order_number", placer), ("patient_id", data.get("patient_id") or ""),
                        ("patient_id_authority", data.get("patient_id_authority") or "")):
        if not re.match(IDENTIFIER_RE, value.strip()):
            raise ValidationError(
                f"{name} is required: 1-64 letters, digits, '.', '_' or '-'.", code="invalid_order"
            )
    fields = {
        key: data[key] for key in (
            "patient_family_name", "patient_given_name", "patient_birth_date", "patient_sex",
            "ordering_provider_id", "ordering_provider_family_name", "ordering_provider_given_name",
            "collected_at", "wbc_count", "source", "message_control_id",
        ) if data.get(key) not in (None, "")
    }
    fields["patient_id"] = data["patient_id"].strip()
    fields["patient_id_authority"] = data["patient_id_authority"].strip()
    with transaction.atomic():
        same_placer = Order.objects.select_related("specimen").filter(
            placer_namespace=namespace, placer_order_number=placer
        ).first()
        specimen, _ = Specimen.objects.get_or_create(
            accession__iexact=accession, defaults={"accession": accession, "created_by": user}
        )
        specimen = Specimen.objects.select_for_update().get(pk=specimen.pk)
        existing = Order.objects.filter(specimen=specimen).first()
        if existing is not None or same_placer is not None:
            if existing is not None and same_placer is not None and existing.pk == same_placer.pk:
                return existing, False  # the same order again (a resend): nothing changes
            raise ValidationError(
                f"Accession {accession} or placer order number {placer} is already bound to another "
                "order; an order cannot be moved to another specimen.",
                code="order_conflict",
            )
        order = Order.objects.create(
            specimen=specimen, placer_order_number=placer, placer_namespace=namespace,
            created_by=user, **fields,
        )
    return order, True


def _require_order(accession: str) -> None:
    """HEMATOVISION_REQUIRE_ORDER: images land only on accessions an LIS ordered."""
    from .models import Order

    if settings.HEMATOVISION_REQUIRE_ORDER and not Order.objects.filter(
        specimen__accession__iexact=accession
    ).exists():
        raise ValidationError(
            f"Accession {accession} has no order from the LIS; this lab accepts images only for "
            "ordered accessions.",
            code="no_order",
        )


def _signer_release(user, *, number: int, corrected: bool, reason: str, at):
    from .interop import Release

    return Release(
        number=number, corrected=corrected, reason=reason, released_at=at,
        signer_id=user.get_username(), signer_family=user.last_name, signer_given=user.first_name,
        signer_name=user.get_full_name() or user.get_username(),
    )


def report_release(*, specimen: Specimen, reviewer, reason: str = "", at=None) -> "ReportVersion":  # noqa: F821
    """Release the specimen's report as it is now: a new version with its HL7 ORU^R01 and FHIR bundle
    kept as sent (MSH-10 stable per version), queued to every LIS destination. The first version is
    final, later ones corrected. Runs inside the caller's transaction (the sign-off's, the amendment's).
    """
    from .interop import fhir, hl7, lis_images
    from .interop import model_versions as versions_of
    from .models import Order, OutboundMessage, ReportVersion
    from .selectors import specimen_differential

    at = at or specimen.signed_at or timezone.now()
    previous = specimen.report_versions.order_by("-number").first()
    number = previous.number + 1 if previous else 1
    release = _signer_release(reviewer, number=number, corrected=number > 1, reason=reason, at=at)
    version = ReportVersion.objects.create(
        specimen=specimen, number=number,
        kind=ReportVersion.Kind.CORRECTED if number > 1 else ReportVersion.Kind.FINAL,
        reason=reason, released_at=at, released_by=reviewer, released_by_name=release.signer_name,
    )
    order = Order.objects.filter(specimen=specimen).first()
    differential = specimen_differential(specimen=specimen)
    context = {
        "order": order, "release": release, "model_versions": versions_of(specimen.cells.all()),
        "images": lis_images(specimen.cells.select_related("owner")),
        "comment": getattr(specimen, "review_comment", "") or "",
    }
    version.hl7 = hl7.oru_r01(specimen, differential, control_id=version.control_id, now=at, **context)
    version.fhir = fhir.specimen_bundle(specimen, differential, now=at, **context)
    version.save(update_fields=["hl7", "fhir"])
    for destination in settings.HEMATOVISION_LIS_DESTINATIONS:
        OutboundMessage.objects.create(
            report=version, destination=destination, control_id=version.control_id,
            payload=version.hl7, next_attempt_at=timezone.now(),
        )
    return version


def specimen_amend(
    *, specimen: Specimen, reviewer, reason: str, labels: dict[int, str] | None = None
) -> "ReportVersion":  # noqa: F821
    """Correct a signed specimen: give cells new classes (``labels``: cell id -> class) and release a
    corrected report version with the reason. The earlier versions are kept as they were sent."""
    if not can_review(reviewer):
        raise PermissionDenied("Only reviewers may amend a signed specimen.")
    reason = " ".join((reason or "").split())
    if not reason:
        raise ValidationError("Say why the report is amended (reason).", code="reason_required")
    if len(reason) > 2000:
        raise ValidationError("The reason is longer than 2000 characters.", code="reason_too_long")
    labels = labels or {}
    with transaction.atomic():
        locked = Specimen.objects.select_for_update().get(pk=specimen.pk)
        if not locked.is_signed:
            raise ValidationError(
                f"Specimen {locked.accession} is not signed; review and sign it instead.", code="not_signed"
            )
        cells = {c.pk: c for c in locked.cells.select_for_update().filter(pk__in=list(labels))}
        missing = sorted(set(labels) - set(cells))
        if missing:
            raise ValidationError(
                f"Cell(s) {', '.join(f'#{pk}' for pk in missing)} are not in specimen {locked.accession}.",
                code="not_in_specimen",
            )
        now = timezone.now()
        for pk, label in sorted(labels.items()):
            if label not in CellClass.values:
                raise ValidationError(f"Unknown cell class {label!r}.", code="invalid_label")
            cell = cells[pk]
            if cell.final_label == label:
                continue
            ReviewEvent.objects.create(
                classification=cell, actor=reviewer, action=ReviewEvent.Action.RECLASSIFY,
                from_label=cell.label, to_label=label,
            )
            cell.final_label = label
            cell.reviewed_by = reviewer
            cell.reviewed_at = now
            cell.signed_by = reviewer
            cell.signed_at = now
            cell.save(update_fields=["final_label", "reviewed_by", "reviewed_at", "signed_by", "signed_at"])
        return report_release(specimen=locked, reviewer=reviewer, reason=reason, at=now)


def release_on_sign(sender, instance: Specimen, update_fields=None, **kwargs) -> None:
    """post_save of Specimen: the sign-off (``specimen_sign`` saves ``signed_at``) releases version 1.

    A receiver rather than a call inside ``specimen_sign`` so every way of signing releases, in the
    sign-off's own transaction; an amendment releases its version itself.
    """
    if not instance.signed_at or not instance.signed_by_id:
        return
    if update_fields is not None and "signed_at" not in update_fields:
        return
    if instance.report_versions.exists():
        return
    report_release(specimen=instance, reviewer=instance.signed_by, at=instance.signed_at)


def message_backoff(attempts: int) -> timedelta:
    """The wait before the next delivery attempt: doubling from the first to the longest."""
    first = float(settings.HEMATOVISION_HL7_RETRY_SECONDS)
    longest = float(settings.HEMATOVISION_HL7_RETRY_MAX_SECONDS)
    return timedelta(seconds=min(first * 2 ** max(attempts - 1, 0), longest))


def message_record_attempt(*, message, ack_code: str = "", ack_text: str = "", error: str = ""):
    """Log one delivery attempt: accepted (ACK AA/CA), or kept for a retry after a negative ACK
    (AE/AR/CE/CR) or no ACK at all. A message is never dropped."""
    from .models import OutboundMessage

    now = timezone.now()
    with transaction.atomic():
        locked = OutboundMessage.objects.select_for_update().get(pk=message.pk)
        locked.attempts += 1
        locked.last_attempt_at = now
        locked.ack_code = ack_code
        locked.ack_text = ack_text[:500]
        locked.last_error = error[:500]
        accepted = ack_code in ("AA", "CA")
        locked.history = [*locked.history, {
            "at": now.isoformat(), "ack": ack_code, "text": ack_text[:200], "error": error[:200],
        }]
        if accepted:
            locked.state = OutboundMessage.State.ACCEPTED
            locked.accepted_at = now
        else:
            locked.state = OutboundMessage.State.RETRY
            locked.next_attempt_at = now + message_backoff(locked.attempts)
        locked.save()
    if not accepted:
        logger.warning("HL7 %s to %s not accepted (%s %s %s); retry at %s", locked.control_id,
                       locked.destination, ack_code or "no ACK", ack_text, error, locked.next_attempt_at)
    return locked


def message_resend(*, message, user):
    """Send a message again now (the admin's action), whatever its state."""
    from .models import OutboundMessage

    if not can_review(user):
        raise PermissionDenied("Only reviewers and administrators may resend results.")
    OutboundMessage.objects.filter(pk=message.pk).update(
        state=OutboundMessage.State.QUEUED, next_attempt_at=timezone.now()
    )
