"""LIS API: the model that is served (version, classes, test figures)."""


from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiResponse,
    extend_schema,
)
from rest_framework import status
from rest_framework.exceptions import APIException
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from classifier import inference
from classifier.api.schema import MODEL_EXAMPLE, UNAUTHORIZED, error_response


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
        503: error_response(
            "The model cannot be loaded.", "model_unavailable", ModelUnavailable.default_detail
        ),
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
