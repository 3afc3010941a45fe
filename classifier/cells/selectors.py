"""Reads of cells: who may see which result, the review queue, the dashboard's counts."""

from django.db.models import Count, Q, QuerySet

from classifier.cells.classes import CODES
from classifier.models import Classification, ReviewState, Status
from classifier.permissions import can_read_all, can_review, can_submit


def cells_shown() -> QuerySet[Classification]:
    """Cells with what every page and answer shows of them (specimen, submitter, reviewer, signer)."""
    return Classification.objects.select_related("specimen", "owner", "reviewed_by", "signed_by")


def classification_list(*, user) -> QuerySet[Classification]:
    """Reviewers and interface accounts see every result; technologists their own; others nothing."""
    qs = cells_shown()
    if can_read_all(user):
        return qs
    if can_submit(user):
        return qs.filter(owner=user)
    return qs.none()


def classification_get(*, user, pk) -> Classification:
    """Raises Classification.DoesNotExist for results the user may not see.

    Besides ``classification_list``'s results, a technologist may open every cell of a specimen
    they opened (a reviewer may have added some): its differential and report count them.
    """
    if not can_read_all(user) and can_submit(user):
        return cells_shown().filter(Q(owner=user) | Q(specimen__created_by=user)).get(pk=pk)
    return classification_list(user=user).get(pk=pk)


def review_queue(*, user, accession: str | None = None) -> QuerySet[Classification]:
    """Results awaiting review (reviewers): unidentified first, then the others, oldest first.

    ``accession``: that specimen's cells only ("" or None: every specimen's).
    """
    if not can_review(user):
        return Classification.objects.none()
    qs = classification_list(user=user)
    if accession:
        qs = qs.filter(specimen__accession__iexact=accession.strip())
    return (
        qs.filter(review_state=ReviewState.UNREVIEWED)  # reviewed cells wait for their specimen's sign-off
        .exclude(status=Status.PENDING)
        .annotate(
            unidentified_first=Count(
                "pk", filter=Q(status=Status.UNIDENTIFIED, review_state=ReviewState.UNREVIEWED)
            ),
            unreviewed_first=Count("pk", filter=Q(review_state=ReviewState.UNREVIEWED)),
        )
        .order_by("-unidentified_first", "-unreviewed_first", "created_at", "id")
    )


def dashboard_stats(*, user) -> dict:
    qs = classification_list(user=user)
    by_label = dict(  # classified by the model; unidentified cells are counted apart (by_status)
        qs.filter(status=Status.CLASSIFIED)
        .values_list("predicted_label")
        .annotate(n=Count("pk"))
        .values_list("predicted_label", "n")
    )
    by_state = dict(qs.values_list("review_state").annotate(n=Count("pk")).values_list("review_state", "n"))
    by_status = dict(qs.values_list("status").annotate(n=Count("pk")).values_list("status", "n"))
    return {
        "total": qs.count(),
        "by_label": {code: by_label.get(code, 0) for code in CODES},
        "by_state": {state: by_state.get(state, 0) for state in ReviewState.values},
        "by_status": {status: by_status.get(status, 0) for status in Status.values},
        "latest": list(qs[:8]),
        # Reviewers: what /review/ lists (unsigned results); technologists: their results awaiting review.
        "queue_size": review_queue(user=user).count()
        if can_review(user)
        else qs.filter(review_state=ReviewState.UNREVIEWED).exclude(status=Status.PENDING).count(),
    }
