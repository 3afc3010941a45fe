"""Out-of-distribution scoring and calibration helpers (numpy only).

Two scores of the fine-tuned model's pooled backbone features, chosen by the bundle's statistics file:

- ``knn`` (``fit_knn``; the shipped recipe since the fifteenth session): the cosine distance to the
  k-th nearest of a sample of training cells. A cell from a lab the model never saw that lands in a
  class's region but away from every training cell gets a high score (ml/EXPERIMENTS.md, K1: on
  another lab's cells it halved the silent errors at the same in-lab flag share).
- ``mahalanobis`` (``fit``; older bundles): the features projected on their top principal
  components; the smallest class-conditional Mahalanobis distance (shared covariance), plus the
  normalised energy left outside the principal subspace (images unlike any training cell put energy
  there).

``distance`` computes whichever the statistics hold; thresholds are set on validation scores
(``in_distribution_threshold``) and by ``ml.oodcal`` with non-blood images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

N_COMPONENTS = 64
SCORES = ("knn", "mahalanobis")  # the scores ``distance`` computes (``method`` names a bundle's)
KNN_K = 10  # the k-th nearest training cell (EXPERIMENTS, K1)
KNN_QUANTILE = 0.98  # knn: the threshold flags 2 % of validation cells by distance (ml.oodcal's floor)


def fit(feats: np.ndarray, labels: np.ndarray, n_classes: int, n_components: int = N_COMPONENTS) -> dict:
    feats = feats.astype(np.float64)
    mu = feats.mean(0)
    x = feats - mu
    evals, evecs = np.linalg.eigh(x.T @ x)  # cheaper than an SVD of the data matrix
    comp = evecs[:, ::-1][:, :n_components].T
    z = x @ comp.T
    means = np.stack([z[labels == c].mean(0) for c in range(n_classes)])
    resid = z - means[labels]
    cov = np.cov(resid, rowvar=False) + 1e-6 * np.eye(n_components)
    prec = np.linalg.inv(cov)
    res_energy = np.linalg.norm(x - z @ comp, axis=1)
    return {
        "mu": mu.astype(np.float32),
        "components": comp.astype(np.float32),
        "means": means.astype(np.float32),
        "precision": prec.astype(np.float32),
        "res_scale": np.float32(np.median(res_energy) + 1e-6),
    }


def fit_knn(feats: np.ndarray, k: int = KNN_K) -> dict:
    """The ``knn`` statistics: the L2-normalised features of a training sample (float16) and k."""
    if not 1 <= k <= len(feats):
        raise ValueError(f"k = {k} needs 1..{len(feats)} (the training sample's size)")
    return {"knn_bank": _unit(feats).astype(np.float16), "knn_k": np.int32(k)}


def method(stats: dict) -> str:
    """Which score ``stats`` give: ``knn`` or ``mahalanobis``."""
    return "knn" if "knn_bank" in stats else "mahalanobis"


def describe(stats: dict) -> dict:
    """The card's ``ood_score`` record of ``stats``."""
    if method(stats) == "knn":
        return {"method": "knn", "k": int(stats["knn_k"]), "training_sample": int(len(stats["knn_bank"]))}
    return {"method": "mahalanobis", "components": int(len(stats["components"]))}


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_distance(stats: dict, feats: np.ndarray, chunk: int = 256) -> np.ndarray:
    """1 - cosine similarity to the k-th nearest row of the training sample, per row of ``feats``."""
    bank = np.asarray(stats["knn_bank"], np.float32)  # no copy when loaded (``load``)
    k = int(stats["knn_k"])
    x = _unit(feats)
    out = np.empty(len(x), np.float32)
    for i in range(0, len(x), chunk):
        sims = x[i : i + chunk] @ bank.T
        out[i : i + chunk] = 1.0 - np.partition(sims, -k, axis=1)[:, -k]
    return out


def distance(stats: dict, feats: np.ndarray) -> np.ndarray:
    """OOD score per row: ``knn_distance`` for ``knn`` statistics; else the min-class Mahalanobis
    distance / sqrt(dims) + residual energy / train median."""
    if method(stats) == "knn":
        return knn_distance(stats, feats)
    x = feats.astype(np.float32) - stats["mu"]
    z = x @ stats["components"].T
    d = np.stack([np.einsum("ij,jk,ik->i", z - m, stats["precision"], z - m) for m in stats["means"]], 1)
    maha = np.sqrt(np.maximum(d.min(1), 0) / z.shape[1])
    res = np.linalg.norm(x - z @ stats["components"], axis=1) / stats["res_scale"]
    return maha + res


def save(stats: dict, path: Path) -> None:
    np.savez_compressed(path, **stats)


def load(path: Path) -> dict:
    """Statistics saved by ``save``; a k-NN sample (stored as float16) comes back as float32 once, so
    that serving does not convert it on every call."""
    with np.load(path) as z:
        stats = {k: z[k] for k in z.files}
    if "knn_bank" in stats:
        stats["knn_bank"] = stats["knn_bank"].astype(np.float32)
    return stats


def calibrate(probs: np.ndarray, temperature: float, class_bias=None) -> np.ndarray:
    """softmax(log p / T + b): temperature scaling, with one offset per class when ``class_bias`` is given."""
    z = np.log(np.clip(probs, 1e-12, 1.0)) / float(temperature)
    if class_bias is not None:
        z = z + np.asarray(class_bias, dtype=z.dtype)
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def class_bias_record(classes, bias) -> dict:
    """The card's ``class_bias`` entry: class name -> offset (read back by ``card_class_bias``)."""
    return {c: float(b) for c, b in zip(classes, bias, strict=True)}


def card_class_bias(card: dict) -> np.ndarray:
    """The card's class offsets in output order (zeros for a card without them: temperature only).
    ValueError when they do not name exactly the card's classes or are not finite numbers."""
    bias = card.get("class_bias")
    if bias is None:
        return np.zeros(len(card["classes"]), np.float32)
    if not isinstance(bias, dict) or sorted(bias) != sorted(card["classes"]):
        raise ValueError(f"class_bias must give one offset for each of {card['classes']}, got {bias!r}")
    out = np.array([bias[c] for c in card["classes"]], np.float32)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"class_bias offsets must be finite numbers, got {bias!r}")
    return out


def in_distribution_threshold(val_dist: np.ndarray, score: str = "mahalanobis") -> float:
    """The distance threshold from validation distances alone: for ``knn``, their ``KNN_QUANTILE``
    (the share K1 was judged at); for ``mahalanobis``, their 99th percentile x 1.1."""
    if score == "knn":
        return float(np.quantile(val_dist, KNN_QUANTILE))
    return float(np.percentile(val_dist, 99.0) * 1.1)


def flagged(dist: np.ndarray, conf: np.ndarray, thresholds: dict) -> np.ndarray:
    """Which rows the thresholds flag (too far from every training cell, or not confident enough)."""
    return (dist > thresholds["ood_distance"]) | (conf < thresholds["min_confidence"])


def choose_thresholds(
    val_dist: np.ndarray,
    val_conf: np.ndarray,
    budget: float,
    ood_threshold: float | None = None,
    score: str = "mahalanobis",
) -> dict:
    """OOD threshold: ``in_distribution_threshold`` (or ``ood_threshold``, e.g. from ``ml.oodcal``);
    the confidence threshold fills the rest of ``budget``."""
    ood_thr = in_distribution_threshold(val_dist, score) if ood_threshold is None else float(ood_threshold)
    left = max(budget - float(np.mean(val_dist > ood_thr)), 0.0)
    conf_thr = float(np.clip(np.quantile(val_conf, left), 0.35, 0.9)) if left > 0 else 0.35
    return {"ood_distance": ood_thr, "min_confidence": conf_thr}
