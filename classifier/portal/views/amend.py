"""The portal's amendment form (issue 19): a reviewer corrects a signed specimen, with a reason."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.shortcuts import redirect, render

from classifier.cells import classes
from classifier.lookups import specimen_or_404
from classifier.permissions import can_review
from classifier.specimens import amend
from classifier.specimens import selectors as specimen_selectors


@login_required
def specimen_amend_view(request, accession):
    """GET: every cell with its class and the reason box; POST: ``amend.specimen_amend`` (release now)
    or, with ``action=add-images``, ``amend.amendment_open`` (reopen the specimen to add images)."""
    specimen = specimen_or_404(request, accession)
    if not can_review(request.user):
        raise PermissionDenied("Only reviewers may amend a signed specimen.")
    cells = list(specimen_selectors.specimen_cells(specimen=specimen))
    if request.method == "POST":
        labels = {}
        for cell in cells:
            chosen = request.POST.get(f"cell-{cell.pk}", "")
            if chosen and chosen != cell.label:
                labels[cell.pk] = chosen
        add_images = request.POST.get("action") == "add-images"
        service = amend.amendment_open if add_images else amend.specimen_amend
        try:
            done = service(
                specimen=specimen, reviewer=request.user, reason=request.POST.get("reason", ""), labels=labels
            )
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
            if exc.code == "amendment_open":
                return redirect("specimen-detail", accession=specimen.accession)
            return redirect("specimen-amend", accession=specimen.accession)
        if add_images:
            messages.success(
                request,
                f"Specimen {specimen.accession}: amendment opened. Add the images, review the new cells and "
                "sign the specimen to release the corrected report.",
            )
        else:
            messages.success(
                request, f"Specimen {specimen.accession}: corrected report version {done.number} released."
            )
        return redirect("specimen-detail", accession=specimen.accession)
    if specimen.amendment_is_open:
        messages.info(
            request,
            f"An amendment of specimen {specimen.accession} is open; add its images, review them and sign.",
        )
        return redirect("specimen-detail", accession=specimen.accession)
    if not specimen.is_signed:
        messages.info(request, f"Specimen {specimen.accession} is not signed; review and sign it instead.")
        return redirect("specimen-detail", accession=specimen.accession)
    return render(
        request,
        "classifier/specimens/amend.html",
        {
            "specimen": specimen,
            "cells": cells,
            "choices": classes.CHOICES,
            "versions": specimen_selectors.specimen_versions(specimen=specimen),
        },
    )
