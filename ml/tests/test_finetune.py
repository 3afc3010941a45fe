"""``ml.finetune``: pack the training side, fit the whole network, adopt the model in ``ml.train``.

The GPU runs use the PyTorch backend; here the same code runs on TensorFlow (Keras 3 is the same
API on both), on the tiny dataset of ``test_train``.
"""

import io
import json

import numpy as np
import pytest
from PIL import Image

from ml.tests.conftest import FIXTURES
from ml.tests.test_train import CLASSES, _tiny_dataset

pytestmark = pytest.mark.realmodel  # builds the real backbone (ImageNet weights)


def test_pack_fit_and_adopt_on_tiny_data(tmp_path, monkeypatch):
    import keras

    from ml import finetune, train
    from ml.predictor import load_predictor

    monkeypatch.setattr(train, "CACHE_ROOT", tmp_path / "cache")
    data = _tiny_dataset(tmp_path)
    pack = tmp_path / "pack"
    assert finetune.main(["pack", "--data", str(data), "--out", str(pack)]) == 0

    # Only the training side travels: one whole source field per class, 4 copies each.
    meta = json.loads((pack / "pack.json").read_text())
    assert meta["classes"] == CLASSES and meta["n_images"] == 16
    assert meta["source_fields"] == dict.fromkeys(CLASSES, 1)
    idx = np.load(pack / "index.npz")
    assert idx["offsets"][-1] == (pack / "crops.bin").stat().st_size
    assert np.bincount(idx["labels"]).tolist() == [4, 4, 4, 4]
    assert len(set(idx["groups"].tolist())) == 4
    raw = (pack / "crops.bin").read_bytes()
    first = Image.open(io.BytesIO(raw[: idx["offsets"][1]]))
    assert first.format == "JPEG" and first.size == (144, 144)
    init = np.load(pack / "init_weights.npz")
    assert init["stem_conv:0"].dtype == np.float16 and not any(k.startswith("predictions") for k in init)

    out = tmp_path / "gpu"
    argv = ["fit", "--pack", str(pack), "--out", str(out), "--input-size", "96", "--epochs", "1"]
    assert finetune.main([*argv, "--head-epochs", "1", "--batch", "8", "--name", "ft"]) == 0
    info = json.loads((out / "ft.json").read_text())
    assert info["complete"] and info["backend"] == "tensorflow" and info["config"]["input_size"] == 96
    assert info["config"]["jit_compile"] == "auto"
    assert len(info["history"]["phase2_finetune"]["loss"]) == 1
    fitted = keras.saving.load_model(out / "ft.keras", compile=False)
    # No optimizer state in the file (with AdamW's two moments it would be three times the weights).
    assert (out / "ft.keras").stat().st_size < 1.2 * 4 * fitted.count_params()
    # BatchNorm stayed frozen at the ImageNet statistics; the convolutions moved.
    bn = fitted.get_layer("block3_dw_bn").get_weights()
    assert all(np.allclose(bn[i], init[f"block3_dw_bn:{i}"].astype(np.float32)) for i in range(4))
    assert not np.allclose(fitted.get_layer("block3_dwconv").get_weights()[0], init["block3_dwconv:0"])

    served = tmp_path / "served"
    adopt = ["--data", str(data), "--out", str(served), "--init-model", str(out / "ft.keras")]
    assert train.main(adopt) == 0
    card = json.loads((served / "model_card.json").read_text())
    assert card["input"]["input_size"] == 96 and card["config"]["init_model"] == str(out / "ft.keras")
    assert card["finetune"]["name"] == "ft" and card["finetune"]["pack"]["n_images"] == 16
    assert card["data"]["source_fields"]["val"] == dict.fromkeys(CLASSES, 1)
    assert card["temperature"] > 0 and (served / "colour_model.npz").exists()
    # A model fitted on another training side is refused: its validation would leak.
    info["pack"]["n_images"] = 15
    (out / "ft.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="fitted on a training side of 15 images"):
        train.main([*adopt[:3], str(tmp_path / "leaky"), *adopt[4:]])
    assert not (tmp_path / "leaky").exists()
    # The adopted model is the fitted one, unchanged.
    x = np.random.default_rng(0).uniform(0, 255, (2, 96, 96, 3)).astype(np.float32)
    shipped = keras.saving.load_model(served / "hematovision_wbc.keras", compile=False)
    np.testing.assert_allclose(shipped.predict(x, verbose=0), fitted.predict(x, verbose=0), atol=1e-6)
    p = load_predictor(served / "hematovision_wbc.keras", backend="keras").predict_one(
        (FIXTURES / "MONOCYTE_2.jpeg").read_bytes()
    )
    assert p.label in CLASSES and p.model_version == card["version"]


def test_augment_keeps_shape_and_is_seeded():
    from ml.finetune import augment

    crop = np.asarray(Image.open(FIXTURES / "EOSINOPHIL_1.jpeg").convert("RGB").resize((144, 144)))
    a = augment(crop, np.random.default_rng(3), 96)
    b = augment(crop, np.random.default_rng(3), 96)
    c = augment(crop, np.random.default_rng(4), 96)
    assert a.shape == (96, 96, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_pack_needs_the_original_fields(tmp_path, capsys):
    from ml import finetune

    (tmp_path / "TRAIN" / "EOSINOPHIL").mkdir(parents=True)
    assert finetune.main(["pack", "--data", str(tmp_path / "TRAIN"), "--out", str(tmp_path / "p")]) == 2
    assert "no labels.csv" in capsys.readouterr().err
