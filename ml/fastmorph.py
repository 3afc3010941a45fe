"""Exact, faster binary morphology with disk structuring elements (used by ``ml.locate``).

``binary_closing_disk(mask, r)`` equals ``scipy.ndimage.binary_closing(mask,
structure=disk(r), iterations=1)`` bit for bit (border value 0), about 3x faster:
a disk dilation is the OR, over rows dy, of a 1-D horizontal max filter of
half-width isqrt(r^2 - dy^2) shifted by dy (``ml/tests/test_fast_inference.py``
checks equality on random masks).

``dilate_cross``, ``erode_cross`` (k iterations of the 4-neighbour cross) and ``fill_holes`` equal
their ``scipy.ndimage`` counterparts bit for bit as well (used by ``ml.normalize``, whose golden
outputs ``ml/tests/test_normalize_speed_identity.py`` checks).
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


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``ndimage.binary_fill_holes(mask)``, bit for bit: off-mask components (cross connectivity)
    that do not touch the image border are filled."""
    from scipy import ndimage as ndi

    lab, n = ndi.label(~mask)
    outer = np.zeros(n + 1, bool)
    for edge in (lab[0], lab[-1], lab[:, 0], lab[:, -1]):
        outer[edge] = True
    outer[0] = False
    return ~outer[lab]


def dilate_cross(mask: np.ndarray, k: int) -> np.ndarray:
    """``ndimage.binary_dilation(mask, iterations=k)`` (cross element), bit for bit: k shifted ORs."""
    m = np.asarray(mask, bool)
    for _ in range(k):
        out = m.copy()
        out[1:] |= m[:-1]
        out[:-1] |= m[1:]
        out[:, 1:] |= m[:, :-1]
        out[:, :-1] |= m[:, 1:]
        m = out
    return m


def erode_cross(mask: np.ndarray, k: int) -> np.ndarray:
    """``ndimage.binary_erosion(mask, iterations=k)`` (cross element, border 0), bit for bit."""
    m = np.asarray(mask, bool)
    for _ in range(k):
        out = m.copy()
        out[1:] &= m[:-1]
        out[:-1] &= m[1:]
        out[:, 1:] &= m[:, :-1]
        out[:, :-1] &= m[:, 1:]
        out[0] = out[-1] = False
        out[:, 0] = out[:, -1] = False
        m = out
    return m
