"""Portal pages. Parse input, call one service or selector, render.

Business rules (who may do what, which state follows which) live in
``services`` and ``selectors``; a view maps their exceptions to pages:
``DoesNotExist`` -> 404, ``PermissionDenied`` -> 403, ``ValidationError`` and
``ImageRejected`` -> a message the user can act on.
"""

import mimetypes
from pathlib import PurePosixPath

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpResponseBadRequest, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views import View
from django.views.decorators.http import require_POST
from django.views.generic import TemplateView

from classifier import csvsafe, inference
from classifier.cells import classes, spool
from classifier.cells import review as cell_review
from classifier.cells import selectors as cell_selectors
from classifier.cells import services as cell_services
from classifier.filters import ClassificationFilter
from classifier.forms import ReviewForm, UploadForm
from classifier.models import Classification
from classifier.permissions import can_review, can_submit
from classifier.reports import local_iso
from classifier.specimens import selectors as specimen_selectors
from classifier.validation import ImageRejected, check_size

HISTORY_PAGE_SIZE = 25
QUEUE_PAGE_SIZE = 20
NO_ROLE_MESSAGE = (
    "Your account has no lab role yet, so you cannot upload or see results. "
    "Ask an administrator to add you to the Technologist or Reviewer group."
)


def _get_classification(request, pk) -> Classification:
    try:
        return cell_selectors.classification_get(user=request.user, pk=pk)
    except Classification.DoesNotExist:
        raise Http404("No such result.") from None


def _error_text(exc: Exception) -> str:
    if isinstance(exc, ImageRejected):
        return exc.message
    if isinstance(exc, ValidationError):
        return " ".join(exc.messages)
    return str(exc)


def _safe_next(request, fallback: str) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return fallback


def _wants_json(request) -> bool:
    return "application/json" in request.headers.get("Accept", "")


class DashboardView(TemplateView):
    template_name = "classifier/dashboard.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        stats = cell_selectors.dashboard_stats(user=self.request.user)
        context["stats"] = stats
        context["has_role"] = can_submit(self.request.user)
        context["no_role_message"] = NO_ROLE_MESSAGE
        # Classes the model has called at least once (a four-class model's results show four bars).
        shown = [c for c in classes.TABLE if stats["by_label"].get(c.code)]
        context["class_rows"] = [(c.name, stats["by_label"][c.code]) for c in shown]
        context["chart_data"] = {
            "labels": [c.name for c in shown],
            "counts": [stats["by_label"][c.code] for c in shown],
            "colours": [c.colour for c in shown],
        }
        return context


class ModelInfoView(TemplateView):
    """The model behind the results: version, calibration, figures and limits (as ``/api/v1/model/``)."""

    template_name = "classifier/model_info.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        try:
            info = inference.model_summary()
        except inference.PredictorUnavailable:
            info = None
        context["info"] = info
        if info:
            context["other_classes"] = [c.name for c in classes.TABLE if c.code not in info["classes"]]
            fractions = info["calibration"]["training_class_fractions"] or {}
            bias = info["calibration"]["class_bias"] or {}
            validation = info["validation"] or {}
            tests = _test_sets(info["test"])
            context["test_sets"] = tests
            context["class_rows"] = [
                {
                    "name": name,
                    "bias": bias.get(name),
                    "share_pct": 100 * fractions[name] if name in fractions else None,
                    "val_recall": validation.get("recall", {}).get(name),
                    # one per held-out test set; a dash where that set has no cell of the class
                    "test_recalls": [t["recall"].get(name) for t in tests] or [None],
                }
                for name in info["classes"]
            ]
            rate = validation.get("flagged_rate")
            context["val_flagged_pct"] = None if rate is None else 100 * rate
        return context


TEST_SET_NAMES = {"bccd": "BCCD TEST", "pbc": "PBC test"}


def _test_sets(test: dict | None) -> list[dict]:
    """The card's held-out figures as rows: one per source (name, images, accuracy, recall, flagged
    and silent-error percentages); the first model's single TEST run as one row."""
    if not test:
        return []
    per_source = test.get("per_source") or {"": test | {"flagged_rate": test.get("unidentified_rate")}}
    rows = []
    for source, figures in per_source.items():
        flagged, silent = figures.get("flagged_rate"), figures.get("silent_error_rate")
        rows.append(
            {
                "name": TEST_SET_NAMES.get(source, source or "Official TEST split"),
                "n_images": figures.get("n_images"),
                "accuracy": figures.get("accuracy"),
                "recall": figures.get("recall") or {},
                "flagged_pct": None if flagged is None else 100 * flagged,
                "silent_pct": None if silent is None else 100 * silent,
            }
        )
    return rows


def model_ready_view(request):
    """The model's readiness (``inference.readiness``) for the header badge's script; loads nothing."""
    return JsonResponse(inference.readiness())


class UploadView(View):
    """One or many images. The page's script posts them one by one (JSON answers, a
    progress bar); without JavaScript the form posts them all at once."""

    template_name = "classifier/upload.html"

    def dispatch(self, request, *args, **kwargs):
        if not can_submit(request.user):
            if _wants_json(request):
                return JsonResponse({"error": NO_ROLE_MESSAGE, "code": "no_role"}, status=403)
            return render(request, "classifier/no_role.html", {"message": NO_ROLE_MESSAGE}, status=403)
        return super().dispatch(request, *args, **kwargs)

    def get(self, request):
        return render(request, self.template_name, {"form": UploadForm()})

    def post(self, request):
        form = UploadForm(request.POST, request.FILES)
        if not form.is_valid():
            if _wants_json(request):
                errors = "; ".join(f"{e}" for field in form.errors.values() for e in field)
                return JsonResponse({"error": errors, "code": "invalid"}, status=400)
            return render(request, self.template_name, {"form": form}, status=400)
        created, failures, spooled = [], [], []
        for upload in form.cleaned_data["images"]:
            try:
                check_size(upload.size)  # refuse before reading it into memory
                created.append(
                    cell_services.classification_create(
                        user=request.user,
                        data=upload.read(),
                        filename=upload.name,
                        accession=form.cleaned_data["accession"] or None,
                    )
                )
            except (ImageRejected, ValidationError) as exc:
                failures.append((upload.name, _error_text(exc), getattr(exc, "http_status", 400)))
            except spool.UploadSpooled as exc:  # kept for later; the next file may still get in
                spooled.append((upload.name, exc.reference))
        if spooled:
            return self._spooled_answer(request, form, created, failures, spooled)
        if _wants_json(request):
            return self._json_answer(created, failures)
        if not created:
            return render(
                request, self.template_name, {"form": form, "failures": failures}, status=failures[0][2]
            )
        for name, message, _ in failures:
            messages.error(request, f"{name}: {message}")
        if len(created) == 1:
            return redirect("classification-detail", pk=created[0].pk)
        messages.success(request, f"{len(created)} images classified.")
        return redirect("classification-list")

    def _spooled_answer(self, request, form, created, failures, spooled):
        """503: the database failed for some files, which were kept (spooled) to be classified later."""
        references = ", ".join(reference for _, reference in spooled)
        if len(spooled) == 1:
            message = (
                "The database is busy or unavailable. Your upload was kept and will be classified when "
                f"it is back (reference {references}); do not send it again."
            )
        else:
            message = (
                f"The database is busy or unavailable. {len(spooled)} uploads were kept and will be "
                f"classified when it is back (references {references}); do not send them again."
            )
        if _wants_json(request):
            response = JsonResponse(
                {
                    "error": message,
                    "code": "database_unavailable",
                    "spooled": [{"filename": n, "reference": r} for n, r in spooled],
                    "ids": [cell.pk for cell in created],
                    "errors": [{"filename": n, "error": m} for n, m, _ in failures],
                },
                status=503,
            )
        else:
            response = render(
                request,
                self.template_name,
                {
                    "form": form,
                    "created": created,
                    "failures": failures,
                    "spooled": spooled,
                    "spool_message": message,
                },
                status=503,
            )
        response["Retry-After"] = "5"
        return response

    def _json_answer(self, created, failures):
        if failures and not created:
            name, message, status = failures[0]
            return JsonResponse({"error": message, "filename": name}, status=status)
        cell = created[0]
        return JsonResponse(
            {
                "id": cell.pk,
                "url": reverse("classification-detail", args=[cell.pk]),
                "status": cell.status,
                # An unidentified cell has no class yet: its top guess is named as such, not as its label.
                "label": cell.get_predicted_label_display() if cell.status == "classified" else "",
                "top_guess": cell.get_predicted_label_display() if cell.status == "unidentified" else "",
                "confidence": cell.confidence,
                "errors": [{"filename": n, "error": m} for n, m, _ in failures],
            },
            status=201,
        )


class ClassificationDetailView(View):
    def get(self, request, pk):
        cell = _get_classification(request, pk)
        reviewer = can_review(request.user)
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
            },
        )


def _specimen_neighbours(cell: Classification) -> tuple[int | None, int | None]:
    """The previous and next cell of the same specimen (in the order received), for the cell page's links."""
    if not cell.specimen_id:
        return None, None
    ids = list(specimen_selectors.specimen_cells(specimen=cell.specimen).values_list("pk", flat=True))
    at = ids.index(cell.pk)
    return (ids[at - 1] if at > 0 else None), (ids[at + 1] if at + 1 < len(ids) else None)


def _private_file(field, download_name: str) -> FileResponse:
    if not field:
        raise Http404("No such file.")
    try:
        handle = field.open("rb")
    except FileNotFoundError:
        raise Http404("No such file.") from None
    suffix = PurePosixPath(field.name).suffix.lower()
    content_type = mimetypes.types_map.get(suffix, "application/octet-stream")
    response = FileResponse(handle, content_type=content_type, filename=f"{download_name}{suffix}")
    response["Content-Disposition"] = f'inline; filename="{download_name}{suffix}"'
    response["Cache-Control"] = "private, no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response


def classification_image_view(request, pk):
    """The uploaded image, to those who may see the result (never a public /media/ URL)."""
    return _private_file(_get_classification(request, pk).image, f"cell-{pk}")


def classification_heatmap_view(request, pk):
    """The Grad-CAM overlay, under the same rule as the image."""
    return _private_file(_get_classification(request, pk).heatmap, f"cell-{pk}-heatmap")


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
                "no_role_message": NO_ROLE_MESSAGE,
            },
        )


class _Echo:
    def write(self, value):
        return value


CSV_HEADER = [
    "id",
    "created_at",
    "original_filename",
    "accession",
    "external_id",
    "owner",
    "status",
    "predicted_label",
    "confidence",
    "final_label",
    "review_state",
    "reviewed_by",
    "signed_by",
    "signed_at",
    "flag_reason",
    "model_version",
]


def _csv_row(cell: Classification) -> list:
    return [
        cell.pk,
        local_iso(cell.created_at),
        cell.original_filename,
        cell.specimen.accession if cell.specimen else "",
        cell.external_id or "",
        cell.owner.get_username(),
        cell.status,
        cell.predicted_label,
        "" if cell.confidence is None else f"{cell.confidence:.4f}",
        cell.final_label,
        cell.review_state,
        cell.reviewed_by.get_username() if cell.reviewed_by else "",
        cell.signed_by.get_username() if cell.signed_by else "",
        local_iso(cell.signed_at),
        cell.flag_reason,
        cell.model_version,
    ]


def _csv_safe(value):
    """Neutralise spreadsheet formulas in user-supplied text (CSV injection; ``csvsafe.cell``)."""
    return csvsafe.cell(value)


def classification_export_view(request):
    """The filtered history as CSV, streamed; an invalid filter answers 400 and exports nothing."""
    filterset = _filtered_history(request)
    invalid = _filter_errors(filterset)
    if invalid:
        text = "\n".join(["The filter is not valid; nothing was exported.", *invalid]) + "\n"
        return HttpResponseBadRequest(text, content_type="text/plain; charset=utf-8")
    writer = csvsafe.writer(_Echo())  # every field quoted

    def rows():
        yield writer.writerow(CSV_HEADER)
        for cell in filterset.qs.iterator(chunk_size=500):
            yield writer.writerow([_csv_safe(value) for value in _csv_row(cell)])

    response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="hematovision-results.csv"'
    response["Cache-Control"] = "private, no-store"
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
            messages.error(request, _error_text(exc))
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
        return redirect(_safe_next(request, fallback))
    try:
        cell = cell_review.classification_review(
            classification=cell,
            reviewer=request.user,
            label=form.cleaned_data["label"],
            seen=form.cleaned_data["seen"] or None,
        )
    except ValidationError as exc:
        messages.error(request, f"#{pk}: {_error_text(exc)}")
    else:
        state = cell.get_review_state_display().lower()
        messages.success(request, f"#{pk} {state} as {cell.get_final_label_display()}.")
    return redirect(_safe_next(request, fallback))


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
