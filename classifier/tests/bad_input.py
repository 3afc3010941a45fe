"""Bad input catalogue (issue 7): hostile and odd uploads through every door. The helpers, sample
files and fixtures of the ``test_upload_*`` and ``test_batch_bad_input`` modules.

Each case goes through the portal upload (``POST /upload/``, both the HTML page
and the JSON answer its upload script asks for), the LIS API
(``POST /api/v1/classifications/``) and, for the file cases, the batch API
(``POST /api/v1/specimens/{accession}/batch/``). Bodies are built by hand here
(``multipart``) so file names and part headers reach the server exactly as a
hostile client would send them; Django's test client would clean them first.

Decisions asserted here:

- Rejected: empty, text renamed ``.jpg``, truncated JPEG, GIF (animated or not:
  415, not an accepted format), animated PNG (several frames), SVG with a
  script and HTML (415), decompression bombs and images over
  HEMATOVISION_MAX_PIXELS (413), files over the upload limit (413, counted
  without holding them in memory), images under 32 pixels a side (400).
- Accepted, stored re-encoded as plain pixels: PNG with alpha (composited onto
  white), 16-bit greyscale PNG (scaled to 8 bits), CMYK JPEG (converted to
  RGB), polyglots (a JPEG with a script in its comment and a ZIP appended, a
  PNG with a text chunk and HTML appended): the stored bytes hold no payload.
- File names: path-traversal and unicode names are accepted; the stored name is
  random under MEDIA_ROOT and ``original_filename`` is the base name only.
- Unknown form fields are ignored: they cannot set owner, label or state.
- A part's own Content-Type is not trusted: the content decides.
- Bodies that are not multipart: 415 from the API, "This field is required." from
  the portal; a broken multipart body is a 400, never a 500.
- Accession numbers (form field or batch URL) and external ids with path
  traversal, markup, NUL or over-long values: 400 before anything is stored.
- Batch API: bad files become failed items with the same reasons, and leave no
  staged copy; ZIP entries with absolute or ``..`` paths are never read.

After every rejection: no Classification, no Specimen, no file under MEDIA_ROOT.
"""

import html
import io
import zipfile
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from classifier.models import Classification, Specimen
from classifier.tests.factories import png_declaring

BOUNDARY = "----HematoVisionBoundary7f3a9c"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
UPLOAD_URL = "/upload/"
API_URL = "/api/v1/classifications/"
CHANNELS = ["portal", "portal_json", "api"]
RED = (200, 60, 60)
MB = 1024 * 1024


# ---------------------------------------------------------------------------- sample files


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@cache
def cell(size=(64, 48)) -> Image.Image:
    """A red, textured 'cell' (the fake predictor calls red EOSINOPHIL)."""
    rng = np.random.default_rng(7)
    pixels = np.empty((size[1], size[0], 3), dtype=np.uint8)
    pixels[...] = RED
    pixels = np.clip(pixels.astype(int) + rng.integers(-30, 30, pixels.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


@cache
def jpeg() -> bytes:
    return encode(cell(), "JPEG", quality=90)




def animated_gif() -> bytes:
    frames = [Image.new("RGB", (64, 64), colour) for colour in (RED, (60, 60, 200))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def animated_png() -> bytes:
    frames = [cell(), cell().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=100)


def png_with_alpha() -> bytes:
    """A red opaque disc on fully transparent pixels that hide pure blue underneath.

    Without compositing, dropping alpha would show the blue (MONOCYTE to the fake
    model); composited onto white the image is a red cell on a white slide.
    """
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[...] = (0, 0, 255, 0)
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 < 24**2
    rgba[disc] = (*RED, 255)
    rgba[disc & ((yy + xx) % 5 == 0)] = (150, 30, 30, 255)
    return encode(Image.fromarray(rgba, "RGBA"), "PNG")


def png_16bit_grey() -> bytes:
    ramp = np.linspace(1000, 64000, 64 * 48).reshape(48, 64).astype(np.uint16)
    return encode(Image.fromarray(ramp), "PNG")


def cmyk_jpeg() -> bytes:
    return encode(cell().convert("CMYK"), "JPEG", quality=92)


SCRIPT = b"<script>alert(document.cookie)</script>"
HTML_PAYLOAD = b"<html><body><script>fetch('/api/v1/auth/token/')</script></body></html>"


def zip_payload() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("payload/evil.sh", "rm -rf / # polyglot payload")
    return buffer.getvalue()


def polyglot_jpeg() -> bytes:
    """A valid JPEG with a script in its COM segment and a ZIP archive appended."""
    return encode(cell(), "JPEG", quality=90, comment=SCRIPT) + zip_payload()


def polyglot_png() -> bytes:
    """A valid PNG with a script in a tEXt chunk and an HTML page appended after IEND."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", SCRIPT.decode())
    return encode(cell(), "PNG", pnginfo=info) + HTML_PAYLOAD


SVG = (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
       b"<script>alert(1)</script><circle cx='32' cy='32' r='20' fill='red'/></svg>")


def truncated_jpeg() -> bytes:
    data = encode(cell((200, 150)), "JPEG", quality=90)
    return data[: len(data) // 2]


# ---------------------------------------------------------------------------- raw requests


def multipart(*parts) -> bytes:
    """A multipart/form-data body, byte for byte as given.

    ``(name, value)`` is a form field; ``(name, filename, data)`` or
    ``(name, filename, data, content_type)`` a file part. File names are sent
    raw (UTF-8), as browsers do, including slashes and dots.
    """
    out = io.BytesIO()
    for part in parts:
        out.write(f"--{BOUNDARY}\r\n".encode())
        if len(part) == 2:
            name, value = part
            out.write(f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
            out.write(value.encode() if isinstance(value, str) else value)
        else:
            name, filename, data, *rest = part
            content_type = rest[0] if rest else "application/octet-stream"
            out.write(f'Content-Disposition: form-data; name="{name}"; filename="'.encode())
            out.write(filename.replace('"', "%22").encode("utf-8"))
            out.write(f'"\r\nContent-Type: {content_type}\r\n\r\n'.encode())
            out.write(data)
        out.write(b"\r\n")
    out.write(f"--{BOUNDARY}--\r\n".encode())
    return out.getvalue()


def file_field(channel: str) -> str:
    return "image" if channel == "api" else "images"


def post(channel: str, clients, body: bytes, content_type: str = MULTIPART):
    if channel == "api":
        return clients.api.post(API_URL, data=body, content_type=content_type)
    headers = {"HTTP_ACCEPT": "application/json"} if channel == "portal_json" else {}
    return clients.portal.post(UPLOAD_URL, data=body, content_type=content_type, **headers)


def post_file(channel, clients, filename, data, *, content_type="application/octet-stream", extra=()):
    fields = [("accession", "ACC-BAD-1")]
    if channel == "api":
        fields.append(("external_id", "LIS-BAD-1"))
    body = multipart((file_field(channel), filename, data, content_type), *fields, *extra)
    return post(channel, clients, body)


def files_under(root: Path) -> list[str]:
    root = Path(root)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def assert_nothing_stored(settings, tmp_path):
    assert Classification.objects.count() == 0
    assert Specimen.objects.count() == 0
    assert files_under(settings.MEDIA_ROOT) == []
    assert files_under(tmp_path) == []  # nothing escaped MEDIA_ROOT either


class StartsWith(str):
    """Compares equal to any string that begins with it (for messages that quote Pillow)."""

    def __eq__(self, other):
        return isinstance(other, str) and other.startswith(str(self))

    __hash__ = str.__hash__


def assert_rejected(channel, response, *, status, code, message, filename):
    """The exact error answer of each door for a file the image checks refused."""
    assert response.status_code == status, response.content[:500]
    if channel == "api":
        assert response.json() == {"detail": message, "code": code}
    elif channel == "portal_json":
        assert response.json() == {"error": message, "filename": filename}
    else:
        page = response.content.decode()
        assert 'id="upload-errors"' in page
        assert "Nothing was stored" in page
        assert f"<strong>{html.escape(filename)}</strong>: {html.escape(str(message))}" in page


# ---------------------------------------------------------------------------- rejected files

NOT_READABLE = "{} is not an image that can be read (JPEG, PNG, TIFF, BMP or WebP)."
REJECTED = {
    "empty_file": ("empty.jpg", lambda: b"", 400, "empty_file", "The file is empty."),
    "text_renamed_jpg": ("notes.jpg", lambda: b"Patient: Doe, J.\nWBC 7.2\n" * 20, 415, "not_an_image",
                         NOT_READABLE.format("notes.jpg")),
    "pdf_renamed_png": ("scan.png", lambda: b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n%%EOF\n", 415,
                        "not_an_image", NOT_READABLE.format("scan.png")),
    "truncated_jpeg": ("cut.jpg", truncated_jpeg, 400, "corrupt_image",
                       StartsWith("The image could not be read completely (truncated or damaged): ")),
    "animated_gif": ("wave.gif", animated_gif, 415, "unsupported_format",
                     "GIF images are not accepted; upload JPEG, PNG, TIFF, BMP or WebP."),
    "animated_png": ("wave.png", animated_png, 400, "multi_frame_image",
                     "The file holds several frames (an animation or stack); upload one image per file."),
    "svg_with_script": ("cell.svg", lambda: SVG, 415, "unsupported_format",
                        "SVG and other text formats are not accepted; upload a raster image."),
    "svg_renamed_png": ("cell.png", lambda: b"\n  " + SVG, 415, "unsupported_format",
                        "SVG and other text formats are not accepted; upload a raster image."),
    "html_renamed_jpg": ("page.jpg", lambda: b"<!DOCTYPE html>" + HTML_PAYLOAD, 415, "unsupported_format",
                         "SVG and other text formats are not accepted; upload a raster image."),
    "decompression_bomb": ("bomb.png", lambda: png_declaring(100_000, 100_000), 413, "too_many_pixels",
                           "The image declares too many pixels (a decompression bomb?); "
                           "the limit is 40 megapixels."),
    "over_max_pixels": ("big.png", lambda: png_declaring(8000, 8000), 413, "too_many_pixels",
                        "The image is 8000x8000 pixels; the limit is 40 megapixels."),
    "tiny_1x1": ("dot.png", lambda: encode(Image.new("RGB", (1, 1), RED), "PNG"), 400, "image_too_small",
                 "The image is 1x1 pixels; a cell image needs at least 32 pixels a side."),
    "tiny_8x8": ("small.jpg", lambda: encode(cell((8, 8)), "JPEG"), 400, "image_too_small",
                 "The image is 8x8 pixels; a cell image needs at least 32 pixels a side."),
    "thin_4000x8": ("strip.png", lambda: encode(Image.new("L", (4000, 8), 90), "PNG"), 400, "image_too_small",
                    "The image is 4000x8 pixels; a cell image needs at least 32 pixels a side."),
    "text_sent_as_image_jpeg": ("photo.jpg", lambda: b"just text, whatever the header says\n", 415,
                                "not_an_image", NOT_READABLE.format("photo.jpg")),
    "script_in_file_name": ("<img src=x onerror=alert(1)>.jpg", lambda: b"not an image", 415, "not_an_image",
                            NOT_READABLE.format("<img src=x onerror=alert(1)>.jpg")),
}


ACCESSION_RULE = (
    "An accession number is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit."
)


# ---------------------------------------------------------------------------- accepted, stored safely


def stored_image(settings) -> tuple[Classification, bytes]:
    classification = Classification.objects.get()
    files = files_under(settings.MEDIA_ROOT)
    image_name = classification.image.name
    assert files == [image_name]  # the heat map is drawn when first opened, not at upload
    assert not classification.heatmap
    assert image_name.startswith("cells/")
    assert len(Path(image_name).stem) == 32
    return classification, (Path(settings.MEDIA_ROOT) / image_name).read_bytes()


def assert_accepted(channel, response):
    if channel == "api":
        assert response.status_code == 201, response.content[:500]
    elif channel == "portal_json":
        assert response.status_code == 201, response.content[:500]
        assert response.json()["errors"] == []
    else:
        assert response.status_code == 302, response.content[:500]
        assert response.url == f"/classifications/{Classification.objects.get().pk}/"


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# ---------------------------------------------------------------------------- missing and extra fields


NOT_A_FILE = "The submitted data was not a file. Check the encoding type on the form."


def assert_missing_file(channel, response, api_message="No file was submitted.", api_code="required"):
    assert response.status_code == 400, response.content[:500]
    if channel == "api":
        assert response.json() == {"detail": f"image: {api_message}", "code": api_code,
                                   "errors": {"image": [api_message]}}
    elif channel == "portal_json":
        assert response.json() == {"error": "This field is required.", "code": "invalid"}
    else:
        assert "This field is required." in response.content.decode()
