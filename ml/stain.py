"""Stain normalisation inside the network: Reinhard's colour transfer (Reinhard et al. 2001, "Color
transfer between images") as a Keras layer, so training, calibration and serving apply the same
transform with no step to forget.

Each image is moved to the decorrelated l-alpha-beta space (RGB -> LMS cone space -> log10 -> an
orthogonal rotation), its three channels are standardised over its own pixels and given the
reference means and spreads, and it goes back to RGB. The reference is the mean per-image
statistics of the training crops (``reference``), stored in the layer's config and so in the bundle.

An experiment of issue 15 (leave one lab out): whether matching each image's colour statistics to
one reference lets one lab's model read another lab's cells. ``FitConfig.stain`` turns it on.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

# RGB -> LMS and back (Reinhard et al. 2001, equations 1 and 9).
_RGB2LMS = np.array(
    [[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]], np.float32
)
_LMS2RGB = np.array(
    [[4.4679, -3.5873, 0.1193], [-1.2186, 2.3809, -0.1624], [0.0497, -0.2439, 1.2045]], np.float32
)
# log LMS -> l-alpha-beta (equation 4) and back (equation 6).
_LOG2LAB = (np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)]) @ np.array(
    [[1, 1, 1], [1, 1, -2], [1, -1, 0]]
)).astype(np.float32)
_LAB2LOG = np.linalg.inv(_LOG2LAB).astype(np.float32)
_DARK = 16.0  # pixels darker than this in every channel are padding (black corners of rotated
# copies, image borders), not specimen: left out of the statistics
_EPS = 1e-6  # the beta channel of a smear spreads only ~0.004


def to_lab(rgb: np.ndarray) -> np.ndarray:
    """l-alpha-beta of RGB values in 0..255 (any leading shape, channels last)."""
    lms = np.maximum(np.asarray(rgb, np.float32), 1.0) @ _RGB2LMS.T
    return np.log10(np.maximum(lms, 1.0)) @ _LOG2LAB.T


def image_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image means and standard deviations of the l-alpha-beta channels over the specimen's
    pixels (not padding), shape (n, 3) each."""
    images = np.asarray(images, np.float32)
    lab = to_lab(images)
    w = (images.max(-1, keepdims=True) > _DARK).astype(np.float32)
    n = np.maximum(w.sum(axis=(1, 2)), 1.0)
    mean = (w * lab).sum(axis=(1, 2)) / n
    var = (w * (lab - mean[:, None, None]) ** 2).sum(axis=(1, 2)) / n
    return mean, np.sqrt(var)


def reference(images: np.ndarray) -> dict:
    """The reference statistics: the mean over ``images`` (n, h, w, 3) of their per-image statistics."""
    mean, std = image_stats(images)
    return {"mean": [float(v) for v in mean.mean(0)], "std": [float(v) for v in std.mean(0)]}


@keras.saving.register_keras_serializable(package="hematovision")
class ReinhardStain(keras.layers.Layer):
    """RGB (0..255 floats) -> the same image with the reference's l-alpha-beta means and spreads."""

    def __init__(self, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]

    def call(self, x):
        lms = ops.matmul(ops.maximum(x, 1.0), ops.convert_to_tensor(_RGB2LMS.T))
        lab = ops.matmul(ops.log(ops.maximum(lms, 1.0)) / np.log(10.0), ops.convert_to_tensor(_LOG2LAB.T))
        w = ops.cast(ops.max(x, axis=-1, keepdims=True) > _DARK, lab.dtype)
        n = ops.maximum(ops.sum(w, axis=(1, 2), keepdims=True), 1.0)
        m = ops.sum(w * lab, axis=(1, 2), keepdims=True) / n
        s = ops.sqrt(ops.sum(w * ops.square(lab - m), axis=(1, 2), keepdims=True) / n)
        lab = (lab - m) / (s + _EPS) * np.array(self.std, np.float32) + np.array(self.mean, np.float32)
        lms = ops.power(10.0, ops.matmul(lab, ops.convert_to_tensor(_LAB2LOG.T)))
        return ops.clip(ops.matmul(lms, ops.convert_to_tensor(_LMS2RGB.T)), 0.0, 255.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return super().get_config() | {"mean": self.mean, "std": self.std}
