"""LIS endpoints (issue 19): orders in, amendments, released report versions, FHIR metadata.

POST /api/v1/orders/                              an LIS order: binds an accession to a patient
POST /api/v1/specimens/{accession}/amend/         reviewers: correct a signed specimen with a reason,
                                                  or open an amendment to add images
GET  /api/v1/specimens/{accession}/versions/      the released report versions (kept as sent)
GET  /api/v1/fhir/metadata                        the FHIR CapabilityStatement

Views parse, call one service or selector and render, like every other API view.
"""

from django.core.exceptions import ValidationError
from django.urls import reverse
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import permissions, serializers, status
from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from classifier.api.renderers import FHIRJSONRenderer
from classifier.api.schema import (
    COMMON_ERRORS,
    SPECIMEN_NOT_FOUND,
    error_response,
    json_errors,
)
from classifier.api.serializers import AmendmentSerializer
from classifier.api.views.base import JSONErrorsMixin
from classifier.interop import fhir, fhir_server, order_services
from classifier.lookups import specimen_or_404
from classifier.models import CellClass, Order, ReportVersion, Sex
from classifier.specimens import amend
from classifier.specimens import selectors as specimen_selectors


class PatientSerializer(serializers.Serializer):
    mrn = serializers.CharField(max_length=64, help_text="Medical record number (HL7 PID-3.1).")
    assigning_authority = serializers.CharField(
        max_length=64, help_text="Who assigned the MRN (PID-3.4), e.g. the hospital's namespace or OID."
    )
    family_name = serializers.CharField(max_length=100, required=False, allow_blank=True)
    given_name = serializers.CharField(max_length=100, required=False, allow_blank=True)
    birth_date = serializers.DateField(required=False, allow_null=True)
    sex = serializers.ChoiceField(choices=Sex.choices, default=Sex.UNKNOWN, help_text="HL7 table 0001.")


class ProviderSerializer(serializers.Serializer):
    id = serializers.CharField(max_length=64, required=False, allow_blank=True)
    family_name = serializers.CharField(max_length=100, required=False, allow_blank=True)
    given_name = serializers.CharField(max_length=100, required=False, allow_blank=True)


class OrderSerializer(serializers.Serializer):
    """An LIS order as the API takes and answers it (the same facts as an OML^O21)."""

    accession = serializers.CharField(max_length=64, help_text="The specimen's accession number.")
    placer_order_number = serializers.CharField(max_length=64)
    placer_namespace = serializers.CharField(
        max_length=64, required=False, allow_blank=True, default="", help_text="The placing application."
    )
    patient = PatientSerializer()
    ordering_provider = ProviderSerializer(required=False)
    collected_at = serializers.DateTimeField(required=False, allow_null=True)
    wbc_count = serializers.FloatField(
        required=False, allow_null=True, min_value=0, help_text="White-cell count, 10^9/L (optional)."
    )
    created_at = serializers.DateTimeField(read_only=True)
    specimen_url = serializers.SerializerMethodField()

    def get_specimen_url(self, obj) -> str:
        path = reverse("api-specimen-detail", kwargs={"accession": obj.specimen.accession})
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request is not None else path

    def to_representation(self, order: Order):
        return {
            "accession": order.specimen.accession,
            "placer_order_number": order.placer_order_number,
            "placer_namespace": order.placer_namespace,
            "patient": {
                "mrn": order.patient_id,
                "assigning_authority": order.patient_id_authority,
                "family_name": order.patient_family_name,
                "given_name": order.patient_given_name,
                "birth_date": order.patient_birth_date.isoformat() if order.patient_birth_date else None,
                "sex": order.patient_sex,
            },
            "ordering_provider": {
                "id": order.ordering_provider_id,
                "family_name": order.ordering_provider_family_name,
                "given_name": order.ordering_provider_given_name,
            },
            "collected_at": serializers.DateTimeField().to_representation(order.collected_at)
            if order.collected_at
            else None,
            "wbc_count": order.wbc_count,
            "source": order.source,
            "created_at": serializers.DateTimeField().to_representation(order.created_at),
            "specimen_url": self.get_specimen_url(order),
        }


def order_fields(data: dict) -> dict:
    """The API's nested order as ``order_services.order_create`` takes it."""
    patient = data["patient"]
    provider = data.get("ordering_provider") or {}
    return {
        "accession": data["accession"],
        "placer_order_number": data["placer_order_number"],
        "placer_namespace": data.get("placer_namespace", ""),
        "patient_id": patient["mrn"],
        "patient_id_authority": patient["assigning_authority"],
        "patient_family_name": patient.get("family_name", ""),
        "patient_given_name": patient.get("given_name", ""),
        "patient_birth_date": patient.get("birth_date"),
        "patient_sex": patient.get("sex", Sex.UNKNOWN),
        "ordering_provider_id": provider.get("id", ""),
        "ordering_provider_family_name": provider.get("family_name", ""),
        "ordering_provider_given_name": provider.get("given_name", ""),
        "collected_at": data.get("collected_at"),
        "wbc_count": data.get("wbc_count"),
        "source": Order.Source.API,
    }


ORDER_EXAMPLE = {
    "accession": "ACC-2026-0001",
    "placer_order_number": "PO-778812",
    "placer_namespace": "LIS",
    "patient": {
        "mrn": "MRN-004211",
        "assigning_authority": "HOSP",
        "family_name": "Doe",
        "given_name": "Jane",
        "birth_date": "1980-02-29",
        "sex": "F",
    },
    "ordering_provider": {"id": "D123", "family_name": "House", "given_name": "Greg"},
    "collected_at": "2026-11-25T08:40:00Z",
    "wbc_count": 7.2,
}


class OrderView(JSONErrorsMixin, APIView):
    """``POST /api/v1/orders/``: what an OML^O21 says, as JSON."""

    parser_classes = [JSONParser]
    renderer_classes = [JSONRenderer]

    @extend_schema(
        tags=["lis"],
        summary="Place an LIS order (interface accounts and reviewers)",
        description="Binds the accession to its patient (MRN with assigning authority, name, birth date, "
        "sex), placer order number, ordering provider and collection time; creates the specimen if new. "
        "Every result format then carries this identity (HL7 PID/ORC/OBR-2, FHIR Patient and "
        "ServiceRequest). `201` when filed; the same order sent again answers `200` with it; another "
        "order for the accession, or the placer number on another accession, `409 order_conflict`.",
        request=OrderSerializer,
        examples=[OpenApiExample("order", value=ORDER_EXAMPLE, request_only=True)],
        responses={
            201: OrderSerializer,
            200: OrderSerializer,
            400: error_response(
                "Bad input.",
                "invalid_order",
                "patient_id is required: 1-64 letters, digits, '.', '_' or '-'.",
            ),
            403: error_response(
                "No role that may order.",
                "permission_denied",
                "Only interface accounts and reviewers may place orders.",
            ),
            409: error_response(
                "Bound to another order.",
                "order_conflict",
                "Accession ACC-7 or placer order number PO-1 is already bound to another order; an "
                "order cannot be moved to another specimen.",
            ),
            **COMMON_ERRORS,
        },
    )
    def post(self, request):
        body = OrderSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            order, created = order_services.order_create(
                user=request.user, data=order_fields(body.validated_data)
            )
        except ValidationError as exc:
            if exc.code == "order_conflict":
                return Response(
                    {"detail": " ".join(exc.messages), "code": exc.code}, status=status.HTTP_409_CONFLICT
                )
            raise
        data = OrderSerializer(order, context={"request": request}).data
        return Response(data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class AmendSerializer(serializers.Serializer):
    reason = serializers.CharField(
        max_length=2000, help_text="Why the signed report is corrected (printed, sent)."
    )
    labels = serializers.DictField(
        child=serializers.ChoiceField(choices=CellClass.choices),
        required=False,
        default=dict,
        help_text="Cell id -> its corrected class. May be empty (a correction of the comment only).",
    )
    add_images = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Open the amendment to add images instead of releasing now: uploads to the accession are "
        "accepted, the new cells are reviewed, and signing the specimen again releases the corrected "
        "version with this reason (201, the open amendment).",
    )

    def validate_labels(self, value):
        try:
            return {int(k): v for k, v in value.items()}
        except ValueError:
            raise serializers.ValidationError("Keys are cell ids (integers).", code="invalid") from None


class ReportVersionSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    kind = serializers.ChoiceField(choices=ReportVersion.Kind.choices)
    reason = serializers.CharField(allow_blank=True)
    released_at = serializers.DateTimeField()
    released_by = serializers.CharField(source="released_by_name")
    control_id = serializers.CharField(help_text="MSH-10 of this version's ORU^R01.")
    hl7_url = serializers.SerializerMethodField()
    fhir_url = serializers.SerializerMethodField()

    def _url(self, obj, name) -> str:
        path = reverse(name, kwargs={"accession": obj.specimen.accession}) + f"?version={obj.number}"
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request is not None else path

    def get_hl7_url(self, obj) -> str:
        return self._url(obj, "api-specimen-hl7")

    def get_fhir_url(self, obj) -> str:
        return self._url(obj, "api-specimen-fhir")


class SpecimenAmendView(JSONErrorsMixin, APIView):
    parser_classes = [JSONParser]
    renderer_classes = [JSONRenderer]

    @extend_schema(
        tags=["lis"],
        summary="Amend a signed specimen (reviewers only)",
        description="Reclassify cells of a signed specimen and release a corrected report version with "
        "the reason: HL7 OBR-25/OBX-11 `C`, FHIR `corrected`, the PDF says Amended. Earlier versions "
        "stay readable (`versions/`). Pushed to the LIS like any result. With `add_images: true` the "
        "amendment is opened instead (201): the specimen is reopened, images may be added to its "
        "accession, the new cells are reviewed, and signing it again (`sign/`) releases the corrected "
        "version with the reason; until then the LIS reads the latest released version.",
        request=AmendSerializer,
        responses={
            200: ReportVersionSerializer,
            201: AmendmentSerializer,
            400: error_response("Bad input.", "reason_required", "Say why the report is amended (reason)."),
            403: error_response(
                "Not a reviewer.", "permission_denied", "Only reviewers may amend a signed specimen."
            ),
            404: SPECIMEN_NOT_FOUND,
            409: error_response(
                "Not signed yet, or an amendment to add images is open (`amendment_open`).",
                "not_signed",
                "Specimen ACC-7 is not signed; review and sign it instead.",
            ),
            **COMMON_ERRORS,
        },
    )
    def post(self, request, accession):
        specimen = specimen_or_404(request, accession)
        body = AmendSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        service = amend.amendment_open if body.validated_data["add_images"] else amend.specimen_amend
        try:
            done = service(
                specimen=specimen,
                reviewer=request.user,
                reason=body.validated_data["reason"],
                labels=body.validated_data["labels"],
            )
        except ValidationError as exc:
            if exc.code in ("not_signed", "amendment_open"):
                return Response(
                    {"detail": " ".join(exc.messages), "code": exc.code}, status=status.HTTP_409_CONFLICT
                )
            raise
        if body.validated_data["add_images"]:
            return Response(AmendmentSerializer(done).data, status=status.HTTP_201_CREATED)
        return Response(ReportVersionSerializer(done, context={"request": request}).data)


class SpecimenVersionsView(JSONErrorsMixin, APIView):
    renderer_classes = [JSONRenderer]

    @extend_schema(
        tags=["lis"],
        summary="Released report versions",
        description="Every released version of the specimen's report, first to latest: the sign-off "
        "(final) and each amendment (corrected), with links to each as it was sent.",
        responses={
            200: ReportVersionSerializer(many=True),
            **json_errors({404: SPECIMEN_NOT_FOUND, **COMMON_ERRORS}),
        },
    )
    def get(self, request, accession):
        specimen = specimen_or_404(request, accession)
        versions = specimen_selectors.specimen_versions(specimen=specimen)
        return Response(ReportVersionSerializer(versions, many=True, context={"request": request}).data)


class FHIRMetadataView(APIView):
    """``GET /api/v1/fhir/metadata``: the CapabilityStatement (public, as FHIR servers' are)."""

    permission_classes = [permissions.AllowAny]
    authentication_classes = []
    renderer_classes = [FHIRJSONRenderer, JSONRenderer]

    @extend_schema(
        tags=["lis"],
        summary="FHIR CapabilityStatement",
        responses={(200, fhir.FHIR_MEDIA_TYPE): OpenApiResponse(description="An R4 CapabilityStatement.")},
        auth=[],
    )
    def get(self, request):
        return Response(fhir_server.capability_statement(base_url=request.build_absolute_uri("/api/v1/")))
