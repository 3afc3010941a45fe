"""Portal pages of single cells: history, detail, image and heat map, CSV export, delete, review."""

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse, HttpResponseBadRequest, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views import View
from django.views.decorators.http import require_POST

from classifier import csvsafe, inference
from classifier.cells import classes, export, heatmaps
from classifier.cells import review as cell_review
from classifier.cells import selectors as cell_selectors
from classifier.cells import services as cell_services
from classifier.cells.filters import ClassificationFilter
from classifier.models import Classification
from classifier.permissions import can_review, can_submit
from classifier.portal.forms import ReviewForm
from classifier.portal.views import common
from classifier.specimens import selectors as specimen_selectors

HISTORY_PAGE_SIZE = 25


QUEUE_PAGE_SIZE = 20


def _get_classification(request, pk) -> Classification:
    try:
        return cell_selectors.classification_get(user=request.user, pk=pk)
    except Classification.DoesNotExist:
        raise Http404("No such result.") from None


class ClassificationDetailView(View):
    def get(self, request, pk):
        cell = _get_classification(request, pk)
        reviewer = can_review(request.user)
        heatmap_state = heatmaps.heatmap_state(cell)
        return render(
            request,
            "classifier/classification_detail.html",
            {
                "cell": cell,
                "probabilities": [
                    {
                        "label": classes.display_name(k),
                        "value": k,
                        "percent": round(100 * v, 1),
                    }
                    for k, v in cell.probabilities_sorted()
                ],
                "events": cell.events.select_related("actor"),
                "can_review": reviewer and not cell.is_signed,
                "can_delete": cell.owner_id == request.user.pk and cell.needs_review,
                "neighbours": _specimen_neighbours(cell),
                "classes": classes.TABLE,
                "heatmap_state": heatmap_state,
                "heatmap_drawable": heatmap_state in ("stored", "drawable"),
            },
        )


def _specimen_neighbours(cell: Classification) -> tuple[int | None, int | None]:
    """The previous and next cell of the same specimen (in the order received), for the cell page's links."""
    if not cell.specimen_id:
        return None, None
    ids = list(specimen_selectors.specimen_cells(specimen=cell.specimen).values_list("pk", flat=True))
    at = ids.index(cell.pk)
    return (ids[at - 1] if at > 0 else None), (ids[at + 1] if at + 1 < len(ids) else None)


def classification_image_view(request, pk):
    """The uploaded image, to those who may see the result (never a public /media/ URL)."""
    return common.private_file(_get_classification(request, pk).image, f"cell-{pk}")


def classification_heatmap_view(request, pk):
    """The Grad-CAM overlay, under the same rule as the image; drawn on the first request."""
    cell = _get_classification(request, pk)
    try:
        stored = heatmaps.classification_heatmap(classification=cell)
    except heatmaps.HeatmapUnavailable as exc:
        raise Http404(str(exc)) from None
    except inference.PredictorUnavailable as exc:
        return HttpResponse(f"The model is unavailable: {exc}", status=503, content_type="text/plain")
    return common.private_file(stored, f"cell-{pk}-heatmap")


def _filtered_history(request) -> ClassificationFilter:
    queryset = cell_selectors.classification_list(user=request.user)
    return ClassificationFilter(request.GET or None, queryset=queryset)


def _filter_errors(filterset: ClassificationFilter) -> list[str]:
    """``field: message`` for each invalid filter value (as the API's 400 names them).

    django-filter leaves an invalid value out of the query, so ``created_after=2026-13-45`` alone
    would list (and export) everything; the pages refuse it instead.
    """
    if not filterset.is_bound or filterset.is_valid():
        return []
    return [f"{field}: {' '.join(errors)}" for field, errors in filterset.errors.items()]


class ClassificationListView(View):
    def get(self, request):
        filterset = _filtered_history(request)
        invalid = _filter_errors(filterset)
        results = filterset.queryset.none() if invalid else filterset.qs  # the form shows the errors
        page = Paginator(results, HISTORY_PAGE_SIZE).get_page(request.GET.get("page"))
        query = request.GET.copy()
        query.pop("page", None)
        return render(
            request,
            "classifier/classification_list.html",
            {
                "filter": filterset,
                "page_obj": page,
                "query": query.urlencode(),
                "has_role": can_submit(request.user),
                "no_role_message": common.NO_ROLE_MESSAGE,
            },
        )


class _Echo:
    def write(self, value):
        return value


def classification_export_view(request):
    """The filtered history as CSV, streamed; an invalid filter answers 400 and exports nothing."""
    filterset = _filtered_history(request)
    invalid = _filter_errors(filterset)
    if invalid:
        text = "\n".join(["The filter is not valid; nothing was exported.", *invalid]) + "\n"
        return HttpResponseBadRequest(text, content_type="text/plain; charset=utf-8")
    writer = csvsafe.writer(_Echo())  # every field quoted

    def rows():
        yield writer.writerow(export.HEADER)  # the columns of a specimen's report.csv
        for cell in filterset.qs.iterator(chunk_size=500):
            yield writer.writerow(export.cell_row(cell))

    response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="hematovision-results.csv"'
    return response


class ClassificationDeleteView(View):
    """Confirmation page, then cell_services.classification_delete."""

    def get(self, request, pk):
        cell = _get_classification(request, pk)
        return render(request, "classifier/classification_confirm_delete.html", {"cell": cell})

    def post(self, request, pk):
        cell = _get_classification(request, pk)
        try:
            cell_services.classification_delete(classification=cell, user=request.user)
        except ValidationError as exc:
            messages.error(request, common.error_text(exc))
            return redirect("classification-detail", pk=pk)
        messages.success(request, f"Result #{pk} and its images were deleted.")
        return redirect("classification-list")


@require_POST
def classification_review_view(request, pk):
    """Confirm or reclassify one cell (reviewers); answers 403 to everyone else."""
    cell = _get_classification(request, pk)
    form = ReviewForm(request.POST)
    fallback = reverse("classification-detail", args=[pk])
    if not form.is_valid():
        messages.error(request, "Choose one of the cell classes.")
        return redirect(common.safe_next(request, fallback))
    try:
        cell = cell_review.classification_review(
            classification=cell,
            reviewer=request.user,
            label=form.cleaned_data["label"],
            seen=form.cleaned_data["seen"] or None,
        )
    except ValidationError as exc:
        messages.error(request, f"#{pk}: {common.error_text(exc)}")
    else:
        state = cell.get_review_state_display().lower()
        messages.success(request, f"#{pk} {state} as {cell.get_final_label_display()}.")
    return redirect(common.safe_next(request, fallback))


class ReviewQueueView(View):
    """Cells awaiting review (``?accession=``: one specimen's), unidentified first; keyboard
    shortcuts in static/js/review.js. Specimens are reviewed in their gallery (review_views)."""

    def get(self, request):
        if not can_review(request.user):
            raise PermissionDenied("Only reviewers see the review queue.")
        accession = request.GET.get("accession", "").strip()
        page = Paginator(
            cell_selectors.review_queue(user=request.user, accession=accession), QUEUE_PAGE_SIZE
        ).get_page(request.GET.get("page"))
        cells = list(page.object_list)
        # After an action the page comes back with the cell that followed the one just reviewed
        # selected (the reviewed one has left the queue), not the first card.
        for cell, following in zip(cells, [*cells[1:], None], strict=False):
            cell.next_id = following.pk if following else ""
        return render(
            request,
            "classifier/review_queue.html",
            {
                "page_obj": page,
                "cells": cells,
                "accession": accession,
                "classes": classes.TABLE,
                "here": request.get_full_path(),
            },
        )
