"""``python -m ml.train`` end to end on a tiny synthetic dataset (minutes of CPU, not hours).

Two source "fields" per class are made from the fixture cells (upscaled to the
640x480 camera size, with a labels.csv like ORIGINAL's); TRAIN holds flipped,
rotated and shifted copies of them at 320x240. The run must keep every field's
copies on one side of the split, fit the colour opinion, and write a model the
predictor loads.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml.tests.conftest import FIXTURES

pytestmark = pytest.mark.realmodel  # builds the real backbone (ImageNet weights)

CLASSES = ["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"]


def _tiny_dataset(root, fields_per_class=None):
    original, train = root / "ORIGINAL", root / "TRAIN"
    original.mkdir()
    rows, number = ["Image,Category"], 0
    for cls in CLASSES:
        (train / cls).mkdir(parents=True)
        for k in range(1, 1 + (fields_per_class or {}).get(cls, 2)):
            field = Image.open(FIXTURES / f"{cls}_{k}.jpeg").convert("RGB").resize((320, 240))
            field.resize((640, 480), Image.BILINEAR).save(original / f"BloodImage_{number:05d}.jpg")
            rows.append(f"{number},{cls}")
            a = np.asarray(field)
            copies = [a, a[:, ::-1], a[::-1], np.roll(a[::-1, ::-1], 9, axis=1)]
            for j, c in enumerate(copies):
                Image.fromarray(np.ascontiguousarray(c)).save(train / cls / f"_{number}_{j}.jpeg", quality=95)
            number += 1
    (original / "labels.csv").write_text("\n".join(rows) + "\n")
    return train


def test_train_end_to_end_on_tiny_data(tmp_path, monkeypatch):
    from ml import cache, calibration, train
    from ml.bundle import bundle_version
    from ml.predictor import load_predictor

    monkeypatch.setattr(cache, "CACHE_ROOT", tmp_path / "cache")
    data = _tiny_dataset(tmp_path)
    out = tmp_path / "model"
    assert train.main(["--data", str(data), "--out", str(out), "--epochs", "1"]) == 0

    card = json.loads((out / "model_card.json").read_text())
    assert card["classes"] == CLASSES
    assert card["version"] == bundle_version(card, out / "hematovision_wbc.keras")
    assert not Path(card["config"]["originals_dir"]).is_absolute()  # no machine paths in the card
    assert Path(card["config"]["originals_dir"]).resolve() == (tmp_path / "ORIGINAL").resolve()
    # Each class has two source fields: one whole field (4 copies) on each side of the split.
    assert card["data"]["source_fields"] == {
        "train": dict.fromkeys(CLASSES, 1),
        "val": dict.fromkeys(CLASSES, 1),
    }
    assert card["data"]["n_train"] == card["data"]["n_val"] == 16
    val = np.load(out / "val_predictions.npz")
    assert len(set(val["groups"].tolist())) == 4
    assert val["probs"].shape == (16, 4)
    assert card["colour"]["weight"] in calibration.COLOUR_WEIGHTS
    assert (out / "colour_model.npz").exists()
    assert card["temperature"] > 0
    assert set(card["thresholds"]) == {"ood_distance", "min_confidence"}
    t_fit, b_fit = calibration.fit_calibration(val["probs"], val["labels"])
    assert card["temperature"] == pytest.approx(t_fit, rel=1e-6)
    assert list(card["class_bias"]) == CLASSES
    assert list(card["class_bias"].values()) == pytest.approx(b_fit.tolist(), abs=1e-6)
    assert (out / "training_curves.png").stat().st_size > 1000

    pred = load_predictor(out / "hematovision_wbc.keras", backend="keras")
    p = pred.predict_one((FIXTURES / "LYMPHOCYTE_3.jpeg").read_bytes())
    assert p.label in CLASSES
    assert abs(sum(p.probabilities.values()) - 1) < 1e-5
    assert p.model_version == card["version"]


def test_train_mobilenet_v2_backbone_end_to_end_on_tiny_data(tmp_path, monkeypatch):
    """``--backbone mobilenet_v2`` with a weights file: the same split (source fields), served crops,
    colour opinion, calibration and bundle as the Lite0 path. Machines here cannot download Keras'
    ImageNet file, so the test passes randomly initialised weights in that file's format."""
    import keras

    from ml import cache, calibration, train
    from ml.bundle import bundle_version
    from ml.predictor import load_predictor

    monkeypatch.setattr(cache, "CACHE_ROOT", tmp_path / "cache")
    weights = tmp_path / "mobilenet_v2_no_top.weights.h5"
    keras.applications.MobileNetV2(input_shape=(192, 192, 3), include_top=False, weights=None).save_weights(
        weights
    )
    data = _tiny_dataset(tmp_path)
    out = tmp_path / "model"
    args = ["--data", str(data), "--out", str(out), "--epochs", "1", "--backbone", "mobilenet_v2"]
    assert train.main(args + ["--backbone-weights", str(weights)]) == 0

    card = json.loads((out / "model_card.json").read_text())
    assert card["backbone"] == "mobilenet_v2"
    assert card["classes"] == CLASSES
    assert card["version"] == bundle_version(card, out / "hematovision_wbc.keras")
    assert card["data"]["source_fields"] == {
        "train": dict.fromkeys(CLASSES, 1),
        "val": dict.fromkeys(CLASSES, 1),
    }
    assert card["data"]["n_train"] == card["data"]["n_val"] == 16
    assert card["finetune_layers"] == 30
    assert 0 < card["nucleus_found_fraction"] <= 1
    assert set(card["history"]) == {"phase1_head", "phase2_finetune"}
    assert len(card["history"]["phase2_finetune"]["loss"]) == 1
    assert list(card["class_bias"]) == CLASSES
    assert card["colour"]["weight"] in calibration.COLOUR_WEIGHTS
    for f in ("ood_stats.npz", "colour_model.npz", "val_predictions.npz", "training_curves.png"):
        assert (out / f).stat().st_size > 0
    pred = load_predictor(out / "hematovision_wbc.keras", backend="keras")
    p = pred.predict_one((FIXTURES / "NEUTROPHIL_3.jpeg").read_bytes())
    assert p.label in CLASSES + ["UNIDENTIFIED"]
    assert abs(sum(p.probabilities.values()) - 1) < 1e-5
    assert p.model_version == card["version"]


def test_train_mobilenet_v2_without_weights_says_how_to_pass_them(tmp_path, capsys):
    from ml import train

    data = _tiny_dataset(tmp_path)
    args = ["--data", str(data), "--out", str(tmp_path / "m"), "--backbone", "mobilenet_v2"]
    assert train.main(args + ["--backbone-weights", str(tmp_path / "missing.h5")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cannot train: MobileNetV2 ImageNet weights are not available")
    assert "--backbone-weights" in err
    assert not (tmp_path / "m").exists()


def test_train_refuses_a_class_from_a_single_source_field(tmp_path, monkeypatch, capsys):
    """Validating a class needs a field that training never saw: with one MONOCYTE field, training
    stops before it starts and writes nothing (before, every field of such a class went to validation
    and the class was never trained)."""
    from ml import cache, train

    monkeypatch.setattr(cache, "CACHE_ROOT", tmp_path / "cache")
    data = _tiny_dataset(tmp_path, {"MONOCYTE": 1})
    assert train.main(["--data", str(data), "--out", str(tmp_path / "m"), "--epochs", "1"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "cannot train: MONOCYTE has 4 image(s) from a single source field: a validation split needs at "
        "least two fields per class (one for training, one for validation)"
    )
    assert not (tmp_path / "m").exists()


def test_cache_is_keyed_by_the_images_not_only_their_number(tmp_path):
    from ml.cache import cache_dir
    from ml.config import TrainConfig

    a, b = tmp_path / "A" / "EOSINOPHIL", tmp_path / "B" / "EOSINOPHIL"
    for d in (a, b):
        d.mkdir(parents=True)
    (a / "x.jpeg").write_bytes(b"1" * 10)
    (b / "x.jpeg").write_bytes(b"1" * 11)  # same name, another image
    cfg = TrainConfig()
    assert cache_dir(cfg, [a / "x.jpeg"]) != cache_dir(cfg, [b / "x.jpeg"])
    (b / "x.jpeg").write_bytes(b"2" * 10)
    assert cache_dir(cfg, [a / "x.jpeg"]) == cache_dir(cfg, [b / "x.jpeg"])  # by name and size, not folder
    assert cache_dir(cfg, [a / "x.jpeg"]).name.startswith("efficientnet_lite0_c144_s192_b11_seed1337_n1_")


def test_train_refuses_a_test_folder(tmp_path):
    from ml import train

    (tmp_path / "TEST" / "EOSINOPHIL").mkdir(parents=True)
    assert train.main(["--data", str(tmp_path / "TEST"), "--out", str(tmp_path / "m")]) == 2


def test_fit_calibration_recovers_temperature_and_class_offsets():
    """Labels drawn from softmax(log p / T + b): the NLL fit finds T and the (centred) offsets, and
    ml.ood.calibrate applies them; without offsets it is temperature scaling, which keeps every argmax."""
    from ml import ood
    from ml.calibration import fit_calibration

    rng = np.random.default_rng(0)
    n, true_t, true_b = 40000, 1.6, np.array([0.6, -0.9, 1.2, -0.9])
    probs = rng.dirichlet(np.full(4, 0.7), size=n)
    target = ood.calibrate(probs, true_t, true_b)
    labels = (target.cumsum(1) < rng.random((n, 1))).sum(1)
    t, b = fit_calibration(probs, labels)
    assert t == pytest.approx(true_t, rel=0.05)
    assert b == pytest.approx(true_b, abs=0.06)
    assert b.sum() == pytest.approx(0.0, abs=1e-9)
    z = np.log(probs) / t + b
    assert ood.calibrate(probs, t, b) == pytest.approx(np.exp(z) / np.exp(z).sum(1, keepdims=True), rel=1e-5)
    t0, b0 = fit_calibration(probs, labels, class_bias=False)
    assert t0 > 0
    assert not b0.any()
    assert np.array_equal(ood.calibrate(probs, t0, b0).argmax(1), probs.argmax(1))
    # The offsets move decisions towards the classes the probabilities under-call.
    assert np.mean(ood.calibrate(probs, t, b).argmax(1) == labels) > np.mean(probs.argmax(1) == labels)
