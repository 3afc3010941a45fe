"""LIS API endpoints. Each parses input, calls one service or selector, renders.

Who may see what is decided by ``classifier.selectors`` (a result another user
may not see is answered 404, like one that does not exist), who may write by
``classifier.services``; errors are shaped by ``classifier.api.exceptions``.
"""

import hashlib
import json
import mimetypes

from django.http import FileResponse, Http404
from django.urls import reverse
from django.utils.http import http_date, parse_http_date_safe
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import mixins, permissions, serializers, status, viewsets
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, NotFound, ValidationError
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from classifier import inference
from classifier.api.renderers import FHIRJSONRenderer, HL7Renderer, HL7TextRenderer, ImageRenderer
from classifier.api.serializers import (
    ChangedSinceSerializer,
    ClassificationPendingSerializer,
    ClassificationSerializer,
    ClassificationUploadSerializer,
    ErrorSerializer,
    SpecimenListSerializer,
    SpecimenSerializer,
    TokenRequestSerializer,
    TokenSerializer,
)
from classifier.api.throttling import TokenRateThrottle, UploadRateThrottle
from classifier.cells import classes
from classifier.cells import selectors as cell_selectors
from classifier.cells import services as cell_services
from classifier.filters import ClassificationFilter
from classifier.interop import fhir, hl7
from classifier.models import Classification, ReportVersion, Specimen, Status
from classifier.permissions import can_submit
from classifier.specimens import selectors as specimen_selectors


def _error(description: str, code: str, message: str, *more: tuple[str, str]) -> OpenApiResponse:
    """An error response in the one error shape, with an example per (code, message) given."""
    return OpenApiResponse(
        ErrorSerializer,
        description=description,
        examples=[OpenApiExample(c, value={"detail": m, "code": c}) for c, m in ((code, message), *more)],
    )


UNAUTHORIZED = _error(
    "No or invalid credentials.", "not_authenticated", "Authentication credentials were not provided."
)
NOT_FOUND = _error(
    "No such object, or one you may not see.", "not_found", "No Classification matches the given query."
)
THROTTLED = _error(
    "Too many requests; retry after the Retry-After header's seconds.",
    "throttled",
    "Request was throttled. Expected available in 42 seconds.",
)
NOT_ACCEPTABLE = _error(
    "The Accept header asks for a media type this endpoint cannot produce.",
    "not_acceptable",
    "Could not satisfy the request Accept header.",
)
READ_ERRORS = {401: UNAUTHORIZED, 404: NOT_FOUND, 406: NOT_ACCEPTABLE, 429: THROTTLED}


def json_errors(errors: dict) -> dict:
    """Error responses documented as JSON only, for views whose success answer has another media type."""
    return {(code, "application/json"): response for code, response in errors.items()}


class JSONErrorsMixin:
    """Errors are always JSON, even where the success answer is FHIR, HL7 or an image."""

    def finalize_response(self, request, response, *args, **kwargs):
        if response.status_code >= 400 and isinstance(response, Response):
            renderer = getattr(request, "accepted_renderer", None)
            if renderer is None or renderer.media_type != JSONRenderer.media_type:
                request.accepted_renderer = JSONRenderer()
                request.accepted_media_type = JSONRenderer.media_type
        return super().finalize_response(request, response, *args, **kwargs)


class CanSubmit(permissions.BasePermission):
    """Technologists and reviewers submit images (the same rule as the portal)."""

    message = "Only technologists and reviewers may submit images."

    def has_permission(self, request, view):
        return can_submit(request.user)


@extend_schema(
    tags=["auth"],
    summary="Get an API token",
    description="Exchange a username and password for the user's API token (created on first use). "
    "Send it as `Authorization: Token <token>`. Repeated failures lock the account for a while.",
    # One request body type in the schema (JSON), so generated clients have one model for it; form
    # posts are still parsed (issue 19: three identical bodies broke openapi-python-client).
    request={"application/json": TokenRequestSerializer},
    responses={
        200: OpenApiResponse(
            TokenSerializer,
            examples=[OpenApiExample("token", value={"token": "9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b"})],
        ),
        400: _error(
            "Missing fields or wrong username/password.",
            "authorization",
            "Unable to log in with provided credentials.",
        ),
        429: _error(
            "Too many attempts from this address, or the account is locked out.",
            "locked_out",
            "Too many failed sign-in attempts; try again later.",
        ),
    },
    auth=[],
)
class TokenView(JSONErrorsMixin, ObtainAuthToken):
    """``POST /api/v1/auth/token/``: DRF's token view, throttled per client address.

    DRF's AuthTokenSerializer passes the request to ``authenticate()``, which
    django-axes needs to count failures per username and address.
    """

    serializer_class = TokenRequestSerializer
    throttle_classes = [TokenRateThrottle]
    permission_classes = [permissions.AllowAny]
    authentication_classes = []
    parser_classes = [JSONParser, FormParser, MultiPartParser]

    def post(self, request, *args, **kwargs):
        try:
            return super().post(request, *args, **kwargs)
        except ValidationError:
            # authenticate() swallows axes' PermissionDenied; axes marks the request instead.
            if getattr(request, "axes_locked_out", False):
                raise LockedOut() from None
            raise


class LockedOut(APIException):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_detail = "Too many failed sign-in attempts; try again later."
    default_code = "locked_out"


# The examples show the shipped (first) model's card: its classes, from the table, in its output order.
_SHIPPED_CLASSES = classes.FIRST_MODEL_CODES


def _per_class(*values) -> dict:
    return dict(zip(_SHIPPED_CLASSES, values, strict=True))


CLASSIFICATION_EXAMPLE = {
    "id": 42,
    "label": "NEUTROPHIL",
    "predicted_label": "NEUTROPHIL",
    "final_label": None,
    "confidence": 0.93,
    "probabilities": _per_class(0.03, 0.02, 0.02, 0.93),
    "status": "classified",
    "review_state": "unreviewed",
    "flag_reason": "",
    "flag_message": "",
    "cell_box": [61, 40, 259, 201],
    "model_version": "effnetlite0-3f2a9c1d",
    "accession": "ACC-2026-0001",
    "external_id": "LIS-778812",
    "original_filename": "cell_001.jpg",
    "width": 320,
    "height": 240,
    "created_at": "2026-11-25T09:12:44.201Z",
    "reviewed_by": None,
    "reviewed_at": None,
    "signed_by": None,
    "signed_at": None,
    "image_url": "https://lab.example/api/v1/classifications/42/image/",
    "heatmap_url": "https://lab.example/api/v1/classifications/42/heatmap/",
}


@extend_schema_view(
    list=extend_schema(
        summary="List results",
        description="Results you may see (technologists: their own; reviewers: all), newest first, "
        "50 a page. Filter by label (the reviewer's, else the model's), status, review_state, "
        "accession, created_after/created_before (dates, inclusive) and q (search).",
        responses={
            200: ClassificationSerializer(many=True),
            400: _error(
                "A filter value is not valid.",
                "invalid_choice",
                "status: Select a valid choice. x is not one of the available choices.",
            ),
            **{k: v for k, v in READ_ERRORS.items() if k != 404},
        },
    ),
    retrieve=extend_schema(
        summary="Get one result",
        responses={
            200: OpenApiResponse(
                ClassificationSerializer,
                examples=[OpenApiExample("classified", value=CLASSIFICATION_EXAMPLE)],
            ),
            **READ_ERRORS,
        },
    ),
)
class ClassificationViewSet(
    JSONErrorsMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """White-cell images and their (pre-)classifications."""

    serializer_class = ClassificationSerializer
    filterset_class = ClassificationFilter
    lookup_value_regex = "[0-9]+"
    parser_classes = [MultiPartParser]
    queryset = Classification.objects.none()  # the real one comes from the selector

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Classification.objects.none()
        return cell_selectors.classification_list(user=self.request.user)

    def get_object(self):
        """One result the user may open (``cell_selectors.classification_get``): besides the list's, every
        cell of a specimen they opened, which its differential counts."""
        try:
            cell = cell_selectors.classification_get(user=self.request.user, pk=self.kwargs["pk"])
        except Classification.DoesNotExist:
            raise Http404("No Classification matches the given query.") from None
        self.check_object_permissions(self.request, cell)
        return cell

    def get_permissions(self):
        if self.action == "create":
            return [*super().get_permissions(), CanSubmit()]
        return super().get_permissions()

    def get_throttles(self):
        if self.action == "create":
            return [*super().get_throttles(), UploadRateThrottle()]
        return super().get_throttles()

    @extend_schema(
        summary="Submit an image",
        description="Check, store and classify one white-cell image. `201` with the result; posting "
        "an `external_id` you used before with the same image and accession returns the stored "
        "result with `200` and stores nothing (`409` if the image or accession differs). When the "
        "model is unavailable the image is kept as `pending` and the answer "
        "is `503` with its id (the same `external_id` can be posted again later). Rejected "
        "files leave nothing behind.",
        request={"multipart/form-data": ClassificationUploadSerializer},
        responses={
            201: OpenApiResponse(
                ClassificationSerializer,
                description="Classified (or unidentified).",
                examples=[OpenApiExample("created", value=CLASSIFICATION_EXAMPLE)],
            ),
            200: OpenApiResponse(
                ClassificationSerializer,
                description="A retry: the result stored earlier for this external_id.",
            ),
            400: _error(
                "Bad input: missing image field, empty or damaged image, bad accession, or a "
                "signed specimen.",
                "corrupt_image",
                "The image could not be read completely (truncated or damaged): image file is truncated.",
            ),
            401: UNAUTHORIZED,
            409: _error(
                "The external_id was used before for another image or accession: a retry sends the "
                "same image and accession; a new image needs a new id.",
                "external_id_conflict",
                "external_id 'LIS-42' was already used for another image or accession (result #42); a "
                "retry must send the same image and accession, a new image needs a new id.",
            ),
            403: _error(
                "Your account has no role that may submit images.",
                "permission_denied",
                "Only technologists and reviewers may submit images.",
            ),
            413: _error(
                "The file or the image's pixel count is over the limit.",
                "file_too_large",
                "The file is 24.1 MB; the limit is 20.0 MB.",
            ),
            415: _error(
                "Not an image (or a format that is not accepted), or not multipart.",
                "not_an_image",
                "notes.jpg is not an image that can be read (JPEG, PNG, TIFF, BMP or WebP).",
            ),
            429: THROTTLED,
            503: OpenApiResponse(
                ClassificationPendingSerializer,
                description="Stored, but the model is unavailable; the result stays pending.",
                examples=[
                    OpenApiExample(
                        "pending",
                        value={
                            "detail": "The model is unavailable; the image is stored as "
                            "pending and will be classified later.",
                            "code": "model_unavailable",
                            "id": 43,
                            "url": "https://lab.example/api/v1/classifications/43/",
                        },
                    )
                ],
            ),
        },
    )
    def create(self, request, *args, **kwargs):
        upload = ClassificationUploadSerializer(data=request.data)
        upload.is_valid(raise_exception=True)
        image = upload.validated_data["image"]
        external_id = upload.validated_data.get("external_id") or None
        classification, created = cell_services.classification_get_or_create(
            user=request.user,
            data=image.read(),
            filename=image.name or "",
            accession=upload.validated_data.get("accession") or None,
            external_id=external_id,
        )
        path = reverse("api-classification-detail", kwargs={"pk": classification.pk})
        url = request.build_absolute_uri(path)
        if classification.status == Status.PENDING:
            body = {
                "detail": "The model is unavailable; the image is stored as pending and will be "
                "classified later.",
                "code": "model_unavailable",
                "id": classification.pk,
                "url": url,
            }
            return Response(body, status=status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": "60"})
        # 201 for the request that stored it; 200 for every retry, even one sent at the same moment.
        data = self.get_serializer(classification).data
        if created:
            return Response(data, status=status.HTTP_201_CREATED, headers={"Location": url})
        return Response(data, status=status.HTTP_200_OK)

    def _download(self, field):
        classification = self.get_object()
        stored = getattr(classification, field)
        if not stored:
            raise NotFound("This result has no heat map yet (the model has not run).", code="not_found")
        content_type = mimetypes.guess_type(stored.name)[0] or "application/octet-stream"
        response = FileResponse(stored.open("rb"), content_type=content_type)
        filename = f"{field}-{classification.pk}{_suffix(stored.name)}"
        response["Content-Disposition"] = f'inline; filename="{filename}"'
        response["Cache-Control"] = "private, no-store"
        return response

    @extend_schema(
        summary="Download the stored image",
        description="The uploaded image as stored (metadata stripped; JPEG or PNG).",
        responses={
            (200, "image/jpeg"): OpenApiTypes.BINARY,
            (200, "image/png"): OpenApiTypes.BINARY,
            **json_errors(READ_ERRORS),
        },
    )
    @action(detail=True, methods=["get"], renderer_classes=[ImageRenderer, JSONRenderer])
    def image(self, request, pk=None):
        return self._download("image")

    @extend_schema(
        summary="Download the heat map",
        description="Grad-CAM heat map over the image (PNG): where the model looked. 404 while pending.",
        responses={(200, "image/png"): OpenApiTypes.BINARY, **json_errors(READ_ERRORS)},
    )
    @action(detail=True, methods=["get"], renderer_classes=[ImageRenderer, JSONRenderer])
    def heatmap(self, request, pk=None):
        return self._download("heatmap")


def _suffix(name: str) -> str:
    return "." + name.rsplit(".", 1)[-1] if "." in name else ""


FHIR_BUNDLE = inline_serializer(
    name="FHIRBundle",
    fields={
        "resourceType": serializers.CharField(help_text='Always "Bundle".'),
        "identifier": serializers.DictField(child=serializers.CharField()),
        "type": serializers.CharField(help_text='Always "transaction": POST it to a FHIR server as it is.'),
        "timestamp": serializers.CharField(),
        "entry": serializers.ListField(
            child=serializers.DictField(child=serializers.JSONField()),
            help_text="Patient and ServiceRequest (with an order), Specimen, Device, DiagnosticReport, "
            "then one Observation per class and one for the cells counted (FHIR R4 resources, each with "
            "its request).",
        ),
    },
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
            and fhir.FHIR_MEDIA_TYPE in request.headers.get("Accept", "") and response.status_code >= 400
            and isinstance(response, Response)
            and isinstance(response.data, dict)
            and "detail" in response.data
        ):
            response.data = fhir.operation_outcome(
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
        description="A FHIR R4 `collection` Bundle: a DiagnosticReport (LOINC 57023-4; `preliminary` "
        "until a reviewer signs the specimen, then `final`), the Specimen (accession number) and one "
        "Observation per reported white-cell class with its LOINC code ("
        + ", ".join(f"{c.loinc.code} {c.name.lower()}s" for c in classes.TABLE if c.loinc and c.model)
        + " per 100 leukocytes; reviewer-only classes such as bands and blasts with their codes), value "
        "in UCUM `%` (the white-cell values add up to 100), nucleated red cells per 100 white cells "
        "(`/100{WBCs}`), reference range and H/L/N interpretation; platelets, smudge cells and "
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
            body = fhir.specimen_bundle(
                specimen, result["differential"], order=result["order"], issued=result["last_modified"],
                model_versions=result["model_versions"], comment=result["comment"],
                images=result["images"], now=result["last_modified"],
            )
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
                specimen, differential, order=result["order"], issued=last_modified,
                model_versions=result["model_versions"], comment=result["comment"], now=last_modified,
                images=result["images"],
                control_id=hl7.preliminary_control_id(specimen, differential, last_modified),
            )
        return conditional(request, Response(text), text, result["last_modified"])


def conditional(request, response: Response, body: str, last_modified) -> Response:
    """ETag (a hash of the body) and Last-Modified; 304 when the client's copy is current."""
    etag = f'"{hashlib.sha256(body.encode()).hexdigest()[:32]}"'
    headers = {"ETag": etag, "Last-Modified": http_date(last_modified.timestamp())}
    if_none_match = request.headers.get("If-None-Match")
    since = parse_http_date_safe(request.headers.get("If-Modified-Since", ""))
    if (if_none_match and etag in [t.strip() for t in if_none_match.split(",")]) or (
        not if_none_match and since is not None and int(last_modified.timestamp()) <= since
    ):
        return Response(status=status.HTTP_304_NOT_MODIFIED, headers=headers)
    for key, value in headers.items():
        response[key] = value
    return response


# The shipped eight-class, two-lab bundle's summary (ml/artifacts/model_card.json), rounded.
MODEL_EXAMPLE = {
    "name": "hematovision_wbc",
    "version": "b9ece2d3226d2dda",
    "classes": [
        "NEUTROPHIL",
        "EOSINOPHIL",
        "BASOPHIL",
        "LYMPHOCYTE",
        "MONOCYTE",
        "IG",
        "ERYTHROBLAST",
        "PLATELET"
    ],
    "backbone": "efficientnet_lite0",
    "input_size": 112,
    "tta_views": 4,
    "trained_at": "2026-12-04T16:24:40+0000",
    "training_sources": [
        "bccd",
        "pbc"
    ],
    "calibration": {
        "method": "softmax(log p / temperature + class_bias)",
        "temperature": 0.641,
        "class_bias": {
            "NEUTROPHIL": 0.1,
            "EOSINOPHIL": 0.761,
            "BASOPHIL": -0.731,
            "LYMPHOCYTE": -0.704,
            "MONOCYTE": 0.787,
            "IG": -0.066,
            "ERYTHROBLAST": 0.108,
            "PLATELET": -0.255
        },
        "training_class_fractions": {
            "NEUTROPHIL": 0.217,
            "EOSINOPHIL": 0.21,
            "BASOPHIL": 0.042,
            "LYMPHOCYTE": 0.144,
            "MONOCYTE": 0.152,
            "IG": 0.101,
            "ERYTHROBLAST": 0.054,
            "PLATELET": 0.081
        }
    },
    "thresholds": {
        "ood_distance": 3.058,
        "min_confidence": 0.509
    },
    "validation": {
        "n_images": 2914,
        "accuracy": 0.939,
        "macro_f1": 0.955,
        "recall": {
            "NEUTROPHIL": 0.899,
            "EOSINOPHIL": 0.894,
            "BASOPHIL": 0.99,
            "LYMPHOCYTE": 0.975,
            "MONOCYTE": 0.972,
            "IG": 0.935,
            "ERYTHROBLAST": 0.976,
            "PLATELET": 1.0
        },
        "estimate": "calibrated",
        "flagged_rate": 0.03
    },
    "test": {
        "per_source": {
            "bccd": {
                "n_images": 2487,
                "accuracy": 0.857,
                "macro_f1": 0.859,
                "recall": {
                    "NEUTROPHIL": 0.859,
                    "EOSINOPHIL": 0.872,
                    "LYMPHOCYTE": 0.995,
                    "MONOCYTE": 0.702
                },
                "flagged_rate": 0.084,
                "silent_error_rate": 0.112
            },
            "pbc": {
                "n_images": 3405,
                "accuracy": 0.974,
                "macro_f1": 0.97,
                "recall": {
                    "NEUTROPHIL": 0.963,
                    "EOSINOPHIL": 0.99,
                    "BASOPHIL": 0.988,
                    "LYMPHOCYTE": 0.965,
                    "MONOCYTE": 0.992,
                    "IG": 0.967,
                    "ERYTHROBLAST": 0.929,
                    "PLATELET": 0.992
                },
                "flagged_rate": 0.027,
                "silent_error_rate": 0.019
            }
        }
    }
}


class ModelUnavailable(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The model is unavailable; uploads are kept as pending until it loads."
    default_code = "model_unavailable"


@extend_schema(
    tags=["model"],
    summary="The model that pre-classifies",
    description="Identity (`version` is the one every result's `model_version` carries), classes in "
    "output order, calibration (probabilities are softmax(log p / temperature + class_bias), fitted "
    'for the class balance in `training_class_fractions`), the "unidentified" thresholds, and its '
    "figures: `validation` (held-out training images; `estimate` says which) and `test` (held-out "
    "test splits: per source, with the flagged and silent-error rates, for a model trained on several "
    "labs; `training_sources` names them). Keys a model's card lacks are null.",
    responses={
        200: OpenApiResponse(OpenApiTypes.OBJECT, examples=[OpenApiExample("model", value=MODEL_EXAMPLE)]),
        401: UNAUTHORIZED,
        503: _error("The model cannot be loaded.", "model_unavailable", ModelUnavailable.default_detail),
    },
)
class ModelInfoView(APIView):
    """``GET /api/v1/model/``: what an LIS records beside the results (``inference.model_summary``)."""

    renderer_classes = [JSONRenderer]

    def get(self, request):
        try:
            return Response(inference.model_summary())
        except inference.PredictorUnavailable as exc:
            raise ModelUnavailable() from exc
