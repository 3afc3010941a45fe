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
    """GET: every cell with its class and the reason box; POST: ``amend.specimen_amend``."""
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
        try:
            version = amend.specimen_amend(
                specimen=specimen, reviewer=request.user, reason=request.POST.get("reason", ""), labels=labels
            )
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
            return redirect("specimen-amend", accession=specimen.accession)
        messages.success(
            request, f"Specimen {specimen.accession}: corrected report version {version.number} released."
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
