"""Check an uploaded file is a real, safe, single image before anything is stored."""

import hashlib
import io
import warnings
from dataclasses import dataclass

from django.conf import settings
from PIL import Image, ImageOps, UnidentifiedImageError

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


def check_size(size: int) -> None:
    """Refuse a file over the upload limit; callers can ask with the upload's size before reading it."""
    max_bytes = settings.HEMATOVISION_MAX_UPLOAD_BYTES
    if size > max_bytes:
        raise ImageRejected(
            "file_too_large", f"The file is {size / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB.", 413
        )


def check_image(data: bytes, *, filename: str = "") -> CheckedImage:
    """Decode ``data`` fully or raise ImageRejected with a message a user can act on."""
    max_pixels = settings.HEMATOVISION_MAX_PIXELS
    if not data:
        raise ImageRejected("empty_file", "The file is empty.")
    check_size(len(data))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            probe = Image.open(io.BytesIO(data))
            fmt = probe.format
            width, height = probe.size
            frames = getattr(probe, "n_frames", 1)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow refuses to even open images declaring far more pixels than ours allows.
        raise ImageRejected(
            "too_many_pixels",
            f"The image declares too many pixels (a decompression bomb?); "
            f"the limit is {max_pixels / 1e6:.0f} megapixels.",
            413,
        ) from exc
    except UnidentifiedImageError:
        return _reject_unreadable(data, filename)
    except Exception:  # noqa: BLE001 - any parser failure means "not an image we accept"
        return _reject_unreadable(data, filename)
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
    if frames > 1:
        raise ImageRejected(
            "multi_frame_image",
            "The file holds several frames (an animation or stack); upload one image per file.",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except Exception as exc:  # noqa: BLE001
        raise ImageRejected(
            "corrupt_image", f"The image could not be read completely (truncated or damaged): {exc}."
        ) from exc
    image = ImageOps.exif_transpose(image)
    content, extension = _reencode(image, fmt)
    return CheckedImage(
        content=content,
        extension=extension,
        sha256=hashlib.sha256(data).hexdigest(),
        width=image.width,
        height=image.height,
        image=image,
    )


def _reject_unreadable(data: bytes, filename: str):
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


def _reencode(image: Image.Image, fmt: str) -> tuple[bytes, str]:
    """Store pixels only: no EXIF, GPS or comments. JPEG keeps its quantisation tables."""
    buffer = io.BytesIO()
    if fmt == "JPEG" and image.mode in ("RGB", "L", "CMYK"):
        try:
            image.save(buffer, format="JPEG", quality="keep", subsampling="keep")
        except (ValueError, OSError):  # 'keep' needs the JPEG source; exif_transpose makes a copy
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="JPEG", quality=95)
        return buffer.getvalue(), ".jpg"
    if image.mode not in ("RGB", "RGBA", "L", "LA", "I;16", "I"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue(), ".png"
