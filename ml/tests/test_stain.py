"""The stain-normalising layer (ml.stain): the reference's colour statistics whatever the stain's tint,
saved and loaded with the bundle, and the multi-lab fit that builds it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "cells"
BCCD = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "bccd-wbc"


def _cell(name: str) -> np.ndarray:
    with Image.open(FIXTURES / f"{name}.jpeg") as im:
        return np.asarray(im.convert("RGB"), np.float32)


def _layer(ref: dict):
    from ml.stain import ReinhardStain

    return ReinhardStain(ref["mean"], ref["std"])


def test_every_image_leaves_with_the_reference_statistics():
    from ml import stain

    cells = np.stack([_cell("NEUTROPHIL_1"), _cell("EOSINOPHIL_1")])
    ref = stain.reference(cells[:1])  # the neutrophil's own statistics
    out = np.asarray(_layer(ref)(cells))
    mean, std = stain.image_stats(out)
    # Clipping to 0..255 moves them a little; both images now share the neutrophil's statistics.
    np.testing.assert_allclose(mean, np.repeat([ref["mean"]], 2, 0), atol=0.01)
    np.testing.assert_allclose(std, np.repeat([ref["std"]], 2, 0), rtol=0.05)
    # The image that already has the reference statistics comes back (nearly) unchanged.
    assert np.abs(out[0] - cells[0]).mean() < 1.0


def test_a_tinted_copy_is_read_as_the_original():
    from ml import stain

    cell = _cell("LYMPHOCYTE_1")
    tinted = np.clip(
        cell * np.array([0.8, 1.0, 1.15], np.float32) + np.array([0, -10, 5], np.float32), 0, 255
    )
    layer = _layer(stain.reference(cell[None]))
    a, b = (np.asarray(layer(x[None]))[0] for x in (cell, tinted))
    assert np.abs(cell - tinted).mean() > 15  # a visible tint
    assert np.abs(a - b).mean() < 4  # gone after normalisation


def test_the_layer_is_saved_and_loaded_with_its_reference(tmp_path):
    import keras

    from ml.model import build_classifier

    ref = {"mean": [4.0, -0.05, 0.01], "std": [0.2, 0.03, 0.01]}
    model = build_classifier("efficientnet_lite0", 48, 4, imagenet=False, stain=ref)
    path = tmp_path / "m.keras"
    model.save(path)
    import ml.stain  # noqa: F401  registers the layer, as ml.bundle does

    back = keras.saving.load_model(path, compile=False)
    assert back.get_layer("stain").get_config()["mean"] == ref["mean"]
    assert back.get_layer("stain").get_config()["std"] == ref["std"]
    x = _cell("MONOCYTE_1")[None]
    np.testing.assert_allclose(np.asarray(back(x)), np.asarray(model(x)), atol=1e-6)


def test_unknown_stain_normalisation_is_refused():
    from ml.multifit import FitConfig, stain_reference

    with pytest.raises(ValueError, match="unknown stain normalisation 'macenko'"):
        stain_reference(None, FitConfig(stain="macenko"))
    assert stain_reference(None, FitConfig()) is None


def test_fit_with_stain_normalisation_serves_and_judges_on_validation(tmp_path):
    """Tiny BCCD run with ``stain="reinhard"``: the bundle holds the layer with the card's reference,
    the predictor serves it, and validation-side figures cannot go into the card as test figures."""
    from ml import cropcache, multieval, multifit
    from ml.predictor import load_predictor

    cropcache.cache({"bccd": str(BCCD)}, tmp_path / "cache", limit=6, size=64)
    cfg = multifit.FitConfig(
        sources=("bccd",), input_size=48, epochs=1, batch=16, tta_views=1, stain="reinhard"
    )
    card = multifit.fit(tmp_path / "cache", tmp_path / "model", cfg, log=lambda *_: None)
    assert card["config"]["stain"] == "reinhard"
    assert set(card["stain"]) == {"mean", "std"}
    pred = load_predictor(tmp_path / "model" / "hematovision_wbc.keras", backend="keras")
    layer = pred.model.get_layer("stain").get_config()
    assert (layer["mean"], layer["std"]) == (card["stain"]["mean"], card["stain"]["std"])
    assert sum(
        pred.predict_one(_cell("EOSINOPHIL_1").astype(np.uint8)).probabilities.values()
    ) == pytest.approx(1.0, abs=1e-5)
    val = multifit.load_sides(tmp_path / "cache", cfg).val
    res = multieval.evaluate(
        tmp_path / "model", tmp_path / "cache", ["bccd"], log=lambda *_: None, select=val
    )
    assert res["split"] == "selected"
    assert res["sources"]["bccd"]["n_images"] == int(val.sum())
    with pytest.raises(ValueError, match="only test-split figures"):
        multieval.record_test(tmp_path / "model", res)
    assert json.loads((tmp_path / "model" / "model_card.json").read_text())["test_metrics"] is None
