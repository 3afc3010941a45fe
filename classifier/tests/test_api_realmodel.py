"""The API with the real shipped Keras model: upload a fixture cell, read it back as JSON and FHIR."""

from pathlib import Path

import pytest
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from fhir.resources.R4B.bundle import Bundle

from classifier.cells.classes import MODEL_CODES
from classifier.models import CellClass

ROOT = Path(__file__).resolve().parents[2]
MODELS = sorted((ROOT / "ml" / "artifacts").glob("*.keras"))

pytestmark = [
    pytest.mark.realmodel,
    pytest.mark.django_db,
    pytest.mark.skipif(not MODELS, reason="no shipped model yet: ml/artifacts/*.keras is absent"),
]


def test_api_upload_with_real_model(api_client, user, settings):
    cache.clear()
    settings.HEMATOVISION_PREDICTOR = "ml"
    api_client.force_authenticate(user)
    data = (ROOT / "ml" / "tests" / "fixtures" / "cells" / "LYMPHOCYTE_1.jpeg").read_bytes()
    response = api_client.post(
        "/api/v1/classifications/",
        {"image": SimpleUploadedFile("LYMPHOCYTE_1.jpeg", data), "accession": "ACC-REAL"},
        format="multipart",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] in ("classified", "unidentified")
    assert body["predicted_label"] in CellClass.values
    assert sorted(body["probabilities"]) == sorted(MODEL_CODES)  # the shipped model's eight
    assert abs(sum(body["probabilities"].values()) - 1.0) < 1e-3
    assert body["model_version"]
    assert body["model_version"] != "fake-0001"
    heatmap = api_client.get(body["heatmap_url"])
    assert heatmap.status_code == 200
    assert b"".join(heatmap.streaming_content).startswith(b"\x89PNG\r\n\x1a\n")
    bundle = Bundle.model_validate_json(api_client.get("/api/v1/specimens/ACC-REAL/fhir/").content)
    assert bundle.entry[0].resource.status == "preliminary"


def test_model_endpoint_with_the_shipped_model(api_client, user, settings):
    """Identity, calibration and figures come from the shipped card and its TEST run."""
    import json

    cache.clear()
    settings.HEMATOVISION_PREDICTOR = "ml"
    api_client.force_authenticate(user)
    body = api_client.get("/api/v1/model/").json()
    card = json.loads((ROOT / "ml" / "artifacts" / "model_card.json").read_text())
    assert (body["version"], body["classes"], body["input_size"]) == (
        card["version"], card["classes"], card["input"]["input_size"])
    assert body["training_sources"] == ["bccd", "pbc"]
    assert body["calibration"]["temperature"] == card["temperature"]
    assert body["calibration"]["class_bias"] == card["class_bias"]
    assert list(body["calibration"]["class_bias"]) == list(card["classes"])
    assert sum(body["calibration"]["training_class_fractions"].values()) == pytest.approx(1.0)
    assert body["thresholds"] == card["thresholds"]
    assert body["ood_score"] == card["ood_score"]
    assert body["validation"]["estimate"] == "calibrated"
    assert body["validation"]["accuracy"] == card["validation_metrics"]["calibrated"]["accuracy"]
    test = card["test_metrics"]
    assert test["model_version"] == card["version"]
    assert body["test"] == {
        "per_source": {
            source: {
                "n_images": m["n_images"],
                "accuracy": m["accuracy"],
                "macro_f1": m["macro_f1"],
                "recall": {c: r["recall"] for c, r in m["per_class"].items() if r["support"]},
                "flagged_rate": m["flagged"],
                "silent_error_rate": m["silent_error"],
            }
            for source, m in test["per_source"].items()
        }
    }
