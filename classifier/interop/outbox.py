"""The outbound HL7 message log: delivery attempts, back-off and resending (issue 19)."""

import logging
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from classifier.permissions import can_review

logger = logging.getLogger(__name__)


def message_backoff(attempts: int) -> timedelta:
    """The wait before the next delivery attempt: doubling from the first to the longest."""
    first = float(settings.HEMATOVISION_HL7_RETRY_SECONDS)
    longest = float(settings.HEMATOVISION_HL7_RETRY_MAX_SECONDS)
    return timedelta(seconds=min(first * 2 ** max(attempts - 1, 0), longest))


def message_record_attempt(*, message, ack_code: str = "", ack_text: str = "", error: str = ""):
    """Log one delivery attempt: accepted (ACK AA/CA), or kept for a retry after a negative ACK
    (AE/AR/CE/CR) or no ACK at all. A message is never dropped."""
    from classifier.models import OutboundMessage

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
    from classifier.models import OutboundMessage

    if not can_review(user):
        raise PermissionDenied("Only reviewers and administrators may resend results.")
    OutboundMessage.objects.filter(pk=message.pk).update(
        state=OutboundMessage.State.QUEUED, next_attempt_at=timezone.now()
    )
