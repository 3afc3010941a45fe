"""The API's documented error answers and examples (OpenAPI), kept out of the views."""

from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiResponse,
    inline_serializer,
)
from rest_framework import serializers

from classifier.api.serializers import (
    ErrorSerializer,
)
from classifier.cells import classes


def error_response(description: str, code: str, message: str, *more: tuple[str, str]) -> OpenApiResponse:
    """An error response in the one error shape, with an example per (code, message) given."""
    return OpenApiResponse(
        ErrorSerializer,
        description=description,
        examples=[OpenApiExample(c, value={"detail": m, "code": c}) for c, m in ((code, message), *more)],
    )


UNAUTHORIZED = error_response(
    "No or invalid credentials.", "not_authenticated", "Authentication credentials were not provided."
)


NOT_FOUND = error_response(
    "No such object, or one you may not see.", "not_found", "No Classification matches the given query."
)


THROTTLED = error_response(
    "Too many requests; retry after the Retry-After header's seconds.",
    "throttled",
    "Request was throttled. Expected available in 42 seconds.",
)


NOT_ACCEPTABLE = error_response(
    "The Accept header asks for a media type this endpoint cannot produce.",
    "not_acceptable",
    "Could not satisfy the request Accept header.",
)


READ_ERRORS = {401: UNAUTHORIZED, 404: NOT_FOUND, 406: NOT_ACCEPTABLE, 429: THROTTLED}


def json_errors(errors: dict) -> dict:
    """Error responses documented as JSON only, for views whose success answer has another media type."""
    return {(code, "application/json"): response for code, response in errors.items()}


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


# The shipped eight-class, two-lab bundle's summary (ml/artifacts/model_card.json), rounded.
MODEL_EXAMPLE = {
    "name": "hematovision_wbc",
    "version": "15fb4462d633763d",
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
    "input_size": 160,
    "tta_views": 4,
    "trained_at": "2026-12-04T19:39:58+0000",
    "training_sources": [
        "bccd",
        "pbc"
    ],
    "calibration": {
        "method": "softmax(log p / temperature + class_bias)",
        "temperature": 0.586,
        "class_bias": {
            "NEUTROPHIL": 0.156,
            "EOSINOPHIL": 1.129,
            "BASOPHIL": -0.709,
            "LYMPHOCYTE": -1.307,
            "MONOCYTE": 0.777,
            "IG": -0.39,
            "ERYTHROBLAST": 0.354,
            "PLATELET": -0.01
        },
        "training_class_fractions": {
            "NEUTROPHIL": 0.218,
            "EOSINOPHIL": 0.211,
            "BASOPHIL": 0.042,
            "LYMPHOCYTE": 0.145,
            "MONOCYTE": 0.149,
            "IG": 0.101,
            "ERYTHROBLAST": 0.054,
            "PLATELET": 0.081
        }
    },
    "thresholds": {
        "ood_distance": 0.231,
        "min_confidence": 0.531
    },
    "ood_score": {
        "method": "knn",
        "k": 10,
        "training_sample": 4000
    },
    "validation": {
        "n_images": 2957,
        "accuracy": 0.952,
        "macro_f1": 0.963,
        "recall": {
            "NEUTROPHIL": 0.919,
            "EOSINOPHIL": 0.907,
            "BASOPHIL": 0.979,
            "LYMPHOCYTE": 0.99,
            "MONOCYTE": 0.983,
            "IG": 0.957,
            "ERYTHROBLAST": 0.968,
            "PLATELET": 0.995
        },
        "estimate": "calibrated",
        "flagged_rate": 0.028
    },
    "test": {
        "per_source": {
            "bccd": {
                "n_images": 2487,
                "accuracy": 0.865,
                "macro_f1": 0.867,
                "recall": {
                    "NEUTROPHIL": 0.88,
                    "EOSINOPHIL": 0.883,
                    "LYMPHOCYTE": 1.0,
                    "MONOCYTE": 0.698
                },
                "flagged_rate": 0.137,
                "silent_error_rate": 0.071
            },
            "pbc": {
                "n_images": 3405,
                "accuracy": 0.978,
                "macro_f1": 0.976,
                "recall": {
                    "NEUTROPHIL": 0.973,
                    "EOSINOPHIL": 0.992,
                    "BASOPHIL": 0.988,
                    "LYMPHOCYTE": 0.983,
                    "MONOCYTE": 0.988,
                    "IG": 0.957,
                    "ERYTHROBLAST": 0.958,
                    "PLATELET": 0.99
                },
                "flagged_rate": 0.018,
                "silent_error_rate": 0.016
            }
        }
    }
}


SPECIMEN_NOT_FOUND = error_response(
    "No such specimen, or one you may not see.", "not_found", "No such specimen."
)


JOB_NOT_FOUND = error_response("No such job, or one you may not see.", "not_found", "No such job.")


# Every endpoint here answers these, in the one JSON error shape (JSONErrorsMixin).
COMMON_ERRORS = {401: UNAUTHORIZED, 406: NOT_ACCEPTABLE, 429: THROTTLED}
