"""LIS API: specimens and their differential, as JSON, FHIR R4 or HL7 v2."""

import json

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from classifier.api.renderers import FHIRJSONRenderer, HL7Renderer, HL7TextRenderer
from classifier.api.schema import FHIR_BUNDLE, READ_ERRORS, json_errors
from classifier.api.serializers import (
    ChangedSinceSerializer,
    SpecimenListSerializer,
    SpecimenSerializer,
)
from classifier.api.views.base import JSONErrorsMixin, conditional
from classifier.cells import classes
from classifier.interop import fhir, fhir_server, hl7
from classifier.interop.result import ResultReport
from classifier.models import ReportVersion, Specimen
from classifier.specimens import selectors as specimen_selectors


def _preliminary_report(specimen, result: dict) -> ResultReport:
    """The specimen's result as it stands (no released version): issued when it last changed."""
    return ResultReport(
        specimen=specimen,
        differential=result["differential"],
        order=result["order"],
        issued=result["last_modified"],
        now=result["last_modified"],
        model_versions=result["model_versions"],
        comment=result["comment"],
        images=result["images"],
    )


@extend_schema_view(
    list=extend_schema(
        summary="List specimens",
        description="Specimens you may see (technologists: the ones they opened; reviewers and "
        "interface accounts: all). Poll with `signed_after` (released, i.e. signed or amended, after that "
        "instant) or `updated_after` (anything changed after it).",
        parameters=[
            OpenApiParameter("signed_after", OpenApiTypes.DATETIME, description="ISO 8601 instant."),
            OpenApiParameter("updated_after", OpenApiTypes.DATETIME, description="ISO 8601 instant."),
        ],
        responses={
            200: SpecimenListSerializer(many=True),
            **{k: v for k, v in READ_ERRORS.items() if k != 404},
        },
    ),
)
class SpecimenViewSet(JSONErrorsMixin, mixins.ListModelMixin, viewsets.GenericViewSet):
    """Specimens (accession numbers): cells, differential, sign-off, FHIR and HL7 results.

    Other endpoints under a specimen (batch uploads, sign-off, reports) may be
    added here as actions or in their own viewset registered on the router.
    """

    serializer_class = SpecimenListSerializer
    lookup_field = "accession"
    lookup_value_regex = "[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
    queryset = Specimen.objects.none()

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Specimen.objects.none()
        qs = specimen_selectors.specimen_list(user=self.request.user)
        if self.action == "list":
            changed = ChangedSinceSerializer(data=self.request.query_params)
            changed.is_valid(raise_exception=True)
            qs = specimen_selectors.specimen_filter_changed(qs, **changed.validated_data)
        return qs

    def finalize_response(self, request, response, *args, **kwargs):
        """FHIR errors are OperationOutcomes (FHIR R4 http.html: errors SHOULD be one) for a client that
        asks for FHIR (``Accept: application/fhir+json``); others get the API's one JSON error shape."""
        if (
            getattr(self, "action", None) == "fhir"
            and fhir.FHIR_MEDIA_TYPE in request.headers.get("Accept", "")
            and response.status_code >= 400
            and isinstance(response, Response)
            and isinstance(response.data, dict)
            and "detail" in response.data
        ):
            response.data = fhir_server.operation_outcome(
                str(response.data["detail"]), str(response.data.get("code", "error")), response.status_code
            )
            request.accepted_renderer = FHIRJSONRenderer()
            request.accepted_media_type = fhir.FHIR_MEDIA_TYPE
            return super(JSONErrorsMixin, self).finalize_response(request, response, *args, **kwargs)
        return super().finalize_response(request, response, *args, **kwargs)

    def _result(self):
        specimen = self.get_object()
        version = self.request.query_params.get("version")
        if version is not None and not version.isdigit():
            raise ValidationError({"version": "A report version number."})
        try:
            return specimen, specimen_selectors.specimen_result(
                specimen=specimen, version=int(version) if version is not None else None
            )
        except ReportVersion.DoesNotExist:
            raise NotFound(f"Specimen {specimen.accession} has no report version {version}.") from None

    def _specimen_and_differential(self):
        specimen = self.get_object()
        return specimen, specimen_selectors.specimen_differential(specimen=specimen)

    @extend_schema(
        summary="Get a specimen",
        description="The specimen with all its cells, its white-cell differential (count, percent "
        "and reference flag per class; unidentified and pending counts), review state and sign-off.",
        responses={200: SpecimenSerializer, **READ_ERRORS},
    )
    def retrieve(self, request, accession=None):
        specimen, differential = self._specimen_and_differential()
        cells = specimen_selectors.specimen_cells(specimen=specimen)  # every cell its differential counts
        context = {**self.get_serializer_context(), "differential": differential, "cells": cells}
        data = SpecimenSerializer(specimen, context=context).data
        last_modified = specimen_selectors.specimen_last_modified(specimen=specimen)
        body = json.dumps(data, sort_keys=True, default=str)
        return conditional(request, Response(data), body, last_modified)

    @extend_schema(
        summary="FHIR R4 result bundle",
        description="A FHIR R4 `transaction` Bundle: a DiagnosticReport (`preliminary` until a "
        "reviewer signs the specimen, then `final`, `corrected` after an amendment), the Specimen "
        "(accession number), Patient and ServiceRequest with an order, and one Observation per "
        "reported white-cell class. Codes by method: unsigned, the model's pre-classification (panel "
        "LOINC 57023-4, "
        + ", ".join(f"{c.loinc.code} {c.name.lower()}s" for c in classes.TABLE if c.loinc and c.model)
        + " by Automated count); signed, a verified manual differential (panel 24318-8, "
        + ", ".join(
            f"{c.loinc_reviewed.code} {c.name.lower()}s"
            for c in classes.TABLE
            if c.loinc_reviewed and c.model
        )
        + " by Manual count), plus the lab's own codes (`HEMATOVISION_LOCAL_CODES`). Values in UCUM "
        "`%` (the white-cell values add up to 100), nucleated red cells per 100 white cells "
        "(`/100{WBCs}`), the reference range for the ordered patient's age and sex (adult when "
        "unknown) with `appliesTo` and `age`, and H/L/N interpretation; platelets, smudge cells and "
        "artefacts are listed in the conclusion, not counted. Served as `application/fhir+json`.",
        responses={
            (200, fhir.FHIR_MEDIA_TYPE): FHIR_BUNDLE,
            (200, "application/json"): FHIR_BUNDLE,
            **json_errors(READ_ERRORS),
        },
    )
    @action(detail=True, methods=["get"], renderer_classes=[FHIRJSONRenderer, JSONRenderer])
    def fhir(self, request, accession=None):
        specimen, result = self._result()
        if result["version"] is not None:  # a released version, as it was sent
            body = result["version"].fhir
        else:
            body = fhir.specimen_bundle(_preliminary_report(specimen, result))
        return conditional(request, Response(body), json.dumps(body, sort_keys=True), result["last_modified"])

    @extend_schema(
        summary="HL7 v2.5.1 ORU^R01 message",
        description="The differential as an HL7 v2.5.1 `ORU^R01` message in ER7 encoding (MSH, PID from the "
        "LIS order (none without one), ORC, OBR, one OBX per class with NTE, the counts under local codes, "
        "SPM). Result status `P` until signed, `F` after, `C` for an amended version; a released version is "
        "answered as it was sent (`?version=n` for an earlier one). Also served as `text/plain`.",
        responses={
            (200, hl7.HL7_MEDIA_TYPE): OpenApiTypes.STR,
            (200, "text/plain"): OpenApiTypes.STR,  # the same text; generated clients type it as str
            **json_errors(READ_ERRORS),
        },
    )
    @action(detail=True, methods=["get"], renderer_classes=[HL7Renderer, HL7TextRenderer, JSONRenderer])
    def hl7(self, request, accession=None):
        specimen, result = self._result()
        if result["version"] is not None:  # a released version, byte for byte: the same MSH-10
            text = result["version"].hl7
        else:
            differential, last_modified = result["differential"], result["last_modified"]
            text = hl7.oru_r01(
                _preliminary_report(specimen, result),
                control_id=hl7.preliminary_control_id(specimen, differential, last_modified),
            )
        return conditional(request, Response(text), text, result["last_modified"])
