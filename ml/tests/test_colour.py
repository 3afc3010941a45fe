"""The colour second opinion: features, fitting, fusion, and loading it with a model."""

import json
import shutil

import numpy as np
import pytest

from ml import colour


def _cell(cytoplasm_rgb, size=192):
    """Synthetic centred cell: purple nucleus, coloured cytoplasm ring, pale background."""
    crop = np.full((size, size, 3), (235, 225, 225), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    r = np.hypot(xx - (size - 1) / 2, yy - (size - 1) / 2)
    crop[r < 0.22 * size] = cytoplasm_rgb
    crop[r < 0.10 * size] = (100, 50, 170)
    return crop


def test_features_read_cytoplasm_and_nucleus_colour():
    eos_like, neu_like = _cell((215, 140, 120)), _cell((190, 160, 200))
    f = colour.colour_features(np.stack([eos_like, neu_like]))
    assert f.shape == (2, len(colour.FEATURE_NAMES))
    assert f.dtype == np.float32
    names = colour.FEATURE_NAMES
    rb = names.index("cytoplasm_r_minus_b")
    assert f[0, rb] == pytest.approx(95.0, abs=1)
    assert f[1, rb] == pytest.approx(-10.0, abs=1)
    assert f[0, names.index("nucleus_b")] == pytest.approx(170.0, abs=1)
    nf = names.index("nucleus_fraction")  # nucleus area / cytoplasm-disk area
    assert f[0, nf] == pytest.approx(f[1, nf])
    assert 0 < f[0, nf] < 1


def test_fit_and_fuse():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(m, 1.0, (40, 12)) for m in (0, 3, 6, 9)]).astype(np.float32)
    y = np.repeat(np.arange(4), 40)
    model = colour.fit(x, y, 4)
    lp = colour.log_probs(model, x)
    assert np.allclose(np.exp(lp).sum(1), 1.0)
    assert np.mean(lp.argmax(1) == y) > 0.95
    cnn = np.full((160, 4), 0.25)
    assert np.allclose(colour.fuse(cnn, lp, 0.0), cnn)  # weight 0: the CNN alone
    fused = colour.fuse(cnn, lp, 1.0)
    assert np.allclose(fused.sum(1), 1.0)
    assert np.allclose(fused, np.exp(lp))  # flat CNN: colour decides
    with pytest.raises(ValueError, match="every class"):
        colour.fit(x[:80], y[:80], 4)


def test_predictor_refuses_a_card_whose_colour_model_is_missing(tmp_path):
    from ml.predictor import DEFAULT_MODEL_PATH, ModelLoadError, load_predictor

    card = json.loads((DEFAULT_MODEL_PATH.parent / "model_card.json").read_text())
    card["colour"] = {"file": "absent.npz", "weight": 1.0}
    shutil.copy(DEFAULT_MODEL_PATH, tmp_path / DEFAULT_MODEL_PATH.name)
    (tmp_path / "model_card.json").write_text(json.dumps(card))
    if card.get("ood_stats_file"):
        shutil.copy(DEFAULT_MODEL_PATH.parent / card["ood_stats_file"], tmp_path / card["ood_stats_file"])
    with pytest.raises(ModelLoadError, match="colour model"):
        load_predictor(tmp_path / DEFAULT_MODEL_PATH.name, backend="keras")
