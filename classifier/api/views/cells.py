"""LIS API: single-cell classifications. Each view parses input, calls one service or selector, renders.

Who may see what is decided by the selectors (a result another user may not see is answered 404, like
one that does not exist), who may write by the services; errors are shaped by ``classifier.api.exceptions``.
"""

import mimetypes

from django.http import FileResponse, Http404
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.parsers import MultiPartParser
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from classifier import inference
from classifier.api.renderers import ImageRenderer
from classifier.api.schema import (
    CLASSIFICATION_EXAMPLE,
    READ_ERRORS,
    THROTTLED,
    UNAUTHORIZED,
    error_response,
    json_errors,
)
from classifier.api.serializers import (
    ClassificationPendingSerializer,
    ClassificationSerializer,
    ClassificationUploadSerializer,
)
from classifier.api.throttling import UploadRateThrottle
from classifier.api.views.base import CanSubmit, JSONErrorsMixin
from classifier.api.views.model import ModelUnavailable
from classifier.cells import heatmaps
from classifier.cells import selectors as cell_selectors
from classifier.cells import services as cell_services
from classifier.cells.filters import ClassificationFilter
from classifier.models import Classification, Status


@extend_schema_view(
    list=extend_schema(
        summary="List results",
        description="Results you may see (technologists: their own; reviewers: all), newest first, "
        "50 a page. Filter by label (the reviewer's, else the model's), status, review_state, "
        "accession, created_after/created_before (dates, inclusive) and q (search).",
        responses={
            200: ClassificationSerializer(many=True),
            400: error_response(
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
            400: error_response(
                "Bad input: missing image field, empty or damaged image, bad accession, or a "
                "signed specimen.",
                "corrupt_image",
                "The image could not be read completely (truncated or damaged): image file is truncated.",
            ),
            401: UNAUTHORIZED,
            409: error_response(
                "The external_id was used before for another image or accession: a retry sends the "
                "same image and accession; a new image needs a new id.",
                "external_id_conflict",
                "external_id 'LIS-42' was already used for another image or accession (result #42); a "
                "retry must send the same image and accession, a new image needs a new id.",
            ),
            403: error_response(
                "Your account has no role that may submit images.",
                "permission_denied",
                "Only technologists and reviewers may submit images.",
            ),
            413: error_response(
                "The file or the image's pixel count is over the limit.",
                "file_too_large",
                "The file is 24.1 MB; the limit is 20.0 MB.",
            ),
            415: error_response(
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
        if field == "heatmap":
            try:  # drawn on the first request, stored for the next
                stored = heatmaps.classification_heatmap(classification=classification)
            except heatmaps.HeatmapUnavailable as exc:
                raise NotFound(str(exc), code="not_found") from None
            except inference.PredictorUnavailable as exc:
                raise ModelUnavailable(f"The model is unavailable: {exc}") from None
        content_type = mimetypes.guess_type(stored.name)[0] or "application/octet-stream"
        response = FileResponse(stored.open("rb"), content_type=content_type)
        filename = f"{field}-{classification.pk}{_suffix(stored.name)}"
        response["Content-Disposition"] = f'inline; filename="{filename}"'
        return response  # Cache-Control: PrivateResponsesMiddleware

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
        description="Grad-CAM heat map over the image (PNG): where the model looked for the predicted "
        "class. Drawn by the model that classified the cell on the first request (about as long as a "
        "classification), stored for the next. 404 while pending, or when the model that classified "
        "the cell is no longer served; 503 while the model cannot load.",
        responses={
            (200, "image/png"): OpenApiTypes.BINARY,
            **json_errors(READ_ERRORS),
            (503, "application/json"): error_response(
                "The model cannot be loaded.", "model_unavailable", ModelUnavailable.default_detail
            ),
        },
    )
    @action(detail=True, methods=["get"], renderer_classes=[ImageRenderer, JSONRenderer])
    def heatmap(self, request, pk=None):
        return self._download("heatmap")


def _suffix(name: str) -> str:
    return "." + name.rsplit(".", 1)[-1] if "." in name else ""
