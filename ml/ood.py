"""Out-of-distribution scoring and calibration helpers (numpy only).

Pooled backbone features of the fine-tuned model are projected on their top
principal components; the score is the smallest class-conditional Mahalanobis
distance (shared covariance), plus the normalised energy left outside the
principal subspace (images unlike any training cell put energy there).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

N_COMPONENTS = 64


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


def distance(stats: dict, feats: np.ndarray) -> np.ndarray:
    """OOD score per row: min-class Mahalanobis distance / sqrt(dims) + residual energy / train median."""
    x = feats.astype(np.float32) - stats["mu"]
    z = x @ stats["components"].T
    d = np.stack([np.einsum("ij,jk,ik->i", z - m, stats["precision"], z - m) for m in stats["means"]], 1)
    maha = np.sqrt(np.maximum(d.min(1), 0) / z.shape[1])
    res = np.linalg.norm(x - z @ stats["components"], axis=1) / stats["res_scale"]
    return maha + res


def save(stats: dict, path: Path) -> None:
    np.savez_compressed(path, **stats)


def load(path: Path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


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


def in_distribution_threshold(val_dist: np.ndarray) -> float:
    """The distance threshold from validation distances alone: their 99th percentile x 1.1."""
    return float(np.percentile(val_dist, 99.0) * 1.1)


def flagged(dist: np.ndarray, conf: np.ndarray, thresholds: dict) -> np.ndarray:
    """Which rows the thresholds flag (too far from every training cell, or not confident enough)."""
    return (dist > thresholds["ood_distance"]) | (conf < thresholds["min_confidence"])


def choose_thresholds(
    val_dist: np.ndarray, val_conf: np.ndarray, budget: float, ood_threshold: float | None = None
) -> dict:
    """OOD threshold: ``in_distribution_threshold`` (or ``ood_threshold``, e.g. from ``ml.oodcal``);
    the confidence threshold fills the rest of ``budget``."""
    ood_thr = in_distribution_threshold(val_dist) if ood_threshold is None else float(ood_threshold)
    left = max(budget - float(np.mean(val_dist > ood_thr)), 0.0)
    conf_thr = float(np.clip(np.quantile(val_conf, left), 0.35, 0.9)) if left > 0 else 0.35
    return {"ood_distance": ood_thr, "min_confidence": conf_thr}
