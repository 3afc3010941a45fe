"""The reviewer's workstation: the specimen worklist, the gallery review of one specimen (JSON
endpoints for its script, static/js/specimen_review.js), cell thumbnails and the sign-off.

Each view parses input, calls one service or selector, and renders or answers JSON;
``DoesNotExist`` becomes 404, ``PermissionDenied`` 403 and ``ValidationError`` a message
(JSON: 400, or 409 when another reviewer changed a cell first).
"""

import io
import json

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST
from PIL import Image

from classifier.cells import classes, references
from classifier.cells import selectors as cell_selectors
from classifier.lookups import specimen_cell_or_404, specimen_or_404
from classifier.models import Classification
from classifier.permissions import can_review
from classifier.specimens import selectors as specimen_selectors
from classifier.specimens import signoff

THUMB_PX = 192
# The stored box is the located nucleus; a white cell is about 1.5-1.8 times its nucleus across, so a
# frame of 2.2 nucleus widths (0.6 on each side) keeps the whole cell with a little context and
# draws the cell >= 128 px wide in the 192 px thumbnail.
CELL_MARGIN = 0.6


def _require_reviewer(request) -> None:
    if not can_review(request.user):
        raise PermissionDenied("Only reviewers review specimens.")


def worklist_view(request):
    """Specimens awaiting review, oldest first, with counts, flags and progress."""
    _require_reviewer(request)
    specimens = specimen_selectors.check_listed(specimen_selectors.specimen_worklist(user=request.user)[:200])
    for specimen in specimens:
        specimen.n_reviewed = specimen.n_cells - specimen.n_unreviewed
        specimen.progress = round(100 * specimen.n_reviewed / specimen.n_cells)
    loose = cell_selectors.review_queue(user=request.user).filter(specimen__isnull=True).count()
    return render(
        request,
        "classifier/review/worklist.html",
        {"specimens": specimens, "loose_cells": loose},
    )


def _cell_json(cell: Classification, accession: str) -> dict:
    top = cell.probabilities_sorted()[:3]
    return {
        "id": cell.pk,
        "group": specimen_selectors.cell_group(cell),
        "label": cell.label,
        "label_name": classes.display_name(cell.label) if cell.label else "",
        "predicted": cell.predicted_label,
        "predicted_name": classes.display_name(cell.predicted_label) if cell.predicted_label else "",
        "status": cell.status,
        "review_state": cell.review_state,
        "review_state_name": cell.get_review_state_display(),
        "version": cell.review_version,
        "confidence": cell.confidence,
        "flag": cell.flag_message,
        "top": [{"label": k, "name": classes.display_name(k), "percent": round(100 * v, 1)} for k, v in top],
        "image": reverse("specimen-cell-image", args=[accession, cell.pk]),
        "detail": reverse("classification-detail", args=[cell.pk]),
    }


def _differential_json(d) -> dict:
    def row(r):
        return {"label": r.label, "name": r.name, "count": r.count, "value": r.value, "flag": r.flag}

    return {
        "total_cells": d.total_cells,
        "counted_cells": d.counted_cells,
        "unidentified": d.unidentified,
        "unreviewed": d.unreviewed,
        "pending": d.pending,
        "ready_to_sign": d.ready_to_sign,
        "classes": [row(r) for r in d.classes],
        "per_100_white_cells": [row(r) for r in d.per_100_white_cells],
        "not_counted": [row(r) for r in d.not_counted],
    }


def _state(specimen, cells=None) -> dict:
    """What the review page redraws after a change: the changed cells, the differential (as data and
    as the same HTML the page was drawn with) and the progress."""
    differential = specimen_selectors.specimen_differential(specimen=specimen)
    return {
        "cells": [_cell_json(c, specimen.accession) for c in (cells or [])],
        "differential": _differential_json(differential),
        "differential_html": render_to_string(
            "classifier/specimens/_differential.html", {"differential": differential}
        ),
        "reviewed": differential.total_cells - differential.unreviewed,
        "total": differential.total_cells,
    }


class _Gallery:
    """The review page's context."""

    def __init__(self, request, specimen):
        self.sections = specimen_selectors.specimen_gallery(specimen=specimen, all_sections=True)
        self.differential = specimen_selectors.specimen_differential(specimen=specimen)
        self.previous, self.next = specimen_selectors.specimen_neighbours(
            user=request.user, specimen=specimen
        )


def specimen_review_view(request, accession):
    """Review one specimen in a gallery grouped by class (static/js/specimen_review.js)."""
    _require_reviewer(request)
    specimen = specimen_or_404(request, accession)
    gallery = _Gallery(request, specimen)
    d = gallery.differential
    refs = references.urls()
    class_table = [
        {"code": c.code, "name": c.name, "key": c.key, "model": c.model, "references": refs[c.code]}
        for c in classes.TABLE
    ]
    return render(
        request,
        "classifier/review/gallery.html",
        {
            "specimen": specimen,
            "sections": gallery.sections,
            "differential": d,
            "reviewed": d.total_cells - d.unreviewed,
            "progress": round(100 * (d.total_cells - d.unreviewed) / d.total_cells) if d.total_cells else 0,
            "previous": gallery.previous,
            "next": gallery.next,
            "classes": classes.TABLE,
            "class_table": class_table,
            "attribution": references.ATTRIBUTION,
        },
    )


def specimen_review_state_view(request, accession):
    """Every cell of the specimen and its differential, as JSON (the page re-reads it after a conflict)."""
    _require_reviewer(request)
    specimen = specimen_or_404(request, accession)
    return JsonResponse(_state(specimen, list(specimen_selectors.specimen_cells(specimen=specimen))))


@require_POST
def specimen_review_cells_view(request, accession):
    """Reclassify (``label``) or accept (no label) the cells sent as ``{"cells": {id: seen}}``.

    Answers the changed cells and the new differential; 409 when a cell changed since the page drew it
    (another reviewer), 400 for other refusals; nothing is changed then.
    """
    _require_reviewer(request)
    specimen = specimen_or_404(request, accession)
    try:
        body = json.loads(request.body or b"{}")
        seen = {int(pk): str(version) for pk, version in dict(body.get("cells") or {}).items()}
        label = body.get("label") or None
        if label is not None and not isinstance(label, str):
            raise ValueError("label")
    except (ValueError, TypeError, AttributeError):
        return JsonResponse(
            {"error": 'Send {"cells": {"<id>": "<review_version>"}, "label": "<class>" or null}.',
             "code": "invalid"},
            status=400,
        )
    try:
        cells = signoff.specimen_review(specimen=specimen, reviewer=request.user, seen=seen, label=label)
    except ValidationError as exc:
        status = 409 if exc.code == "changed" else 400
        return JsonResponse({"error": " ".join(exc.messages), "code": exc.code}, status=status)
    return JsonResponse(_state(specimen, cells))


def specimen_cell_thumb_view(request, accession, pk):
    """The located cell (around its nucleus box), with a little context, scaled to THUMB_PX (JPEG)."""
    cell = specimen_cell_or_404(request, accession, pk)
    try:
        with cell.image.open("rb") as handle:
            image = Image.open(handle)
            image = image.convert("RGB")
    except (OSError, ValueError, FileNotFoundError):
        raise Http404("No such file.") from None
    return HttpResponse(cell_thumbnail(image, cell.cell_box), content_type="image/jpeg")


def cell_thumbnail(image: Image.Image, box, side: int = THUMB_PX) -> bytes:
    """A square crop around ``box`` (x0, y0, x1, y1; the whole image without one), ``side`` px wide."""
    width, height = image.size
    if box:
        x0, y0, x1, y1 = (float(v) for v in box)
        size = max(x1 - x0, y1 - y0) * (1 + 2 * CELL_MARGIN)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    else:
        size = min(width, height)
        cx, cy = width / 2, height / 2
    size = max(8.0, min(size, max(width, height)))
    left, top = cx - size / 2, cy - size / 2
    crop = image.crop((round(left), round(top), round(left + size), round(top + size)))  # pads black
    crop = crop.resize((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    crop.save(out, format="JPEG", quality=88)
    return out.getvalue()


@require_http_methods(["GET", "POST"])
def specimen_sign_view(request, accession):
    """GET: the confirmation (the differential about to be signed, a comment); POST: sign it."""
    specimen = specimen_or_404(request, accession)
    _require_reviewer(request)
    if request.method == "POST":
        try:
            signed = signoff.specimen_sign(
                specimen=specimen,
                reviewer=request.user,
                comment=request.POST.get("comment", ""),
                seen=request.POST.get("seen") or None,
            )
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
            if exc.code == "changed":
                return redirect("specimen-sign", accession=specimen.accession)
            return redirect("specimen-detail", accession=specimen.accession)
        latest = signed.report_versions.order_by("-number").first()
        if latest is not None and latest.number > 1:  # the re-sign of an amendment opened to add images
            messages.success(
                request,
                f"Specimen {specimen.accession} is signed; corrected report version {latest.number} "
                "released.",
            )
        else:
            messages.success(request, f"Specimen {specimen.accession} is signed; the report is final.")
        return redirect("specimen-detail", accession=specimen.accession)
    if specimen.is_signed:
        messages.info(request, f"Specimen {specimen.accession} is already signed.")
        return redirect("specimen-detail", accession=specimen.accession)
    cells = list(specimen_selectors.specimen_cells(specimen=specimen))
    differential = specimen_selectors.specimen_differential(specimen=specimen)
    return render(
        request,
        "classifier/review/sign_confirm.html",
        {
            "specimen": specimen,
            "differential": differential,
            "seen": specimen_selectors.specimen_review_version(cells),
            "reviewed_by": sorted(
                {c.reviewed_by.get_full_name() or c.reviewed_by.get_username()
                 for c in cells if c.reviewed_by}
            ),
            "signer": request.user.get_full_name() or request.user.get_username(),
        },
    )
