"""Cell review for middleware (issue 19): a specimen's cells with their classes, and reclassifying one.

The same services as the portal's review (``cells.review.classification_review``): reviewers only
(the Interface role reads every result but never reviews or signs), never a signed cell (a signed
specimen is corrected through ``amend/``), never over a review made after the client read the cell
(``seen``). Signing is ``POST specimens/{accession}/sign/`` (``views.jobs.SpecimenSignView``).
"""

from django.core.exceptions import ValidationError
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import permissions, serializers, status
from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from classifier.api.schema import COMMON_ERRORS, SPECIMEN_NOT_FOUND, error_response
from classifier.api.serializers import ClassificationSerializer
from classifier.api.views.base import JSONErrorsMixin
from classifier.cells import review as cell_review
from classifier.lookups import specimen_cell_or_404, specimen_or_404
from classifier.models import CellClass
from classifier.permissions import can_review
from classifier.specimens import selectors as specimen_selectors

NOT_A_REVIEWER = "Only reviewers may review results."
# Service refusals that are the cell's state, not the request's: 409.
REVIEW_CONFLICTS = {"signed", "changed", "pending"}


class IsReviewer(permissions.BasePermission):
    """Reviewers only: technologists and Interface accounts are answered 403."""

    message = NOT_A_REVIEWER

    def has_permission(self, request, view):
        return can_review(request.user)


class ReviewCellSerializer(ClassificationSerializer):
    review_version = serializers.CharField(
        read_only=True,
        help_text="Changes whenever the cell is reviewed: send it back as `seen` so that a review made "
        "since you read the cell is not overwritten.",
    )

    class Meta(ClassificationSerializer.Meta):
        fields = [*ClassificationSerializer.Meta.fields, "review_version"]
        read_only_fields = fields


class SpecimenCellsSerializer(serializers.Serializer):
    accession = serializers.CharField()
    signed = serializers.BooleanField(help_text="Signed: cells change only through an amendment.")
    review_version = serializers.CharField(help_text="Changes whenever any cell is added or reviewed.")
    cells = ReviewCellSerializer(many=True)


class ReviewSerializer(serializers.Serializer):
    label = serializers.ChoiceField(
        choices=CellClass.choices,
        help_text="The cell's class: its predicted_label confirms the model, another class reclassifies.",
    )
    seen = serializers.CharField(
        required=False,
        max_length=64,
        help_text="The cell's review_version you read; a cell reviewed since then is refused (409 changed).",
    )


REVIEW_ERRORS = {
    403: error_response("Not a reviewer.", "permission_denied", NOT_A_REVIEWER),
    404: SPECIMEN_NOT_FOUND,
    **COMMON_ERRORS,
}


class SpecimenCellsView(JSONErrorsMixin, APIView):
    permission_classes = [permissions.IsAuthenticated, IsReviewer]
    renderer_classes = [JSONRenderer]

    @extend_schema(
        tags=["review"],
        summary="A specimen's cells with their classes, for review (reviewers only)",
        description="Every cell of the specimen in upload order: the model's class and confidence, the "
        "label that counts, the review state and `review_version` (send it back as `seen`).",
        responses={200: SpecimenCellsSerializer, **REVIEW_ERRORS},
    )
    def get(self, request, accession):
        specimen = specimen_or_404(request, accession)
        shown = specimen_selectors.specimen_cells(specimen=specimen)
        cells = list(shown.select_related("reviewed_by", "signed_by"))
        data = {
            "accession": specimen.accession,
            "signed": specimen.is_signed,
            "review_version": specimen_selectors.specimen_review_version(cells),
            "cells": cells,
        }
        return Response(SpecimenCellsSerializer(data, context={"request": request}).data)


class CellReviewView(JSONErrorsMixin, APIView):
    permission_classes = [permissions.IsAuthenticated, IsReviewer]
    parser_classes = [JSONParser]
    renderer_classes = [JSONRenderer]

    @extend_schema(
        tags=["review"],
        summary="Confirm or reclassify one cell (reviewers only)",
        description="Gives the cell its class, with an audit entry, as the portal's review does. A "
        "signed specimen's cells are corrected through `amend/` (409 `signed`); a cell reviewed since "
        "your `seen` is refused (409 `changed`), as is a cell the model has not read (409 `pending`).",
        request=ReviewSerializer,
        examples=[OpenApiExample("reclassify", value={"label": "MONOCYTE", "seen": "unreviewed@"})],
        responses={
            200: ReviewCellSerializer,
            400: error_response("Bad input.", "invalid_choice", '"NEUTROFIL" is not a valid choice.'),
            409: error_response(
                "The cell cannot be reviewed now.",
                "signed",
                "This result is signed and final; it cannot be changed. Amend the specimen to correct it.",
                ("changed", "This cell changed after your page was loaded (now reclassified as Monocyte "
                            "by drsmith); look at it again before you decide."),
                ("pending", "The model has not classified this image yet."),
            ),
            **REVIEW_ERRORS,
        },
    )
    def post(self, request, accession, pk):
        cell = specimen_cell_or_404(request, accession, pk)
        body = ReviewSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            cell = cell_review.classification_review(
                classification=cell,
                reviewer=request.user,
                label=body.validated_data["label"],
                seen=body.validated_data.get("seen"),
            )
        except ValidationError as exc:
            if exc.code not in REVIEW_CONFLICTS:
                raise
            detail = " ".join(exc.messages)
            if exc.code == "signed":
                detail += " Amend the specimen to correct it."
            return Response({"detail": detail, "code": exc.code}, status=status.HTTP_409_CONFLICT)
        return Response(ReviewCellSerializer(cell, context={"request": request}).data)
