"""Varied images that are not white-cell smears (package photos, noise, flat colours, text)."""

from __future__ import annotations

import numpy as np


def nonblood_images() -> dict[str, np.ndarray]:
    from PIL import Image, ImageDraw
    from skimage import data

    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}
    for name in [
        "chelsea",
        "coffee",
        "astronaut",
        "rocket",
        "hubble_deep_field",
        "immunohistochemistry",
        "retina",
        "colorwheel",
        "camera",
        "coins",
        "moon",
        "page",
        "text",
        "brick",
        "grass",
        "gravel",
        "clock",
        "cell",
    ]:
        a = getattr(data, name)()
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        out[name] = np.ascontiguousarray(a[..., :3])
    out["logo"] = np.asarray(Image.fromarray(data.logo()).convert("RGBA").convert("RGB"))
    out["uniform_noise"] = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    out["gaussian_noise"] = np.clip(rng.normal(128, 40, (240, 320, 3)), 0, 255).astype(np.uint8)
    for cname, rgb in {
        "white": (255, 255, 255),
        "black": (0, 0, 0),
        "grey": (128, 128, 128),
        "pink": (230, 180, 200),
        "red": (200, 30, 30),
        "blue": (40, 60, 200),
    }.items():
        out["flat_" + cname] = np.full((240, 320, 3), rgb, np.uint8)
    grad = np.linspace(0, 255, 320, dtype=np.float32)[None, :, None]
    out["gradient"] = np.broadcast_to(grad, (240, 320, 3)).astype(np.uint8).copy()
    im = Image.new("RGB", (320, 240), "white")
    d = ImageDraw.Draw(im)
    for i in range(8):
        d.text((10, 10 + 28 * i), f"HematoVision report line {i}: lorem ipsum", fill=(0, 0, 0))
    out["text_black"] = np.asarray(im)
    im = Image.new("RGB", (320, 240), (250, 250, 240))
    d = ImageDraw.Draw(im)
    for i in range(8):
        d.text((10, 10 + 28 * i), f"Invoice #{i}  total 42.00 EUR", fill=(30, 30, 160))
    out["text_blue"] = np.asarray(im)
    cb = (np.indices((240, 320)).sum(0) // 20) % 2
    out["checkerboard"] = np.repeat((cb * 255).astype(np.uint8)[..., None], 3, axis=2)
    return out
