"""Exact, faster binary morphology with disk structuring elements (used by ``ml.locate``).

``binary_closing_disk(mask, r)`` equals ``scipy.ndimage.binary_closing(mask,
structure=disk(r), iterations=1)`` bit for bit (border value 0), about 3x faster:
a disk dilation is the OR, over rows dy, of a 1-D horizontal max filter of
half-width isqrt(r^2 - dy^2) shifted by dy (``ml/tests/test_fast_inference.py``
checks equality on random masks).
"""

from __future__ import annotations

import math

import numpy as np


def dilate_disk(mask: np.ndarray, r: int, outside: bool = False) -> np.ndarray:
    """Dilation of a 2-D bool mask by the disk x^2 + y^2 <= r^2 (pixels outside the array: ``outside``)."""
    h, w = mask.shape
    p = np.pad(np.asarray(mask, bool), r, constant_values=bool(outside))
    width = w + 2 * r
    rows = [p]  # rows[k]: horizontal dilation of p by half-width k (valid away from the padded edge)
    for k in range(1, r + 1):
        cur = rows[-1].copy()
        cur[:, k:] |= p[:, : width - k]
        cur[:, : width - k] |= p[:, k:]
        rows.append(cur)
    out = np.zeros((h, w), bool)
    for dy in range(-r, r + 1):
        out |= rows[math.isqrt(r * r - dy * dy)][r + dy : r + dy + h, r : r + w]
    return out


def binary_opening_disk(mask: np.ndarray, r: int) -> np.ndarray:
    """``scipy.ndimage.binary_opening(mask, structure=disk(r))`` (erosion with border 0, then dilation)."""
    mask = np.asarray(mask, bool)
    return dilate_disk(~dilate_disk(~mask, r, True), r, False)


def binary_closing_disk(mask: np.ndarray, r: int) -> np.ndarray:
    """``scipy.ndimage.binary_closing(mask, structure=disk(r))`` (dilation, then erosion with border 0)."""
    mask = np.asarray(mask, bool)
    if mask.ndim != 2 or r < 1:
        from scipy import ndimage

        y, x = np.ogrid[-r : r + 1, -r : r + 1]
        return ndimage.binary_closing(mask, structure=x * x + y * y <= r * r, iterations=1)
    return ~dilate_disk(~dilate_disk(mask, r, False), r, True)
