"""Classifier shape, probability sums, save/load round trip, card class order."""

import json

import numpy as np


def test_shape_probs_and_roundtrip(tmp_path):
    import keras

    from ml.model import build_classifier

    model = build_classifier("efficientnet_lite0", 64, 4, dropout=0.0)
    x = np.random.default_rng(0).uniform(0, 255, (3, 80, 70, 3)).astype(np.float32)
    p = model(x, training=False).numpy()
    assert p.shape == (3, 4)
    assert np.allclose(p.sum(1), 1.0, atol=1e-5)
    path = tmp_path / "m.keras"
    model.save(path)
    again = keras.saving.load_model(path, compile=False)
    assert np.allclose(again(x, training=False).numpy(), p, atol=1e-5)


def test_shipped_card_class_order():
    from ml.predictor import DEFAULT_MODEL_PATH
    from ml.taxonomy import CLASSES

    card = json.loads((DEFAULT_MODEL_PATH.parent / "model_card.json").read_text())
    assert card["classes"] == list(CLASSES)
    assert card["crop"]["method"] == "rbc_scale"
    assert card["crop"]["field_rbc"] > 0
    from ml.bundle import bundle_version

    assert card["version"] == bundle_version(card, DEFAULT_MODEL_PATH)
    assert card["input"]["input_size"] > 0
    assert card["temperature"] > 0


def test_model_summary_of_the_shipped_card():
    """The summary an LIS reads: the card's identity and calibration, the validation figures, and
    held-out test figures per source only when they were measured on this very version."""
    from ml.predictor import DEFAULT_MODEL_PATH, model_summary

    card = json.loads((DEFAULT_MODEL_PATH.parent / "model_card.json").read_text())
    s = model_summary(card)
    assert (s["version"], s["classes"], s["tta_views"]) == (
        card["version"],
        card["classes"],
        card["tta_views"],
    )
    assert s["calibration"]["class_bias"] == card["class_bias"]
    assert s["thresholds"] == card["thresholds"]
    assert s["ood_score"] == card["ood_score"]
    assert s["ood_score"]["method"] == "knn"
    older = {k: v for k, v in card.items() if k != "ood_score"}  # a card from before the k-NN score
    assert model_summary(older)["ood_score"] == {"method": "mahalanobis"}
    assert model_summary(older | {"ood_stats_file": None})["ood_score"] is None
    cal = card["validation_metrics"]["calibrated"]
    assert s["validation"] == {
        "n_images": cal["n_images"],
        "accuracy": cal["accuracy"],
        "macro_f1": cal["macro_f1"],
        "recall": {c: m["recall"] for c, m in cal["per_class"].items()},
        "estimate": "calibrated",
        "flagged_rate": card["validation_flagged_rate"],
    }
    per_source = {
        "pbc": {"accuracy": 0.9, "macro_f1": 0.8, "per_class": {"BASOPHIL": {"recall": 0.7}}, "n_images": 10}
        | {"flagged": 0.05, "silent_error": 0.02}
    }
    measured = card | {"test_metrics": {"model_version": card["version"], "per_source": per_source}}
    assert model_summary(measured)["test"] == {
        "per_source": {
            "pbc": {
                "n_images": 10,
                "accuracy": 0.9,
                "macro_f1": 0.8,
                "recall": {"BASOPHIL": 0.7},
                "flagged_rate": 0.05,
                "silent_error_rate": 0.02,
            }
        }
    }
    stale = card | {"test_metrics": {"model_version": "another", "per_source": per_source}}
    assert model_summary(stale)["test"] is None
    first = {"model_version": card["version"], "accuracy": 0.89, "macro_f1": 0.88, "per_class": {}}
    assert model_summary(card | {"test_metrics": first | {"unidentified_rate": 0.025}})["test"] == {
        "n_images": None,
        "accuracy": 0.89,
        "macro_f1": 0.88,
        "recall": {},
        "unidentified_rate": 0.025,
    }
    older = {k: v for k, v in card.items() if k != "validation_metrics"} | {
        "validation_metrics": {"tta4": cal}
    }
    assert model_summary(older)["validation"]["estimate"] == "tta4"


def test_locator_finds_cell_in_fixture_and_whole_field():
    from PIL import Image

    from ml.locate import crop_cell, locate_cells
    from ml.tests.conftest import FIXTURES

    rgb = np.asarray(Image.open(FIXTURES / "NEUTROPHIL_1.jpeg").convert("RGB"))
    boxes = locate_cells(rgb)
    assert boxes
    assert boxes[0].x1 > boxes[0].x0
    crop, box = crop_cell(rgb, out_size=96)
    assert crop.shape == (96, 96, 3)
    assert box == boxes[0].as_tuple()
    # A 640x480 "whole field" (the same image at twice the size) gives the same cell at twice the coordinates.
    big = np.asarray(Image.fromarray(rgb).resize((640, 480)))
    b2 = locate_cells(big)[0]
    assert abs(b2.center[0] - 2 * boxes[0].center[0]) < 8
    assert abs(b2.center[1] - 2 * boxes[0].center[1]) < 8
    assert locate_cells(np.full((240, 320, 3), 255, np.uint8)) == []


def test_bundle_version_follows_every_serving_change(tmp_path, capsys):
    """A copied bundle loads; a changed threshold or changed OOD statistics are refused until
    ``python -m ml.bundle DIR --write`` gives it a new version; recording figures keeps the version."""
    import shutil

    import pytest

    from ml import bundle
    from ml.predictor import DEFAULT_MODEL_PATH, ModelLoadError, load_predictor

    src = DEFAULT_MODEL_PATH.parent
    card = json.loads((src / "model_card.json").read_text())
    for name in bundle.bundle_files(card, DEFAULT_MODEL_PATH).values():
        shutil.copy(name, tmp_path / name.name)
    path = tmp_path / DEFAULT_MODEL_PATH.name

    def write(c):
        (tmp_path / "model_card.json").write_text(json.dumps(c))

    write(card | {"test_metrics": {"accuracy": 0.5}, "notes": "figures are not serving settings"})
    assert (
        bundle.bundle_version(json.loads((tmp_path / "model_card.json").read_text()), path) == card["version"]
    )
    changed = card | {"thresholds": card["thresholds"] | {"min_confidence": 0.9}}
    write(changed)
    with pytest.raises(ModelLoadError, match=f"states version {card['version']}, but the bundle hashes to"):
        load_predictor(path, backend="keras")
    assert bundle.main([str(tmp_path), "--write"]) == 0
    new = json.loads((tmp_path / "model_card.json").read_text())["version"]
    assert new != card["version"]
    assert new == bundle.bundle_version(changed, path)
    assert json.loads(capsys.readouterr().out.splitlines()[0]) == {
        "card": card["version"],
        "computed": new,
        "matches": False,
    }
    pred = load_predictor(path, backend="keras")
    assert pred.version == new
    assert pred.thresholds["min_confidence"] == 0.9
    stats_file = tmp_path / card["ood_stats_file"]
    stats_file.write_bytes(stats_file.read_bytes() + b"\0")
    assert bundle.bundle_version(changed, path) != new
    stats_file.unlink()
    with pytest.raises(FileNotFoundError, match="OOD statistics file ood_stats.npz is missing"):
        bundle.bundle_version(changed, path)
