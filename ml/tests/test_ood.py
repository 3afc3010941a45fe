"""ml.ood's two out-of-distribution scores: the k-nearest-neighbour distance (shipped) and the
class-conditional Mahalanobis distance (older bundles), chosen by the statistics a bundle holds."""

import numpy as np
import pytest

from ml import ood


def _brute_kth_cosine_distance(bank: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    q = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = np.sort(q @ b.T, axis=1)[:, ::-1]  # most similar first
    return 1.0 - sims[:, k - 1]


def test_knn_distance_is_the_cosine_distance_to_the_kth_nearest_training_cell():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(300, 32)).astype(np.float32) * rng.uniform(0.5, 3, (300, 1))  # any norm
    x = rng.normal(size=(70, 32)).astype(np.float32)
    stats = ood.fit_knn(train, k=7)
    assert stats["knn_bank"].dtype == np.float16
    assert stats["knn_bank"].shape == (300, 32)
    assert np.linalg.norm(stats["knn_bank"].astype(np.float32), axis=1) == pytest.approx(1.0, abs=1e-3)
    assert ood.method(stats) == "knn"
    assert ood.describe(stats) == {"method": "knn", "k": 7, "training_sample": 300}
    got = ood.distance(stats, x)  # chunked (chunk 256 > 70) and through the dispatch
    assert got == pytest.approx(_brute_kth_cosine_distance(train, x, 7), abs=2e-3)  # float16 bank
    assert ood.knn_distance(stats, x, chunk=16) == pytest.approx(got, abs=1e-6)  # chunks agree
    # A training cell itself is at distance ~0 for k=1; a far, unlike direction is far.
    near = ood.distance(ood.fit_knn(train, k=1), train[:5])
    assert near == pytest.approx(np.zeros(5), abs=2e-3)
    assert ood.distance(stats, -train[:5]).min() > 0.5


def test_knn_statistics_round_trip_through_the_bundle_file(tmp_path):
    rng = np.random.default_rng(3)
    stats = ood.fit_knn(rng.normal(size=(50, 8)), k=3)
    ood.save(stats, tmp_path / "ood_stats.npz")
    back = ood.load(tmp_path / "ood_stats.npz")
    assert back["knn_bank"].dtype == np.float32  # upcast once, at load
    assert np.array_equal(back["knn_bank"], stats["knn_bank"].astype(np.float32))
    assert ood.describe(back) == {"method": "knn", "k": 3, "training_sample": 50}
    x = rng.normal(size=(5, 8))
    assert ood.distance(back, x) == pytest.approx(ood.distance(stats, x), abs=1e-6)


def test_knn_threshold_is_the_validation_quantile_and_mahalanobis_keeps_its_rule():
    d = np.arange(1000, dtype=np.float64)
    assert ood.in_distribution_threshold(d, "knn") == pytest.approx(np.quantile(d, ood.KNN_QUANTILE))
    assert ood.in_distribution_threshold(d) == pytest.approx(np.percentile(d, 99) * 1.1)
    conf = np.random.default_rng(2).permutation(np.linspace(0.5, 1.0, 1000))  # unrelated to d
    t = ood.choose_thresholds(d, conf, 0.03, score="knn")
    flagged_by_distance = float(np.mean(d > t["ood_distance"]))
    assert flagged_by_distance == pytest.approx(1 - ood.KNN_QUANTILE, abs=1e-3)
    assert t["min_confidence"] == pytest.approx(np.quantile(conf, 0.03 - flagged_by_distance))  # the rest
    assert ood.flagged(d, conf, t).mean() == pytest.approx(0.03, abs=2e-3)


def test_mahalanobis_statistics_still_score_as_before():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 100)
    feats = rng.normal(size=(300, 80)) + labels[:, None] * 3.0
    stats = ood.fit(feats, labels, 3, n_components=16)
    assert ood.method(stats) == "mahalanobis"
    assert ood.describe(stats) == {"method": "mahalanobis", "components": 16}
    inside = ood.distance(stats, feats[:50])
    outside = ood.distance(stats, rng.normal(size=(50, 80)) * 6 + 40)
    assert outside.min() > inside.max()


def test_a_recipe_with_an_unknown_score_is_refused_before_any_training():
    from ml.multifit import FitConfig

    assert FitConfig().ood_score == "knn"
    with pytest.raises(ValueError, match="unknown out-of-distribution score 'knnn' \\(knn or mahalanobis\\)"):
        FitConfig(ood_score="knnn")


def test_knn_refuses_a_k_the_training_sample_cannot_give():
    with pytest.raises(ValueError, match="k = 11 needs 1..10"):
        ood.fit_knn(np.ones((10, 4)), k=11)
    with pytest.raises(ValueError, match="k = 0"):
        ood.fit_knn(np.ones((10, 4)), k=0)
