"""Training views that span labs: zoom, offset, dihedral turns, stain (hue, saturation, gain,
gamma), grey-level, blur, noise and JPEG quality, cut from ``ml.cropcache`` crops."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

from ml.cropcache import CACHE_MARGIN


def _hue_matrix(turn: float) -> np.ndarray:
    """RGB rotation about the grey axis by ``turn`` of a full circle (a hue shift)."""
    a = 2 * np.pi * turn
    c, s = np.cos(a), np.sin(a)
    k = 1 / 3.0
    q = np.sqrt(k)
    return np.array(
        [
            [c + (1 - c) * k, k * (1 - c) - q * s, k * (1 - c) + q * s],
            [k * (1 - c) + q * s, c + k * (1 - c), k * (1 - c) - q * s],
            [k * (1 - c) - q * s, k * (1 - c) + q * s, c + k * (1 - c)],
        ],
        np.float32,
    )


def augment(crop: np.ndarray, rng: np.random.Generator, size: int, scale_jitter: float) -> np.ndarray:
    """A view that spans labs: zoom, offset, dihedral, hue/saturation/gamma/gain (stain), grey-level,
    blur, noise and JPEG quality."""
    n = crop.shape[0]
    side = int(round(n / CACHE_MARGIN * np.exp(rng.uniform(-scale_jitter, scale_jitter))))
    if side > n:
        # Zoomed out past the cached margin (scale_jitter > log(CACHE_MARGIN), 0.223): the smear
        # beyond it is mirrored in. Never reached at the shipped +-18 %, whose views are unchanged.
        pad = (side - n + 1) // 2
        crop = np.pad(np.asarray(crop), ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
        n = crop.shape[0]
    jit = int(0.06 * side)
    cx = int(np.clip((n - side) // 2 + rng.integers(-jit, jit + 1), 0, n - side))
    cy = int(np.clip((n - side) // 2 + rng.integers(-jit, jit + 1), 0, n - side))
    im = Image.fromarray(np.asarray(crop[cy : cy + side, cx : cx + side])).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    if rng.random() < 0.3:
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    a: np.ndarray = np.asarray(im, np.float32)  # float64 from the hue matrix on, as trained
    k = int(rng.integers(8))
    a = np.rot90(a, k % 4)
    if k >= 4:
        a = a[:, ::-1]
    a = a @ _hue_matrix(rng.uniform(-0.08, 0.08)).T
    grey = a.mean(2, keepdims=True)
    a = grey + (a - grey) * rng.uniform(0.6, 1.5)
    a = a * (1 + rng.normal(0, 0.07, 3)) + rng.normal(0, 8, 3)
    a = 255.0 * (np.clip(a, 0, 255) / 255.0) ** rng.uniform(0.7, 1.4)
    if rng.random() < 0.15:
        a = np.repeat(a.mean(2, keepdims=True), 3, 2)
    if rng.random() < 0.2:
        a = a + rng.normal(0, rng.uniform(2, 8), a.shape)
    a = np.clip(a, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        b = io.BytesIO()
        Image.fromarray(a).save(b, "JPEG", quality=int(rng.integers(40, 90)))
        a = np.asarray(Image.open(b).convert("RGB"))
    return np.ascontiguousarray(a)
