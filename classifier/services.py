"""Every write to the classifier's data, one transaction each.

Views, API viewsets, tasks and management commands call these; they hold the
business rules (who may do what, which state follows which).
"""

import json
import logging
import uuid
from pathlib import PurePath

from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.utils import timezone

from . import inference
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
    """The specimen for ``accession``, created for ``user`` if new.

    A technologist may only add to specimens they opened; reviewers may add to any.
    """
    accession = accession.strip()
    accession_validator(accession)
    # Case-insensitive: acc-7 is ACC-7 (the first spelling is kept; the database enforces it too).
    specimen, _ = Specimen.objects.get_or_create(
        accession__iexact=accession, defaults={"accession": accession, "created_by": user}
    )
    _check_may_add(specimen, user)
    return specimen


def _check_may_add(specimen: Specimen, user) -> None:
    """Raise unless ``user`` may add cells to ``specimen`` now."""
    accession = specimen.accession
    if specimen.created_by_id != user.pk and not can_review(user):
        raise ValidationError(
            f"Accession {accession} was opened by another user; ask a reviewer to add images to it.",
            code="accession_taken",
        )
    if specimen.is_signed:
        raise ValidationError(
            f"Specimen {accession} is signed; no images can be added.", code="specimen_signed"
        )


def _lock_specimen_for_new_cell(*, user, accession: str, sha256: str) -> Specimen:
    """The specimen, locked until the new cell is committed (inside the caller's transaction).

    Signing locks the specimen too, so a cell can never join a specimen that is being signed;
    and one image is counted once per specimen, whoever sends it again.
    """
    specimen = specimen_get_or_create(user=user, accession=accession)
    specimen = Specimen.objects.select_for_update().get(pk=specimen.pk)
    _check_may_add(specimen, user)  # again: it may have been signed since it was read
    twin = specimen.cells.filter(image_sha256=sha256).order_by("id").first()
    if twin is not None:
        raise ValidationError(
            f"This image is already in specimen {specimen.accession} (cell #{twin.pk}); "
            "a cell is counted once.",
            code="duplicate_image",
        )
    return specimen


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

    A repeated ``external_id`` returns the existing result. Bad input raises
    ImageRejected or ValidationError and leaves no row and no file. When the model
    cannot load, the image is kept with status ``pending`` for later.
    """
    if not can_submit(user):
        raise PermissionDenied("Only technologists and reviewers may submit images.")
    external_id = (external_id or "").strip() or None
    if external_id:
        existing = Classification.objects.filter(owner=user, external_id=external_id).first()
        if existing is not None:
            _refuse_reused_external_id(existing, data, accession)
            if existing.status == Status.PENDING:  # a retry: classify it now if the model is back
                try:
                    return classification_classify_pending(classification=existing)
                except inference.PredictorUnavailable:
                    pass
            return existing
    checked = check_image(data, filename=filename)
    if accession:
        # Validate before the slow model call; the row is created in the transaction below.
        accession_validator(accession.strip())
    prediction, heatmap_png = _predict(checked)

    stored: list[str] = []
    try:
        with transaction.atomic():
            specimen = (
                _lock_specimen_for_new_cell(user=user, accession=accession, sha256=checked.sha256)
                if accession
                else None
            )
            classification = Classification(
                owner=user,
                specimen=specimen,
                external_id=external_id,
                original_filename=_clean_filename(filename),
                image_sha256=checked.sha256,
                width=checked.width,
                height=checked.height,
            )
            classification.image.save(f"x{checked.extension}", ContentFile(checked.content), save=False)
            stored.append(classification.image.name)
            if prediction is not None:
                _apply_prediction(classification, prediction)
                classification.heatmap.save("x.png", ContentFile(heatmap_png), save=False)
                stored.append(classification.heatmap.name)
            classification.save()
    except IntegrityError:
        _delete_files(*stored)
        if external_id:  # a concurrent retry with the same external_id won the race
            return Classification.objects.get(owner=user, external_id=external_id)
        raise
    except (OperationalError, InterfaceError) as exc:
        _delete_files(*stored)
        reference = _spool_upload(
            user=user, data=data, filename=filename, accession=accession, external_id=external_id
        )
        raise UploadSpooled(reference) from exc
    except BaseException:
        _delete_files(*stored)
        raise
    return classification


def _refuse_reused_external_id(existing: Classification, data: bytes, accession: str | None) -> None:
    """A retry sends the same image for the same accession. Anything else under a used id is a
    client's mistake (an id reused for another cell): answering with the stored result would file
    one cell's class under another's order, so it is refused."""
    import hashlib

    stored_accession = existing.specimen.accession.upper() if existing.specimen_id else ""
    if existing.image_sha256 != hashlib.sha256(data).hexdigest() or stored_accession != (
        (accession or "").strip().upper()
    ):
        raise ValidationError(
            f"external_id {existing.external_id!r} was already used for another image or accession "
            f"(result #{existing.pk}); a retry must send the same image and accession, a new image "
            "needs a new id.",
            code="external_id_conflict",
        )


SPOOL_DIR = "spool"


class UploadSpooled(OperationalError):
    """The database failed mid-upload; the image was kept in the spool under ``reference``."""

    def __init__(self, reference: str):
        super().__init__(f"database unavailable; upload kept as {reference}")
        self.reference = reference


def _spool_upload(*, user, data: bytes, filename: str, accession, external_id) -> str:
    """Keep an upload the database could not take, for ``classification_ingest_spool``."""
    reference = uuid.uuid4().hex
    meta = {
        "user_id": user.pk,
        "filename": filename,
        "accession": accession,
        # Re-ingesting twice (or a client retry after recovery) must not duplicate the result.
        "external_id": external_id or f"spool-{reference}",
        "received_at": timezone.now().isoformat(),
    }
    default_storage.save(f"{SPOOL_DIR}/{reference}.bin", ContentFile(data))
    default_storage.save(f"{SPOOL_DIR}/{reference}.json", ContentFile(json.dumps(meta).encode()))
    logger.error("database unavailable: upload spooled as %s", reference)
    return reference


def classification_ingest_spool() -> list[Classification]:
    """Classify every upload spooled while the database was unavailable; oldest first."""
    from django.contrib.auth import get_user_model

    if not default_storage.exists(SPOOL_DIR):
        return []
    done = []
    for name in sorted(default_storage.listdir(SPOOL_DIR)[1]):
        if not name.endswith(".json"):
            continue
        reference = name.removesuffix(".json")
        with default_storage.open(f"{SPOOL_DIR}/{name}") as handle:
            meta = json.load(handle)
        with default_storage.open(f"{SPOOL_DIR}/{reference}.bin") as handle:
            data = handle.read()
        user = get_user_model().objects.get(pk=meta["user_id"])
        try:
            done.append(
                classification_create(
                    user=user, data=data, filename=meta["filename"],
                    accession=meta["accession"], external_id=meta["external_id"],
                )
            )
        except (ValidationError, ImageRejected, PermissionDenied) as exc:
            logger.error("spooled upload %s refused: %s", reference, exc)
        _delete_files(f"{SPOOL_DIR}/{reference}.bin", f"{SPOOL_DIR}/{name}")
    return done


def classification_classify_pending(*, classification: Classification) -> Classification:
    """Run the model on an image stored while the model was unavailable."""
    if classification.status != Status.PENDING:
        return classification
    with classification.image.open("rb") as handle:
        checked = check_image(handle.read(), filename=classification.original_filename)
    prediction, heatmap_png = _predict(checked)
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
    spooled = len(classification_ingest_spool())
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


def classification_sign(
    *, classification: Classification, reviewer, seen: str | None = None
) -> Classification:
    """Sign a reviewed result: it becomes final and read-only (``seen`` as in ``classification_review``)."""
    if not can_review(reviewer):
        raise PermissionDenied("Only reviewers may sign results.")
    with transaction.atomic():
        locked = Classification.objects.select_for_update().get(pk=classification.pk)
        _require_unsigned(locked)
        _require_seen(locked, seen)
        if locked.review_state == ReviewState.UNREVIEWED:
            raise ValidationError("Confirm or reclassify the cell before signing.", code="unreviewed")
        _sign(locked, reviewer, timezone.now())
    return locked


def specimen_sign(*, specimen: Specimen, reviewer) -> Specimen:
    """Sign a specimen and all its cells; refused while any cell is unreviewed."""
    if not can_review(reviewer):
        raise PermissionDenied("Only reviewers may sign specimens.")
    with transaction.atomic():
        locked = Specimen.objects.select_for_update().get(pk=specimen.pk)
        if locked.is_signed:
            raise ValidationError(f"Specimen {locked.accession} is already signed.", code="signed")
        cells = list(locked.cells.select_for_update())
        if not cells:
            raise ValidationError(f"Specimen {locked.accession} has no cells to sign.", code="empty")
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
        locked.save(update_fields=["signed_by", "signed_at"])
    return locked


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
