"""Decoding what a caller sends (bytes, PIL images, numpy arrays) into the RGB pixels the model reads.

Used by serving (``ml.predictor``) and by anything that explains or frames its input the same way
(``ml.gradcam``). PIL is imported inside the functions so that ``import ml.images`` stays cheap.
"""

from __future__ import annotations

import io

import numpy as np

MAX_SIDE = 1280  # larger inputs are downscaled first (cells are located at the 320x240 field scale)
# Larger images are refused before they are decoded (a 100 MP JPEG took 2.5 GB to decode). The web
# portal's own limit (HEMATOVISION_MAX_PIXELS, 40 MP by default) is checked before this one.
MAX_PIXELS = 50_000_000


class ImageDecodeError(ValueError):
    """The input is not a decodable image."""


def _pil_to_rgb(im) -> np.ndarray:
    from PIL import Image, ImageOps  # PIL: imported when an image is decoded

    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001, S110  broken EXIF: keep the pixels as stored
        pass
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if mode == "F" and a.size and a.max() <= 1.0:
            a = a * 255.0
        elif a.size and a.max() > 255:
            a = a / (65535.0 if a.max() <= 65535 else a.max()) * 255.0
        a = np.clip(a, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return np.asarray(im.convert("RGB"))


def _check_pil(im) -> None:
    """One frame, at most MAX_PIXELS: checked on the header, before the pixels are decoded."""
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        raise ImageDecodeError(
            f"the file holds {frames} frames (animation or stack); send one image per file"
        )
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise ImageDecodeError(
            f"the image is {w}x{h} pixels ({w * h / 1e6:.0f} MP); the limit is {MAX_PIXELS / 1e6:.0f} MP"
        )


def _bytes_to_rgb(image) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # PIL: imported when an image is decoded

    try:
        im = Image.open(io.BytesIO(bytes(image)))
        _check_pil(im)
        im.load()
    except ImageDecodeError:
        raise
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
    ) as exc:
        raise ImageDecodeError(f"not a decodable image ({len(image)} bytes): {exc}") from exc
    return _pil_to_rgb(im)


def _array_to_rgb(image: np.ndarray) -> np.ndarray:
    a = image
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or min(a.shape[:2]) < 1:
        raise ImageDecodeError(f"array of shape {image.shape} is not an image")
    if a.dtype == np.uint16 or (a.dtype.kind in "iu" and a.size and a.max() > 255):
        a = a.astype(np.float64) / 257.0
    elif a.dtype.kind == "f" and a.size and a.max() <= 1.0:
        a = a * 255.0
    a = np.clip(a, 0, 255).astype(np.uint8)
    if a.shape[2] == 4:
        alpha = a[..., 3:4].astype(np.float32) / 255.0
        a = (a[..., :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8)
    elif a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return a


def to_rgb(image) -> np.ndarray:
    """Bytes / PIL image / numpy array -> HxWx3 uint8 RGB (EXIF orientation applied).

    Raises ImageDecodeError for what is not one decodable image: unreadable bytes, several frames,
    more than MAX_PIXELS pixels (refused before decoding).
    """
    from PIL import Image  # PIL: imported when an image is decoded

    if isinstance(image, (bytes, bytearray, memoryview)):
        rgb = _bytes_to_rgb(image)
    elif isinstance(image, Image.Image):
        _check_pil(image)
        rgb = _pil_to_rgb(image)
    elif isinstance(image, np.ndarray):
        rgb = _array_to_rgb(image)
    else:
        raise ImageDecodeError(f"unsupported image type {type(image).__name__}")
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ImageDecodeError("empty image")
    return np.ascontiguousarray(rgb)


def downscale(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """``(image, factor)``: images over ``MAX_SIDE`` on their longer side scaled down uniformly to it
    (``factor`` = input side / output side; 1.0 when the image is kept as it is)."""
    from PIL import Image  # PIL: imported when an image is decoded

    h, w = rgb.shape[:2]
    f = max(h, w) / MAX_SIDE
    if f <= 1:
        return rgb, 1.0
    size = (max(1, round(w / f)), max(1, round(h / f)))
    small = Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR)
    return np.asarray(small), f
