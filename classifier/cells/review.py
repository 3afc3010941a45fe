"""A reviewer's decision on one cell: confirm the model's class or reclassify it, with an audit row."""

import logging

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from classifier.models import CellClass, Classification, ReviewEvent, ReviewState, Status
from classifier.permissions import can_review

logger = logging.getLogger(__name__)


def _require_unsigned(classification: Classification) -> None:
    if classification.is_signed:
        raise ValidationError("This result is signed and final; it cannot be changed.", code="signed")


def classification_confirm(
    *, classification: Classification, reviewer, seen: str | None = None
) -> Classification:
    """Confirm the model's class. An unidentified cell has no class to confirm: the reviewer
    chooses one (``classification_review``). ``seen`` as for ``classification_review``."""
    if classification.status == Status.UNIDENTIFIED:
        raise ValidationError(
            "The model did not classify this cell (unidentified); choose its class.", code="unidentified"
        )
    return classification_review(
        classification=classification, reviewer=reviewer, label=classification.predicted_label, seen=seen
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
