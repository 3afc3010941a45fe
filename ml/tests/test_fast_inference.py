"""Fast serving paths: LiteRT and compiled Keras match the Keras model; the naive backend agrees.

Timing figures live in ``python -m ml.bench`` only; these tests check outputs.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from ml.fastmorph import binary_closing_disk, binary_opening_disk

# The dataset beside the checkout (../shared), as CI lays it out.
TEST_DIR = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "bccd-wbc" / "TEST"
TOL = 1e-3


def _disk(r):
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= r * r


def test_fast_morphology_equals_scipy():
    rs = np.random.RandomState(0)
    for _ in range(60):
        h, w = rs.randint(1, 120), rs.randint(1, 120)
        m = ndimage.uniform_filter(rs.rand(h, w), size=rs.randint(1, 7)) > rs.uniform(0.3, 0.8)
        for r in (1, 2, 5, 7):
            assert (binary_closing_disk(m, r) == ndimage.binary_closing(m, structure=_disk(r))).all()
            assert (binary_opening_disk(m, r) == ndimage.binary_opening(m, structure=_disk(r))).all()


@pytest.fixture(scope="module")
def test_images(tmp_path_factory) -> dict[str, bytes]:
    """Two TEST images per class, copied at test time (the dataset is read-only and outside the repo)."""
    if not TEST_DIR.is_dir():
        pytest.fail(f"dataset missing: {TEST_DIR} (the BCCD folder lies beside the checkout)")
    dst = tmp_path_factory.mktemp("test_images")
    out = {}
    for cls in sorted(p for p in TEST_DIR.iterdir() if p.is_dir()):
        for f in sorted(cls.glob("*.jp*g"))[:2]:
            shutil.copy(f, dst / f"{cls.name}_{f.name}")
            out[f"{cls.name}_{f.stem}"] = (dst / f"{cls.name}_{f.name}").read_bytes()
    return out


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    from ml.predictor import load_predictor

    return {b: load_predictor(backend=b) for b in ("keras", "litert", "naive")}


def _keras_reference(pred, images):
    """The reference: the Keras model called view by view (``tta_predict``, as at training time)."""
    from ml.predictor import tta_predict

    crops = np.stack([pred.prepare(im).crop for im in images])
    return tta_predict(lambda v: pred.network(v, training=False), crops, pred.tta_views)


@pytest.mark.realmodel
def test_litert_and_keras_match_keras_model(backends, cell_images, test_images):
    images = list(cell_images.values()) + list(test_images.values())
    ref_f, ref_p = _keras_reference(backends["keras"], images)
    crops = np.stack([backends["keras"].prepare(im).crop for im in images])
    for name in ("keras", "litert"):
        f, p = backends[name].infer(crops)
        assert np.abs(p - ref_p).max() <= TOL, name
        assert np.abs(f - ref_f).max() <= TOL * max(1.0, np.abs(ref_f).max()), name
    # Whole predictions (calibrated probabilities, labels, flags) agree too.
    fast = backends["litert"].predict(images)
    slow = backends["keras"].predict(images)
    for a, b in zip(fast, slow, strict=True):
        assert (a.label, a.status, a.flag_reason, a.cell_box) == (
            b.label,
            b.status,
            b.flag_reason,
            b.cell_box,
        )
        assert max(abs(a.probabilities[c] - b.probabilities[c]) for c in a.probabilities) <= TOL


@pytest.mark.realmodel
def test_naive_backend_gives_same_labels(backends, cell_images):
    images = list(cell_images.values())[::3]
    naive = backends["naive"].predict(images)
    fast = backends["litert"].predict(images)
    assert [p.label for p in naive] == [p.label for p in fast]
    assert [p.status for p in naive] == [p.status for p in fast]


@pytest.mark.realmodel
def test_auto_backend_is_verified_litert(cell_images):
    from ml import litert
    from ml.predictor import load_predictor

    pred = load_predictor()  # backend="auto"
    assert pred.backend == "litert"
    assert pred.litert_meta["max_abs_diff_vs_keras"] <= litert.TOLERANCE
    assert pred.litert_meta["sha256"] == litert.sha256(pred.litert_path)
    assert load_predictor(backend="auto") is pred  # one model per process and backend


@pytest.mark.realmodel
def test_litert_cache_rejects_a_tampered_file(backends, tmp_path, monkeypatch):
    from ml import litert

    keras_pred = backends["keras"]
    tfl = backends["litert"].litert_path
    monkeypatch.setenv(litert.CACHE_ENV, str(tmp_path))
    copy_t, copy_j = litert.cache_paths(keras_pred.version, keras_pred.n_views, keras_pred.input_size)
    shutil.copy(tfl, copy_t)
    shutil.copy(tfl.with_suffix(".json"), copy_j)
    assert litert.cached(keras_pred.version, keras_pred.n_views, keras_pred.input_size) is not None
    with open(copy_t, "r+b") as fh:  # flip one byte of the weights
        fh.seek(len(fh.read()) // 2)
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 0xFF]))
    assert litert.cached(keras_pred.version, keras_pred.n_views, keras_pred.input_size) is None


@pytest.mark.realmodel
def test_litert_backend_is_thread_safe(backends, cell_images):
    from concurrent.futures import ThreadPoolExecutor

    pred = backends["litert"]
    images = list(cell_images.values())
    expected = [p.probabilities for p in pred.predict(images)]
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda im: pred.predict_one(im).probabilities, images * 2))
    assert got == expected * 2


def test_unknown_backend_is_rejected():
    from ml.predictor import load_predictor

    with pytest.raises(ValueError, match="unknown inference backend 'gpu'"):
        load_predictor(backend="gpu")
