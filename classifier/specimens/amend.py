"""Released report versions: the first at sign-off, a corrected one for each amendment (issue 19)."""

import logging

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from classifier.models import CellClass, ReviewEvent, Specimen
from classifier.permissions import can_review

logger = logging.getLogger(__name__)


def _signer_release(user, *, number: int, corrected: bool, reason: str, at):
    from classifier.interop import Release

    return Release(
        number=number,
        corrected=corrected,
        reason=reason,
        released_at=at,
        signer_id=user.get_username(),
        signer_family=user.last_name,
        signer_given=user.first_name,
        signer_name=user.get_full_name() or user.get_username(),
    )


def report_release(*, specimen: Specimen, reviewer, reason: str = "", at=None) -> "ReportVersion":  # noqa: F821
    """Release the specimen's report as it is now: a new version with its HL7 ORU^R01 and FHIR bundle
    kept as sent (MSH-10 stable per version), queued to every LIS destination. The first version is
    final, later ones corrected. Runs inside the caller's transaction (the sign-off's, the amendment's).
    """
    from classifier.interop import fhir, hl7, lis_images
    from classifier.interop import model_versions as versions_of
    from classifier.interop.result import ResultReport
    from classifier.models import Order, OutboundMessage, ReportVersion
    from classifier.specimens.selectors import specimen_differential

    at = at or specimen.signed_at or timezone.now()
    previous = specimen.report_versions.order_by("-number").first()
    number = previous.number + 1 if previous else 1
    release = _signer_release(reviewer, number=number, corrected=number > 1, reason=reason, at=at)
    version = ReportVersion.objects.create(
        specimen=specimen,
        number=number,
        kind=ReportVersion.Kind.CORRECTED if number > 1 else ReportVersion.Kind.FINAL,
        reason=reason,
        released_at=at,
        released_by=reviewer,
        released_by_name=release.signer_name,
    )
    order = Order.objects.filter(specimen=specimen).first()
    differential = specimen_differential(specimen=specimen)
    report = ResultReport(
        specimen=specimen,
        differential=differential,
        order=order,
        release=release,
        now=at,
        model_versions=versions_of(specimen.cells.all()),
        images=lis_images(specimen.cells.select_related("owner")),
        comment=getattr(specimen, "review_comment", "") or "",
    )
    version.hl7 = hl7.oru_r01(report, control_id=version.control_id)
    version.fhir = fhir.specimen_bundle(report)
    version.save(update_fields=["hl7", "fhir"])
    for destination in settings.HEMATOVISION_LIS_DESTINATIONS:
        OutboundMessage.objects.create(
            report=version,
            destination=destination,
            control_id=version.control_id,
            payload=version.hl7,
            next_attempt_at=timezone.now(),
        )
    return version


def _clean_reason(reviewer, reason: str) -> str:
    if not can_review(reviewer):
        raise PermissionDenied("Only reviewers may amend a signed specimen.")
    reason = " ".join((reason or "").split())
    if not reason:
        raise ValidationError("Say why the report is amended (reason).", code="reason_required")
    if len(reason) > 2000:
        raise ValidationError("The reason is longer than 2000 characters.", code="reason_too_long")
    return reason


def _lock_signed(specimen: Specimen) -> Specimen:
    """The specimen, locked; refused unless it is signed (an open amendment is not: it is re-signed)."""
    locked = Specimen.objects.select_for_update().get(pk=specimen.pk)
    if locked.amendment_is_open:
        raise ValidationError(
            f"An amendment of specimen {locked.accession} is open ({locked.amendment_reason}); add its "
            "images, review them and sign the specimen to release the corrected report.",
            code="amendment_open",
        )
    if not locked.is_signed:
        raise ValidationError(
            f"Specimen {locked.accession} is not signed; review and sign it instead.", code="not_signed"
        )
    return locked


def _relabel(locked: Specimen, reviewer, labels: dict[int, str], now) -> None:
    """Give signed cells of the locked specimen new classes, one audit row each (all or nothing)."""
    cells = {c.pk: c for c in locked.cells.select_for_update().filter(pk__in=list(labels))}
    missing = sorted(set(labels) - set(cells))
    if missing:
        raise ValidationError(
            f"Cell(s) {', '.join(f'#{pk}' for pk in missing)} are not in specimen {locked.accession}.",
            code="not_in_specimen",
        )
    for pk, label in sorted(labels.items()):
        if label not in CellClass.values:
            raise ValidationError(f"Unknown cell class {label!r}.", code="invalid_label")
        cell = cells[pk]
        if cell.final_label == label:
            continue
        ReviewEvent.objects.create(
            classification=cell,
            actor=reviewer,
            action=ReviewEvent.Action.RECLASSIFY,
            from_label=cell.label,
            to_label=label,
        )
        cell.final_label = label
        cell.reviewed_by = reviewer
        cell.reviewed_at = now
        cell.signed_by = reviewer
        cell.signed_at = now
        cell.save(update_fields=["final_label", "reviewed_by", "reviewed_at", "signed_by", "signed_at"])


def specimen_amend(
    *, specimen: Specimen, reviewer, reason: str, labels: dict[int, str] | None = None
) -> "ReportVersion":  # noqa: F821
    """Correct a signed specimen: give cells new classes (``labels``: cell id -> class) and release a
    corrected report version with the reason. The earlier versions are kept as they were sent."""
    reason = _clean_reason(reviewer, reason)
    with transaction.atomic():
        locked = _lock_signed(specimen)
        now = timezone.now()
        _relabel(locked, reviewer, labels or {}, now)
        return report_release(specimen=locked, reviewer=reviewer, reason=reason, at=now)


def amendment_open(
    *, specimen: Specimen, reviewer, reason: str, labels: dict[int, str] | None = None
) -> Specimen:
    """Open an amendment of a signed specimen to add images (a slide rescanned, cells missed).

    The specimen is reopened: its sign-off is lifted (``signed_at`` cleared; the released versions
    stay as they were sent and the LIS keeps reading the latest), so uploads to its accession are
    accepted and the new cells enter review like any others; the cells already signed stay signed
    (``labels`` reclassifies them now, as ``specimen_amend`` does). Signing the specimen again
    (``signoff.specimen_sign``) releases the corrected version with ``reason`` (``release_on_sign``).
    """
    from django.contrib.admin.models import CHANGE, LogEntry

    reason = _clean_reason(reviewer, reason)
    with transaction.atomic():
        locked = _lock_signed(specimen)
        now = timezone.now()
        _relabel(locked, reviewer, labels or {}, now)
        locked.signed_at = None
        locked.signed_by = None
        locked.amendment_reason = reason
        locked.amendment_opened_by = reviewer
        locked.amendment_opened_at = now
        locked.save(update_fields=[
            "signed_at", "signed_by", "amendment_reason", "amendment_opened_by", "amendment_opened_at"
        ])
        LogEntry.objects.log_actions(
            reviewer.pk, [locked], CHANGE, single_object=True,
            change_message=f"Opened an amendment of specimen {locked.accession} to add images: {reason}",
        )
    return locked


def release_on_sign(sender, instance: Specimen, update_fields=None, **kwargs) -> None:
    """post_save of Specimen: the sign-off (``specimen_sign`` saves ``signed_at``) releases version 1,
    or, when an amendment to add images is open, the corrected version with its reason.

    A receiver rather than a call inside ``specimen_sign`` so every way of signing releases, in the
    sign-off's own transaction; an amendment releases its version itself.
    """
    if not instance.signed_at or not instance.signed_by_id:
        return
    if update_fields is not None and "signed_at" not in update_fields:
        return
    if instance.amendment_is_open:  # the re-sign of an amendment opened to add images
        reason = instance.amendment_reason
        instance.amendment_reason, instance.amendment_opened_by, instance.amendment_opened_at = "", None, None
        Specimen.objects.filter(pk=instance.pk).update(
            amendment_reason="", amendment_opened_by=None, amendment_opened_at=None
        )
        report_release(specimen=instance, reviewer=instance.signed_by, reason=reason, at=instance.signed_at)
        return
    if instance.report_versions.exists():
        return
    report_release(specimen=instance, reviewer=instance.signed_by, at=instance.signed_at)
