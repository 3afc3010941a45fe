"""Who may add cells to a specimen, and giving a specimen to another submitter.

A specimen is opened by the first upload (or LIS order) that names its accession; these rules decide
whether a user may add cells to it now, under a lock that sign-off also takes.
"""

import logging

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from classifier.models import Classification, Specimen, accession_validator
from classifier.permissions import can_review, can_submit

logger = logging.getLogger(__name__)


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
    from classifier.models import BatchJob

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
    if specimen.is_signed:  # an amendment opened to add images lifts the sign-off (amend.amendment_open)
        raise ValidationError(signed_refusal(specimen.accession), code="specimen_signed")


def signed_refusal(accession: str) -> str:
    """Why an image cannot join a signed specimen, and how to add it anyway."""
    return (
        f"Specimen {accession} is signed; to add images a reviewer opens an amendment "
        f'(POST /api/v1/specimens/{accession}/amend/ with "add_images": true, or "Amend" on the '
        "specimen page), then the new cells are reviewed and the specimen signed again."
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


def lock_specimen_for_new_cell(
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


def _require_order(accession: str) -> None:
    """HEMATOVISION_REQUIRE_ORDER: images land only on accessions an LIS ordered."""
    from classifier.models import Order

    if settings.HEMATOVISION_REQUIRE_ORDER and not Order.objects.filter(
        specimen__accession__iexact=accession
    ).exists():
        raise ValidationError(
            f"Accession {accession} has no order from the LIS; this lab accepts images only for "
            "ordered accessions.",
            code="no_order",
        )
