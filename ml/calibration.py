"""Calibration on held-out predictions: temperature and class offsets, the colour opinion's weight,
and the "unidentified" thresholds (what the card's ``temperature``, ``class_bias``, ``colour.weight``
and ``thresholds`` are set from)."""

from __future__ import annotations

import dataclasses

import numpy as np

from ml import colour, ood
from ml.config import TrainConfig
from ml.metrics import source_balanced_accuracy

COLOUR_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def fit_calibration(
    probs: np.ndarray, labels: np.ndarray, class_bias: bool = True
) -> tuple[float, np.ndarray]:
    """Temperature T, and with ``class_bias`` one offset per class b, minimising the held-out NLL of
    softmax(log p / T + b). Without offsets this is temperature scaling, which never changes a
    decision; with them it is bias-corrected temperature scaling (BCTS, Alexandari et al. 2020), which
    also corrects a systematic lean towards one class on cells the network has not seen. The offsets
    are centred (they sum to 0; softmax ignores a common shift)."""
    from scipy.optimize import minimize  # SciPy: imported when a calibration is fitted

    logp = np.log(np.clip(probs, 1e-12, 1.0)).astype(np.float64)
    n, k = logp.shape
    rows = np.arange(n)

    def unpack(x):
        return np.exp(x[0]), (np.append(x[1:], 0.0) if class_bias else np.zeros(k))

    def nll(x):
        t, b = unpack(x)
        z = logp / t + b
        z = z - z.max(1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(1)) - z[rows, labels]))

    x0 = np.zeros(k if class_bias else 1)
    bounds = [(np.log(0.05), np.log(20.0))] + [(-10.0, 10.0)] * (len(x0) - 1)
    t, b = unpack(minimize(nll, x0, method="L-BFGS-B", bounds=bounds).x)
    return float(t), b - b.mean()


def choose_colour_weight(probs, clp, y, groups) -> tuple[float, dict]:
    """Weight of the colour opinion, by accuracy per source field (each field counts once): the number
    of augmented copies per field is an artefact of the dataset, and a few big fields would decide
    otherwise. Ties go to the smaller weight."""
    by_weight = {}
    for w in COLOUR_WEIGHTS:
        pred = colour.fuse(probs, clp, w).argmax(1)
        by_weight[w] = {
            "accuracy": float(np.mean(pred == y)),
            "accuracy_per_source_field": source_balanced_accuracy(pred, y, groups),
        }
    return max(COLOUR_WEIGHTS, key=lambda w: (by_weight[w]["accuracy_per_source_field"], -w)), by_weight


@dataclasses.dataclass(frozen=True)
class Calibration:
    """What ``calibrate_flags`` chose on held-out predictions, and what it gives on them."""

    temperature: float
    class_bias: np.ndarray  # one offset per class, output order
    thresholds: dict  # "ood_distance", "min_confidence"
    flagged: np.ndarray  # held-out rows the thresholds flag
    probs: np.ndarray  # held-out probabilities after calibration (their argmax is the served label)


def calibrate_flags(probs, labels, dist, cfg: TrainConfig, log=print) -> Calibration:
    """Temperature and class offsets (``fit_calibration``, held-out NLL), then the "unidentified"
    thresholds for ``cfg.max_unidentified_val`` on the calibrated confidences."""
    temperature, bias = fit_calibration(probs, labels, cfg.class_bias)
    cal = ood.calibrate(probs, temperature, bias)
    thresholds = ood.choose_thresholds(dist, cal.max(1), cfg.max_unidentified_val)
    flagged = ood.flagged(dist, cal.max(1), thresholds)
    log(
        f"temperature {temperature:.3f}; class offsets {np.round(bias, 3).tolist()}; "
        f"thresholds {thresholds}; val flagged {flagged.mean():.2%}"
    )
    return Calibration(temperature, bias, thresholds, flagged, cal)
