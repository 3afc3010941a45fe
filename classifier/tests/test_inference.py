"""The bridge: the fake and the served predictor implement one ``Predictor`` protocol, and an object
that lacks part of it is not taken for one."""

import dataclasses

import pytest

from classifier import inference
from classifier.cells.classes import FIRST_MODEL_CODES, MODEL_CODES
from classifier.testing.fake_predictor import FakePredictor
from classifier.tests.factories import image_bytes

PREDICTION_FIELDS = {f for f in inference.Prediction.__annotations__}


def _check(predictor) -> None:
    assert isinstance(predictor, inference.Predictor)
    assert isinstance(predictor.version, str)
    assert predictor.version
    assert predictor.card["version"] == predictor.version
    assert list(predictor.card["classes"]) == predictor.classes
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(image_bytes((200, 60, 60))))
    prediction = predictor.predict_one(image)
    assert {f.name for f in dataclasses.fields(prediction)} >= PREDICTION_FIELDS
    assert prediction.model_version == predictor.version
    assert prediction.label in predictor.classes
    assert set(prediction.probabilities) == set(predictor.classes)
    assert predictor.gradcam_png(image, prediction.label).startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize("classes", [FIRST_MODEL_CODES, MODEL_CODES])
def test_fake_predictors_implement_the_protocol(classes):
    _check(FakePredictor(classes=classes))


def test_an_object_missing_a_method_is_not_a_predictor():
    class NoHeatmaps:
        version, classes, card = "x", ["NEUTROPHIL"], {}

        def predict_one(self, image): ...

        def field_cells(self, image, max_cells=10): ...

    assert not isinstance(NoHeatmaps(), inference.Predictor)


@pytest.mark.realmodel
def test_the_served_predictor_implements_the_protocol(settings):
    settings.HEMATOVISION_PREDICTOR = "ml"
    _check(inference.get_predictor())
