"""Colour of the cell: a small second opinion next to the CNN.

Eosinophils and neutrophils differ mostly in the colour of their cytoplasm
(orange-pink granules versus pale lilac), a cue the ImageNet-pretrained CNN
under-uses after fine-tuning on a few hundred cells. Twelve colour statistics
of the nucleus and the cytoplasm around it feed a logistic regression; its
log-probabilities are added to the CNN's with a weight chosen on validation
(``ml.train``), see MODEL_CARD.md. Pure numpy at serving time (about 1 ms).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ml.locate import NUCLEUS_THRESHOLD, centre_distance, crop_cell, nucleus_index

CROP_SIDE_REF = 144  # the features read an unmasked crop of this side (reference px) ...
CROP_SIZE = 192  # ... resized to this many pixels
CELL_RADIUS_REF = 39.0  # cytoplasm statistics: within this radius (reference px) of the crop centre
BACKGROUND_LEVEL = 200.0  # mean RGB above this: plasma/background, not cytoplasm
FEATURE_NAMES = [
    f"{part}_{ch}" for part in ("cytoplasm", "nucleus") for ch in ("r", "g", "b", "r_minus_b", "r_minus_g")
] + ["nucleus_fraction", "cytoplasm_fraction"]


def colour_crop(rgb: np.ndarray, box) -> np.ndarray:
    """The unmasked crop the features read (``rgb`` at the reference scale, ``box`` from the locator)."""
    return crop_cell(rgb, box=box, side=CROP_SIDE_REF, out_size=CROP_SIZE)[0]


def reads_crop(crop_side: float, crop_size: int, mask_radius: float | None) -> bool:
    """True when a model's own crop is exactly the one the colour features read (no second crop)."""
    return float(crop_side) == CROP_SIDE_REF and crop_size == CROP_SIZE and not mask_radius


def colour_features(crops: np.ndarray, crop_side: float = CROP_SIDE_REF) -> np.ndarray:
    """(N, 12) float32 colour statistics of uint8 crops (N, S, S, 3) covering ``crop_side`` ref px.

    Cytoplasm: pixels within ``CELL_RADIUS_REF`` of the centre that are neither nucleus-purple nor
    pale background; nucleus: every nucleus-purple pixel of the crop (lobes and large nuclei reach
    past the cytoplasm disk; this was better on validation than a disk, see ml/EXPERIMENTS.md).
    """
    crops = np.asarray(crops)
    disk = centre_distance(crops.shape[1]) * float(crop_side) < CELL_RADIUS_REF  # reference px
    out = np.zeros((len(crops), len(FEATURE_NAMES)), np.float32)
    for i, crop in enumerate(crops):
        c = crop.astype(np.float32)
        r, g, b = c[..., 0], c[..., 1], c[..., 2]
        nucleus = nucleus_index(c) > NUCLEUS_THRESHOLD
        cytoplasm = disk & ~nucleus & ~(c.mean(axis=2) > BACKGROUND_LEVEL)
        f = []
        for m in (cytoplasm, nucleus):
            w = m.sum() + 1.0
            f += [(ch * m).sum() / w for ch in (r, g, b, r - b, r - g)]
        out[i] = f + [nucleus.sum() / disk.sum(), cytoplasm.sum() / disk.sum()]
    return out


def fit(features: np.ndarray, labels: np.ndarray, n_classes: int, c: float = 0.1, seed: int = 0) -> dict:
    """Standardise + multinomial logistic regression; returns plain arrays (saved with ``save``)."""
    from sklearn.linear_model import LogisticRegression

    mean = features.mean(0)
    scale = features.std(0) + 1e-6
    clf = LogisticRegression(C=c, max_iter=5000, random_state=seed)
    clf.fit((features - mean) / scale, labels)
    if list(clf.classes_) != list(range(n_classes)):
        raise ValueError(f"colour model needs every class in training, got {clf.classes_}")
    return {"mean": mean, "scale": scale, "coef": clf.coef_, "intercept": clf.intercept_}


def log_probs(model: dict, features: np.ndarray) -> np.ndarray:
    """(N, C) log-probabilities. Element-wise products summed in a fixed order (no BLAS), so an
    image gets bit-identical results whether it is predicted alone or in a batch."""
    x = (np.asarray(features, np.float64) - model["mean"]) / model["scale"]
    z = (x[:, :, None] * model["coef"].T[None]).sum(axis=1) + model["intercept"]
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def fuse(cnn_probs: np.ndarray, colour_log_probs: np.ndarray | None, weight: float) -> np.ndarray:
    """Probabilities proportional to p_cnn * p_colour ** weight (weight 0: the CNN alone)."""
    z = np.log(np.clip(cnn_probs, 1e-12, 1.0))
    if colour_log_probs is not None and weight:
        z = z + weight * colour_log_probs
    z = z - z.max(1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(1, keepdims=True)


def save(model: dict, path: str | Path) -> None:
    arrays: dict[str, Any] = {k: np.asarray(v, np.float64) for k, v in model.items()}
    np.savez(path, **arrays)


def load(path: str | Path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in ("mean", "scale", "coef", "intercept")}
