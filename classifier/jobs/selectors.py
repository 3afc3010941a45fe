"""Reads of batch jobs: who sees which job, and a job's progress as the API and the portal show it."""

import logging

from django.db.models import QuerySet

from classifier.jobs import runner
from classifier.models import BatchItem, BatchJob, Classification
from classifier.permissions import can_review, can_submit

logger = logging.getLogger(__name__)


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
    counts = {state: 0 for state in BatchItem.State.values}
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
                cell and (item.error_code == runner.ALREADY_IN_SPECIMEN or cell.created_at < job.created_at)
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
