"""Dihedral test-time augmentation: the views a model's outputs are averaged over, the same at training
time (``tta_predict``: validation, calibration, cross-validation) and in serving (``ml.predictor``)."""

from __future__ import annotations

import numpy as np

BATCH = 32  # images per call


def dihedral_views(n: int) -> list[int]:
    """The ``n`` dihedral views (1, 2, 4 or 8) as k: k quarter turns counter-clockwise, a flip for k >= 4."""
    return {1: [0], 2: [0, 4], 4: [0, 1, 2, 3], 8: list(range(8))}[n]


def tta_predict(fn, crops: np.ndarray, views: int, batch: int = BATCH) -> tuple[np.ndarray, np.ndarray]:
    """Average ``fn(x) -> (features, probs)`` over dihedral views of uint8 crops (N,S,S,3)."""
    import tensorflow as tf  # TensorFlow: imported when a model runs (``import ml.tta`` stays cheap)

    feats, probs = [], []
    ks = dihedral_views(views)
    for i in range(0, len(crops), batch):
        x = tf.convert_to_tensor(np.asarray(crops[i : i + batch], dtype=np.float32))
        fs, ps = 0.0, 0.0
        for k in ks:
            v = tf.image.rot90(x, k % 4)
            if k >= 4:
                v = tf.image.flip_left_right(v)
            f, p = fn(v)
            fs, ps = fs + f.numpy(), ps + p.numpy()
        feats.append(fs / len(ks))
        probs.append(ps / len(ks))
    return np.concatenate(feats), np.concatenate(probs)
