"""Reviewing many cells of a specimen at once, and signing the specimen as a whole."""

import logging

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from classifier.cells import review as cell_review
from classifier.models import Classification, ReviewEvent, ReviewState, Specimen, Status
from classifier.permissions import can_review

logger = logging.getLogger(__name__)


def specimen_review(
    *, specimen: Specimen, reviewer, seen: dict[int, str], label: str | None = None
) -> list[Classification]:
    """Review many cells of one specimen at once (the gallery): give them ``label``, or with no label
    confirm each one's model class ("accept"). All or nothing, one audit row per cell.

    ``seen``: cell id -> the ``review_version`` the reviewer's page showed; a cell changed since then
    (another reviewer) refuses the whole change (``changed``), as does a cell of another specimen.
    A specimen whose specimen check raised the alarm is reviewed cell by cell: accepting more than one
    cell at once is refused there (``specimen_check``); reclassifying stays allowed.
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
        if label is None and len(cells) > 1:
            _refuse_bulk_accept(locked)
        done = []
        for pk in sorted(seen):
            cell = cells[pk]
            try:
                if label is None:
                    done.append(cell_review.classification_confirm(
                        classification=cell, reviewer=reviewer, seen=seen[pk]
                    ))
                else:
                    done.append(cell_review.classification_review(
                        classification=cell, reviewer=reviewer, label=label, seen=seen[pk]
                    ))
            except ValidationError as exc:
                raise ValidationError(f"#{pk}: {' '.join(exc.messages)}", code=exc.code) from exc
    return done


def _refuse_bulk_accept(specimen: Specimen) -> None:
    """Refuse accepting many cells at once in a specimen whose specimen check raised the alarm."""
    from classifier.specimens.selectors import specimen_check

    check = specimen_check(cells=specimen.cells.all())
    if check.alarm:
        raise ValidationError(
            f"Specimen check: {check.flagged} of {check.cells} cells of specimen {specimen.accession} were "
            "flagged by the model, far more than in the labs it was validated on; review every cell one "
            "by one (accepting cells in bulk is off for this specimen).",
            code="specimen_check",
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
    from classifier.specimens.selectors import specimen_review_version

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



def _sign(locked: Classification, reviewer, now) -> None:
    locked.review_state = ReviewState.SIGNED
    locked.signed_by = reviewer
    locked.signed_at = now
    locked.save(update_fields=["review_state", "signed_by", "signed_at"])
    ReviewEvent.objects.create(
        classification=locked, actor=reviewer, action=ReviewEvent.Action.SIGN,
        from_label=locked.final_label, to_label=locked.final_label,
    )
