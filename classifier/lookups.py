"""Fetch one object the requesting user may see, or 404: shared by portal views and the API."""

from django.http import Http404

from classifier.cells import selectors as cell_selectors
from classifier.jobs import selectors as job_selectors
from classifier.models import BatchJob, Classification, Specimen
from classifier.specimens import selectors as specimen_selectors


def specimen_or_404(request, accession) -> Specimen:
    try:
        return specimen_selectors.specimen_get(user=request.user, accession=accession)
    except Specimen.DoesNotExist:
        raise Http404("No such specimen.") from None


def specimen_cell_or_404(request, accession, pk) -> Classification:
    """A cell of the specimen ``accession`` (any case) that the user may see (``classification_get``)."""
    try:
        cell = cell_selectors.classification_get(user=request.user, pk=pk)
    except Classification.DoesNotExist:
        raise Http404("No such cell.") from None
    if cell.specimen is None or cell.specimen.accession.upper() != accession.strip().upper():
        raise Http404("No such cell.")
    return cell


def job_or_404(request, pk) -> BatchJob:
    try:
        return job_selectors.job_get(user=request.user, pk=pk)
    except BatchJob.DoesNotExist:
        raise Http404("No such job.") from None
