"""Check an uploaded file is a real, safe, single image before anything is stored.

What is stored (and what the model sees) is the decoded pixels only, re-encoded:
8-bit RGB or greyscale, alpha composited onto white, 16/32-bit and float images
scaled to 8 bits, CMYK/YCbCr/LAB converted to RGB. No EXIF, GPS, comments, ICC
profiles, text chunks or bytes appended after the image survive, so a polyglot
file (an image with an HTML, script or ZIP payload) is stored as a plain image.
"""

import hashlib
import io
import warnings
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
from django.conf import settings
from PIL import Image, ImageMode, ImageOps, UnidentifiedImageError

ALLOWED_FORMATS = {"JPEG", "PNG", "TIFF", "BMP", "WEBP"}
MIN_SIDE = 32


class ImageRejected(Exception):
    """A file that is not accepted; ``message`` is for the user, ``code`` for clients."""

    def __init__(self, code: str, message: str, http_status: int = 400):
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status


@dataclass(frozen=True)
class CheckedImage:
    """A decoded upload, re-encoded without metadata, ready to store."""

    content: bytes  # metadata-free bytes to store
    extension: str  # ".jpg" or ".png"
    sha256: str  # of the uploaded bytes
    width: int
    height: int
    image: Image.Image  # decoded, orientation applied


def human_size(n: float) -> str:
    """Bytes for people, in binary units: 300 bytes, 12.5 KB, 20.0 MB."""
    if n < 1024:
        return f"{n:.0f} bytes"
    for unit in ("KB", "MB", "GB"):
        n /= 1024
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def too_large_message(size: int) -> str:
    limit = settings.HEMATOVISION_MAX_UPLOAD_BYTES
    return f"The file is {human_size(size)}; the limit is {human_size(limit)}."


def check_size(size: int) -> None:
    """Refuse a file over the upload limit; callers can ask with the upload's size before reading it."""
    if size > settings.HEMATOVISION_MAX_UPLOAD_BYTES:
        raise ImageRejected("file_too_large", too_large_message(size), 413)


def decoded_bytes(mode: str, width: int, height: int) -> int:
    """What decoding costs, from the header alone: width x height x bands x bytes per sample.

    Pillow keeps a 3-band image (RGB, YCbCr, LAB) in 4 bytes a pixel, so it counts 4 bands.
    """
    try:
        descriptor = ImageMode.getmode(mode)
        bands, sample = len(descriptor.bands), int(descriptor.typestr[-1])
    except (KeyError, ValueError):  # a mode Pillow cannot describe: assume the widest
        bands, sample = 4, 4
    return width * height * (4 if bands == 3 else bands) * sample


def max_decoded_bytes() -> int:
    return int(settings.HEMATOVISION_MAX_DECODED_MB * 1024 * 1024)


@dataclass(frozen=True)
class Probe:
    """What an image's header says, before any pixel is decoded."""

    format: str
    mode: str
    width: int
    height: int
    decoded_bytes: int


def _open_header(data: bytes, filename: str) -> Image.Image:
    """The image with only its header read (no pixel decoded); refused when Pillow cannot read it or
    it declares far more pixels than ours allows."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow refuses to even open images declaring far more pixels than ours allows.
        raise ImageRejected(
            "too_many_pixels",
            f"The image declares too many pixels (a decompression bomb?); "
            f"the limit is {settings.HEMATOVISION_MAX_PIXELS / 1e6:.0f} megapixels.",
            413,
        ) from exc
    except UnidentifiedImageError:
        _reject_unreadable(data, filename)
    except Exception:  # noqa: BLE001 - any parser failure means "not an image we accept"
        _reject_unreadable(data, filename)


def _check_header(fmt: str | None, mode: str, width: int, height: int) -> int:
    """Refuse a format not accepted, too many pixels, too short a side or too costly a decode; what
    decoding will cost (bytes) otherwise."""
    max_pixels = settings.HEMATOVISION_MAX_PIXELS
    if fmt not in ALLOWED_FORMATS:
        raise ImageRejected(
            "unsupported_format",
            f"{fmt} images are not accepted; upload JPEG, PNG, TIFF, BMP or WebP.",
            415,
        )
    if width * height > max_pixels:
        raise ImageRejected(
            "too_many_pixels",
            f"The image is {width}x{height} pixels; the limit is {max_pixels / 1e6:.0f} megapixels.",
            413,
        )
    if min(width, height) < MIN_SIDE:
        raise ImageRejected(
            "image_too_small",
            f"The image is {width}x{height} pixels; a cell image needs at least {MIN_SIDE} pixels a side.",
        )
    cost, budget = decoded_bytes(mode, width, height), max_decoded_bytes()
    if cost > budget:
        raise ImageRejected(
            "image_too_large",
            f"The image is {width}x{height} pixels in {mode} mode and would take {human_size(cost)} of "
            f"memory to decode; the limit is {human_size(budget)}. Send a smaller or 8-bit image.",
            413,
        )
    return cost


def _refuse_several_frames(probe: Image.Image) -> None:
    """Refuse an animation or stack; called after the format check, so that only formats we accept
    are walked frame by frame."""
    try:
        frames = getattr(probe, "n_frames", 1)
    except Exception:  # noqa: BLE001 - a broken frame chain is a damaged file
        frames = 1  # the full decode reports it
    if frames > 1:
        raise ImageRejected(
            "multi_frame_image",
            "The file holds several frames (an animation or stack); upload one image per file.",
        )


def probe_image(data: bytes, *, filename: str = "") -> Probe:
    """Read only the header: refuse what is not an accepted single image, or what would cost too
    much memory to decode (pixels, or width x height x bands x bytes per sample), before decoding."""
    if not data:
        raise ImageRejected("empty_file", "The file is empty.")
    check_size(len(data))
    probe = _open_header(data, filename)
    fmt, mode = probe.format, probe.mode
    width, height = probe.size
    cost = _check_header(fmt, mode, width, height)
    _refuse_several_frames(probe)
    return Probe(fmt, mode, width, height, cost)


def check_image(data: bytes, *, filename: str = "") -> CheckedImage:
    """Decode ``data`` fully or raise ImageRejected with a message a user can act on.

    The header is checked first (``probe_image``): nothing is decoded that would cost more than
    HEMATOVISION_MAX_DECODED_MB. Callers hold a ``limits.image_work()`` slot around this and the
    model call, so a process decodes only a few images at a time.
    """
    fmt = probe_image(data, filename=filename).format
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except Exception as exc:  # noqa: BLE001
        raise ImageRejected(
            "corrupt_image", f"The image could not be read completely (truncated or damaged): {exc}."
        ) from exc
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001, S110 - a broken EXIF block: keep the pixels as stored
        pass
    source_mode = image.mode
    image = _normalise(image)
    content, extension = _reencode(image, fmt, source_mode)
    return CheckedImage(
        content=content,
        extension=extension,
        sha256=hashlib.sha256(data).hexdigest(),
        width=image.width,
        height=image.height,
        image=image,
    )


def _reject_unreadable(data: bytes, filename: str) -> NoReturn:
    head = data[:512].lstrip().lower()
    if head.startswith((b"<svg", b"<?xml", b"<!doctype", b"<html")):
        raise ImageRejected(
            "unsupported_format", "SVG and other text formats are not accepted; upload a raster image.", 415
        )
    raise ImageRejected(
        "not_an_image",
        f"{filename or 'The file'} is not an image that can be read (JPEG, PNG, TIFF, BMP or WebP).",
        415,
    )


def _normalise(image: Image.Image) -> Image.Image:
    """8-bit ``RGB`` or ``L`` pixels with no metadata: what is stored and what the model sees."""
    mode = image.mode
    if mode == "1":
        image = image.convert("L")
    elif mode.startswith("I") or mode == "F":  # 16/32-bit integer or float greyscale
        # One float32 working copy, scaled in place (float64 and temporaries cost 3-4x more).
        pixels = np.array(image, dtype=np.float32)
        np.nan_to_num(pixels, copy=False)
        low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
        if mode == "F" and 0.0 <= low and high <= 1.0:
            pixels *= 255.0
        elif high > 255:
            pixels *= 255.0 / (65535.0 if high <= 65535 else high)
        np.clip(pixels, 0, 255, out=pixels)
        image = Image.fromarray(pixels.astype(np.uint8), "L")
        del pixels
    elif image.has_transparency_data:
        # Composite onto white: transparent pixels show the slide background, and whatever
        # colour (or hidden data) they held underneath is not kept.
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    elif mode not in ("RGB", "L"):
        try:
            image = image.convert("RGB")
        except (ValueError, OSError) as exc:
            raise ImageRejected(
                "unsupported_colour_mode",
                f"Images in the {mode} colour mode are not accepted; save the image as RGB or greyscale.",
                415,
            ) from exc
    image.info = {}  # no comment, ICC profile, EXIF or text chunk is written back out
    return image


def _reencode(image: Image.Image, fmt: str, source_mode: str) -> tuple[bytes, str]:
    """Store pixels only: no EXIF, GPS, comments or appended bytes. JPEG keeps its quantisation tables."""
    buffer = io.BytesIO()
    if fmt == "JPEG":
        if source_mode in ("RGB", "L"):
            try:
                image.save(buffer, format="JPEG", quality="keep", subsampling="keep")
                return buffer.getvalue(), ".jpg"
            except (ValueError, OSError):  # 'keep' needs the JPEG source; exif_transpose makes a copy
                buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=95)
        return buffer.getvalue(), ".jpg"
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue(), ".png"
