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

    from ml import cache, finetune, train
    from ml.predictor import load_predictor

    monkeypatch.setattr(cache, "CACHE_ROOT", tmp_path / "cache")
    data = _tiny_dataset(tmp_path)
    pack = tmp_path / "pack"
    assert finetune.main(["pack", "--data", str(data), "--out", str(pack)]) == 0

    # Only the training side travels: one whole source field per class, 4 copies each.
    meta = json.loads((pack / "pack.json").read_text())
    assert meta["classes"] == CLASSES
    assert meta["n_images"] == 16
    assert meta["source_fields"] == dict.fromkeys(CLASSES, 1)
    idx = np.load(pack / "index.npz")
    assert idx["offsets"][-1] == (pack / "crops.bin").stat().st_size
    assert np.bincount(idx["labels"]).tolist() == [4, 4, 4, 4]
    assert len(set(idx["groups"].tolist())) == 4
    raw = (pack / "crops.bin").read_bytes()
    first = Image.open(io.BytesIO(raw[: idx["offsets"][1]]))
    assert first.format == "JPEG"
    assert first.size == (144, 144)
    init = np.load(pack / "init_weights.npz")
    assert init["stem_conv:0"].dtype == np.float16
    assert not any(k.startswith("predictions") for k in init)

    out = tmp_path / "gpu"
    argv = ["fit", "--pack", str(pack), "--out", str(out), "--input-size", "96", "--epochs", "1"]
    assert finetune.main([*argv, "--head-epochs", "1", "--batch", "8", "--name", "ft"]) == 0
    info = json.loads((out / "ft.json").read_text())
    assert info["complete"]
    assert info["backend"] == "tensorflow"
    assert info["config"]["input_size"] == 96
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
    assert card["input"]["input_size"] == 96
    assert card["config"]["init_model"] == str(out / "ft.keras")
    assert card["finetune"]["name"] == "ft"
    assert card["finetune"]["pack"]["n_images"] == 16
    assert card["data"]["source_fields"]["val"] == dict.fromkeys(CLASSES, 1)
    assert card["temperature"] > 0
    assert (served / "colour_model.npz").exists()
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
    assert p.label in CLASSES
    assert p.model_version == card["version"]


def test_augment_keeps_shape_and_is_seeded():
    from ml.finetune_fit import augment

    crop = np.asarray(Image.open(FIXTURES / "EOSINOPHIL_1.jpeg").convert("RGB").resize((144, 144)))
    a = augment(crop, np.random.default_rng(3), 96)
    b = augment(crop, np.random.default_rng(3), 96)
    c = augment(crop, np.random.default_rng(4), 96)
    assert a.shape == (96, 96, 3)
    assert a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_pack_needs_the_original_fields(tmp_path, capsys):
    from ml import finetune

    (tmp_path / "TRAIN" / "EOSINOPHIL").mkdir(parents=True)
    assert finetune.main(["pack", "--data", str(tmp_path / "TRAIN"), "--out", str(tmp_path / "p")]) == 2
    assert "no labels.csv" in capsys.readouterr().err


def test_group_folds_keep_groups_whole_and_balance_classes():
    from ml.data import group_folds

    rng = np.random.default_rng(0)
    # 4 classes x 9 groups of 1..20 images; groups never straddle classes here.
    labels, groups = [], []
    for c in range(4):
        for g in range(9):
            size = int(rng.integers(1, 21))
            labels += [c] * size
            groups += [c * 100 + g] * size
    labels, groups = np.array(labels), np.array(groups)
    fold = group_folds(groups, labels, 3, seed=7)
    assert set(fold.tolist()) == {0, 1, 2}
    for g in np.unique(groups):
        assert len(set(fold[groups == g].tolist())) == 1  # a group is never split
    for c in range(4):
        per_fold = np.bincount(fold[labels == c], minlength=3)
        fields = [len(np.unique(groups[(labels == c) & (fold == f)])) for f in range(3)]
        assert min(fields) >= 1  # every fold gets every class
        assert per_fold.max() - per_fold.min() <= 20  # within one group's size
    assert np.array_equal(fold, group_folds(groups, labels, 3, seed=7))  # seeded
    assert not np.array_equal(fold, group_folds(groups, labels, 3, seed=8))
    with pytest.raises(ValueError, match="at least 2 folds"):
        group_folds(groups, labels, 1, seed=7)
    with pytest.raises(ValueError, match="cannot fill"):
        group_folds(np.zeros(5, int), np.zeros(5, int), 2, seed=7)


def test_kfold_pack_fold_fits_and_crossval_on_tiny_data(tmp_path, monkeypatch, capsys):
    import keras

    from ml import cache, calibration, crossval, finetune, metrics, ood
    from ml.bundle import bundle_version
    from ml.model import build_classifier, set_weights_by_name
    from ml.predictor import load_predictor, tta_predict

    monkeypatch.setattr(cache, "CACHE_ROOT", tmp_path / "cache")
    data = _tiny_dataset(tmp_path)
    pack = tmp_path / "pack"
    assert finetune.main(["pack", "--data", str(data), "--out", str(pack), "--folds", "2"]) == 0
    meta = json.loads((pack / "pack.json").read_text())
    # Every image travels, with its fold: one whole source field of each class per fold.
    assert meta["n_images"] == 32
    assert meta["folds"] == 2
    one_each = {"n_images": 16, "source_fields": dict.fromkeys(CLASSES, 1)}
    assert meta["per_fold"] == {"0": one_each, "1": one_each}
    idx = np.load(pack / "index.npz")
    for g in np.unique(idx["groups"]):
        assert len(set(idx["folds"][idx["groups"] == g].tolist())) == 1

    gpu = tmp_path / "gpu"
    fit = ["fit", "--pack", str(pack), "--out", str(gpu), "--input-size", "96", "--epochs", "1"]
    fit += ["--head-epochs", "1", "--batch", "8", "--seed", "2"]
    with pytest.raises(ValueError, match="fold 2 is not in"):
        finetune.main([*fit, "--fold", "2"])
    for k in (0, 1):
        assert finetune.main([*fit, "--fold", str(k), "--save", "weights16", "--name", f"m_fold{k}"]) == 0
        info = json.loads((gpu / f"m_fold{k}.json").read_text())
        assert info["pack"]["fold"] == k
        assert info["pack"]["n_images"] == 16
        assert info["pack"]["source_fields"] == dict.fromkeys(CLASSES, 1)
        w = np.load(gpu / f"m_fold{k}.weights16.npz")
        assert w["predictions:0"].dtype == np.float16
        assert not (gpu / f"m_fold{k}.keras").exists()
    assert finetune.main([*fit, "--name", "m"]) == 0
    assert json.loads((gpu / "m.json").read_text())["pack"]["n_images"] == 32

    out = tmp_path / "served"
    argv = ["--data", str(data), "--folds-dir", str(gpu), "--model", str(gpu / "m.keras"), "--out", str(out)]
    assert crossval.main(argv) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["data"]["n_train"] == card["data"]["n_val"] == 32
    assert card["data"]["split"].startswith("2-fold cross-validation by source field")
    vm = card["validation_metrics"]
    assert vm["out_of_fold"] is True
    assert set(vm["folds"]) == {"0", "1"}
    assert {f["n_images"] for f in vm["folds"].values()} == {16}
    assert vm["tta4"]["n_images"] == 32
    assert sum(map(sum, vm["tta4"]["confusion_matrix"])) == 32
    assert card["temperature"] > 0
    assert set(card["thresholds"]) == {"ood_distance", "min_confidence"}
    assert card["crossval"]["fold_models"]["1"]["file"] == "m_fold1.weights16.npz"
    assert card["command"].startswith("python -m ml.crossval")
    # ml.oodcal moved the thresholds after the bundle was written: the version follows them.
    assert card["version"] == bundle_version(card, out / "hematovision_wbc.keras")
    # Out of fold: each image's CNN probabilities come from the model that did not see its field.
    val = np.load(out / "val_predictions.npz")
    assert val["cnn_probs"].shape == (32, 4)
    assert np.array_equal(val["fold"], idx["folds"])
    # The distance threshold: the in-distribution rule on these out-of-fold distances (99th percentile
    # x 1.1), lowered by ml.oodcal to flag every calibration non-blood image, within its floor.
    oc = card["ood_calibration"]
    base = 1.1 * np.percentile(val["ood_distance"], 99)
    assert oc["thresholds_before"]["ood_distance"] == pytest.approx(base, rel=1e-5)
    assert oc["images"] == oc["flagged_by_locator_gates"] + oc["measured"]
    assert oc["measured"] > 0
    t = card["thresholds"]["ood_distance"]
    floor = np.quantile(val["ood_distance"], 0.98)
    assert t == pytest.approx(max(min(base, 0.95 * min(oc["distances"].values())), floor), rel=1e-4)
    assert oc["missed_at_threshold"] == sorted(n for n, d in oc["distances"].items() if d <= t)
    # Temperature and class offsets: the NLL fit on the out-of-fold probabilities, as served.
    t_fit, b_fit = calibration.fit_calibration(val["probs"], val["labels"])
    assert card["temperature"] == pytest.approx(t_fit, rel=1e-6)
    assert list(card["class_bias"]) == CLASSES
    assert list(card["class_bias"].values()) == pytest.approx(b_fit.tolist(), abs=1e-6)
    cal = ood.calibrate(val["probs"], card["temperature"], ood.card_class_bias(card))
    assert (
        vm["calibrated"]["confusion_matrix"]
        == metrics.metrics_dict(val["labels"], cal.argmax(1), CLASSES)["confusion_matrix"]
    )
    # Nested: each fold decided by the calibration fitted on the other fold only.
    nested = np.zeros(32, int)
    for k in (0, 1):
        tk, bk = calibration.fit_calibration(val["probs"][val["fold"] != k], val["labels"][val["fold"] != k])
        nested[val["fold"] == k] = ood.calibrate(val["probs"][val["fold"] == k], tk, bk).argmax(1)
    assert vm["calibrated_nested"]["accuracy"] == pytest.approx(np.mean(nested == val["labels"]))
    assert vm["calibrated_nested"]["by_fold"]["1"] == pytest.approx(
        np.mean(nested[val["fold"] == 1] == val["labels"][val["fold"] == 1])
    )
    flagged = (val["ood_distance"] > t) | (cal.max(1) < card["thresholds"]["min_confidence"])
    assert card["validation_flagged_rate"] == pytest.approx(flagged.mean())
    crops, _ = cache.crops_cached(_files(data), _cfg_96(tmp_path))  # the served crops, as crossval read them
    in1 = np.flatnonzero(val["fold"] == 1)
    probs = {}
    for k in (0, 1):
        m = build_classifier("efficientnet_lite0", 96, 4, 0.3, imagenet=False)
        set_weights_by_name(m, np.load(gpu / f"m_fold{k}.weights16.npz"))
        both = keras.Model(m.input, [m.get_layer("avg_pool").output, m.output])
        probs[k] = tta_predict(lambda x, b=both: b(x, training=False), np.asarray(crops[in1]), 4)[1]
    np.testing.assert_allclose(val["cnn_probs"][in1], probs[1], atol=1e-5)
    assert not np.allclose(val["cnn_probs"][in1], probs[0], atol=1e-3)
    # The served model is the refit, unchanged, and the predictor loads the bundle.
    x = np.random.default_rng(0).uniform(0, 255, (2, 96, 96, 3)).astype(np.float32)
    refit = keras.saving.load_model(gpu / "m.keras", compile=False)
    shipped = keras.saving.load_model(out / "hematovision_wbc.keras", compile=False)
    np.testing.assert_allclose(shipped.predict(x, verbose=0), refit.predict(x, verbose=0), atol=1e-6)
    p = load_predictor(out / "hematovision_wbc.keras", backend="keras").predict_one(
        (FIXTURES / "LYMPHOCYTE_1.jpeg").read_bytes()
    )
    assert p.label in CLASSES
    assert p.model_version == card["version"]

    # A fold model that saw its own fold is refused, and nothing is written.
    info = json.loads((gpu / "m_fold1.json").read_text())
    info["pack"]["n_images"] = 32
    (gpu / "m_fold1.json").write_text(json.dumps(info))
    leaky = tmp_path / "leaky"
    capsys.readouterr()
    assert crossval.main([*argv[:-1], str(leaky)]) == 2
    assert "m_fold1.weights16.npz was fitted on fold 1 of 2 (32 images" in capsys.readouterr().err
    assert not leaky.exists()
    (gpu / "m_fold1.weights16.npz").unlink()
    assert crossval.main([*argv[:-1], str(leaky)]) == 2
    assert "need fold models 0..K-1 (K >= 2), found folds [0]" in capsys.readouterr().err
    assert not leaky.exists()


def _files(data):
    from ml.data import list_class_folders

    return list_class_folders(str(data), CLASSES)[0]


def _cfg_96(tmp_path):
    from ml.config import TrainConfig

    return TrainConfig(input_size=96, originals_dir=str(tmp_path / "ORIGINAL"))


def test_ood_calibration_images_are_not_the_test_fixtures():
    """The calibration set that sets the distance threshold shares no image with the non-blood test."""
    from ml.oodcal import calibration_images, choose_ood_threshold
    from ml.tests.nonblood import nonblood_images

    cal = calibration_images()
    assert len(cal) >= 60
    assert all(a.shape == (240, 320, 3) and a.dtype == np.uint8 for a in cal.values())
    fixtures = nonblood_images()
    # No source image in common: calibration names start with their source's name.
    sources = {n.split("_tile")[0].rsplit("_", 1)[0] if "_" in n else n for n in cal}
    assert not {s.split("_")[0] for s in sources} & {f.split("_")[0] for f in fixtures}
    # The rule: below the in-distribution threshold when an outlier is closer, never below the floor.
    in_dist = np.linspace(0, 10, 1001)  # 98 % quantile = 9.8
    assert choose_ood_threshold(in_dist, 11.0, np.array([12.0])) == 11.0
    assert choose_ood_threshold(in_dist, 11.0, np.array([10.5, 12.0])) == pytest.approx(0.95 * 10.5)
    assert choose_ood_threshold(in_dist, 11.0, np.array([3.0])) == pytest.approx(9.8)
    assert choose_ood_threshold(in_dist, 11.0, np.array([])) == 11.0
