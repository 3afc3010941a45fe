"""Bad input catalogue (issue 7): hostile and odd uploads through every door.

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
import json
import tracemalloc
import zipfile
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from django.core.cache import cache as django_cache
from PIL import Image
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from classifier.models import BatchItem, BatchJob, Classification, ReviewState, Specimen
from classifier.tests.factories import png_declaring

pytestmark = pytest.mark.django_db

BOUNDARY = "----HematoVisionBoundary7f3a9c"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
UPLOAD_URL = "/upload/"
API_URL = "/api/v1/classifications/"
CHANNELS = ["portal", "portal_json", "api"]
RED = (200, 60, 60)
MB = 1024 * 1024


# ---------------------------------------------------------------------------- sample files


def _save(image: Image.Image, fmt: str, **options) -> bytes:
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
    return _save(cell(), "JPEG", quality=90)




def animated_gif() -> bytes:
    frames = [Image.new("RGB", (64, 64), colour) for colour in (RED, (60, 60, 200))]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def animated_png() -> bytes:
    frames = [cell(), cell().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return _save(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=100)


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
    return _save(Image.fromarray(rgba, "RGBA"), "PNG")


def png_16bit_grey() -> bytes:
    ramp = np.linspace(1000, 64000, 64 * 48).reshape(48, 64).astype(np.uint16)
    return _save(Image.fromarray(ramp), "PNG")


def cmyk_jpeg() -> bytes:
    return _save(cell().convert("CMYK"), "JPEG", quality=92)


SCRIPT = b"<script>alert(document.cookie)</script>"
HTML_PAYLOAD = b"<html><body><script>fetch('/api/v1/auth/token/')</script></body></html>"


def zip_payload() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("payload/evil.sh", "rm -rf / # polyglot payload")
    return buffer.getvalue()


def polyglot_jpeg() -> bytes:
    """A valid JPEG with a script in its COM segment and a ZIP archive appended."""
    return _save(cell(), "JPEG", quality=90, comment=SCRIPT) + zip_payload()


def polyglot_png() -> bytes:
    """A valid PNG with a script in a tEXt chunk and an HTML page appended after IEND."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", SCRIPT.decode())
    return _save(cell(), "PNG", pnginfo=info) + HTML_PAYLOAD


SVG = (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
       b"<script>alert(1)</script><circle cx='32' cy='32' r='20' fill='red'/></svg>")


def truncated_jpeg() -> bytes:
    data = _save(cell((200, 150)), "JPEG", quality=90)
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


class Clients:
    def __init__(self, portal, api):
        self.portal, self.api = portal, api


@pytest.fixture(autouse=True)
def _fast_and_fresh(settings):
    """Cheap users (no PBKDF2 rounds) and throttle counters that start at zero."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.HEMATOVISION_JOBS_IN_THREAD = False
    django_cache.clear()
    yield
    django_cache.clear()


@pytest.fixture
def clients(tech_client, user):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return Clients(tech_client, api)


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
    "tiny_1x1": ("dot.png", lambda: _save(Image.new("RGB", (1, 1), RED), "PNG"), 400, "image_too_small",
                 "The image is 1x1 pixels; a cell image needs at least 32 pixels a side."),
    "tiny_8x8": ("small.jpg", lambda: _save(cell((8, 8)), "JPEG"), 400, "image_too_small",
                 "The image is 8x8 pixels; a cell image needs at least 32 pixels a side."),
    "thin_4000x8": ("strip.png", lambda: _save(Image.new("L", (4000, 8), 90), "PNG"), 400, "image_too_small",
                    "The image is 4000x8 pixels; a cell image needs at least 32 pixels a side."),
    "text_sent_as_image_jpeg": ("photo.jpg", lambda: b"just text, whatever the header says\n", 415,
                                "not_an_image", NOT_READABLE.format("photo.jpg")),
    "script_in_file_name": ("<img src=x onerror=alert(1)>.jpg", lambda: b"not an image", 415, "not_an_image",
                            NOT_READABLE.format("<img src=x onerror=alert(1)>.jpg")),
}


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("case", list(REJECTED))
def test_rejected_file_gets_a_clear_4xx_and_leaves_nothing(clients, settings, tmp_path, case, channel):
    filename, make, status, code, message = REJECTED[case]
    data = make()
    assert len(data) < 100_000  # every hostile file here is small, bombs included
    content_type = "image/jpeg" if case == "text_sent_as_image_jpeg" else "application/octet-stream"
    response = post_file(channel, clients, filename, data, content_type=content_type)
    assert_rejected(channel, response, status=status, code=code, message=message, filename=filename)
    if channel == "portal":
        assert "<img src=x" not in response.content.decode()  # names are escaped in the page
    assert_nothing_stored(settings, tmp_path)


def test_pixel_limit_follows_the_setting(clients, settings, tmp_path):
    settings.HEMATOVISION_MAX_PIXELS = 3000
    response = post_file("api", clients, "cell.jpg", jpeg())  # 64x48 = 3072 pixels
    assert response.status_code == 413
    assert response.json() == {
        "detail": "The image is 64x48 pixels; the limit is 0 megapixels.", "code": "too_many_pixels"
    }
    assert_nothing_stored(settings, tmp_path)


# ---------------------------------------------------------------------------- a 100 MB upload


class StreamedUpload(io.RawIOBase):
    """A multipart body whose file part is ``size`` bytes made on the fly, never held whole.

    It notes the largest single read, and how many bytes the server had spooled to
    ``spool_dir`` (FILE_UPLOAD_TEMP_DIR) when it reached the end of the body.
    """

    def __init__(self, field: str, filename: str, size: int, fields=(), spool_dir: Path | None = None):
        self.spool_dir = spool_dir
        self.spooled_at_end = None
        self.head = b"".join(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{n}"\r\n\r\n{v}\r\n'.encode()
            for n, v in fields
        ) + (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
             f"Content-Type: image/jpeg\r\n\r\n").encode() + jpeg()
        self.tail = f"\r\n--{BOUNDARY}--\r\n".encode()
        self.body_size = size - len(jpeg())
        self.length = len(self.head) + self.body_size + len(self.tail)
        self.position = 0
        self.largest_read = 0
        self.filler = b"\x00" * (256 * 1024)

    def readable(self):
        return True

    def read(self, n=-1):
        if n is None or n < 0:
            n = self.length - self.position
        n = min(n, self.length - self.position, len(self.filler))
        self.largest_read = max(self.largest_read, n)
        out = bytearray()
        while len(out) < n:
            pos = self.position
            if pos < len(self.head):
                piece = self.head[pos: pos + n - len(out)]
            elif pos < len(self.head) + self.body_size:
                piece = self.filler[: min(n - len(out), len(self.head) + self.body_size - pos)]
            else:
                if self.spooled_at_end is None and self.spool_dir is not None:
                    self.spooled_at_end = sum(p.stat().st_size for p in self.spool_dir.iterdir())
                start = pos - len(self.head) - self.body_size
                piece = self.tail[start: start + n - len(out)]
            out += piece
            self.position += len(piece)
        return bytes(out)

    def readline(self, size=-1):  # Django's LimitedStream may ask; the body has no short lines to find
        return self.read(size if size and size > 0 else 64 * 1024)


def post_streamed(channel, clients, body: StreamedUpload, path=None):
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path or (API_URL if channel == "api" else UPLOAD_URL),
        "CONTENT_TYPE": MULTIPART,
        "CONTENT_LENGTH": str(body.length),
        "wsgi.input": body,
    }
    if channel == "portal_json":
        environ["HTTP_ACCEPT"] = "application/json"
    client = clients.api if channel in ("api", "batch") else clients.portal
    return client.request(**environ)


def warm_up(clients):
    """Load every URL module and view once, so the memory traced afterwards is the upload's own."""
    clients.portal.get(UPLOAD_URL)
    clients.api.get(API_URL)


@pytest.fixture
def spool_dir(settings, tmp_path):
    """Where Django spools large uploads during the request (emptied when it ends)."""
    folder = tmp_path / "upload-spool"
    folder.mkdir()
    settings.FILE_UPLOAD_TEMP_DIR = str(folder)
    return folder


def assert_bounded_spool(body: StreamedUpload, settings):
    """The part over the limit was never written anywhere (classifier.uploads.UploadLimitHandler)."""
    assert body.spooled_at_end is not None
    assert body.spooled_at_end <= settings.HEMATOVISION_MAX_UPLOAD_BYTES + 64 * 1024


@pytest.mark.parametrize("channel", CHANNELS)
def test_100_mb_upload_is_refused_with_413_without_holding_it_in_memory(
    clients, settings, tmp_path, spool_dir, channel
):
    size = 100 * MB
    body = StreamedUpload(file_field(channel), "huge.jpg", size, fields=[("accession", "ACC-BIG-1")],
                          spool_dir=spool_dir)
    warm_up(clients)
    tracemalloc.start()
    try:
        response = post_streamed(channel, clients, body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = "The file is 100.0 MB; the limit is 20.0 MB."
    assert_rejected(channel, response, status=413, code="file_too_large", message=message,
                    filename="huge.jpg")
    assert peak < 16 * MB, f"peak Python memory {peak / MB:.1f} MB while refusing a 100 MB upload"
    assert body.largest_read <= 256 * 1024  # read in chunks, never in one gulp
    assert_bounded_spool(body, settings)
    assert_nothing_stored(settings, tmp_path)


def test_100_mb_file_in_a_batch_is_refused_up_front(
    clients, settings, tmp_path, spool_dir, django_capture_on_commit_callbacks
):
    body = StreamedUpload("images", "huge.jpg", 100 * MB, spool_dir=spool_dir)
    warm_up(clients)
    tracemalloc.start()
    try:
        with django_capture_on_commit_callbacks(execute=True):
            response = post_streamed("batch", clients, body, path="/api/v1/specimens/ACC-BIG-2/batch/")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 400  # no usable file: no job, and no specimen opened
    assert response.json() == {
        "detail": "No file in the upload is an image that can be classified (huge.jpg: The file is "
        "100.0 MB; the limit is 20.0 MB.); nothing was stored.",
        "code": "no_usable_files",
    }
    assert peak < 16 * MB
    assert_bounded_spool(body, settings)
    assert not BatchItem.objects.exists()
    assert not Specimen.objects.exists()
    assert Classification.objects.count() == 0
    assert files_under(settings.MEDIA_ROOT) == []
    assert files_under(tmp_path) == []


# ---------------------------------------------------------------------------- accepted, stored safely


def _stored(settings) -> tuple[Classification, bytes]:
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


def _decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def check_alpha(classification, stored):
    image = _decoded(stored)
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", (64, 64))
    assert image.getpixel((0, 0)) == (255, 255, 255)  # transparent corner composited onto white
    assert classification.predicted_label == "EOSINOPHIL"  # the hidden blue did not reach the model


def check_16bit(classification, stored):
    image = _decoded(stored)
    assert (image.format, image.mode, image.size) == ("PNG", "L", (64, 48))
    pixels = np.asarray(image)
    assert pixels.min() < 10
    assert pixels.max() > 245
    assert classification.status == "classified"


def check_cmyk(classification, stored):
    image = _decoded(stored)
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (64, 48))
    mean = np.asarray(image).reshape(-1, 3).mean(axis=0)
    assert abs(mean - np.asarray(RED)).max() < 25  # still the red cell
    assert classification.predicted_label == "EOSINOPHIL"


def check_polyglot(classification, stored):
    image = _decoded(stored)
    assert image.size == (64, 48)
    assert classification.predicted_label == "EOSINOPHIL"
    for payload in (SCRIPT, b"<script", b"<html", b"PK\x03\x04", b"evil.sh", b"rm -rf"):
        assert payload not in stored
    # Nothing after the image's own end marker.
    assert stored.endswith(b"\xff\xd9") or stored.endswith(b"IEND\xaeB`\x82")


ACCEPTED = {
    "png_with_alpha": ("alpha.png", png_with_alpha, check_alpha),
    "png_16bit_grey": ("grey16.png", png_16bit_grey, check_16bit),
    "cmyk_jpeg": ("cmyk.jpg", cmyk_jpeg, check_cmyk),
    "polyglot_jpeg_with_zip": ("poly.jpg", polyglot_jpeg, check_polyglot),
    "polyglot_png_with_html": ("poly.png", polyglot_png, check_polyglot),
}


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("case", list(ACCEPTED))
def test_odd_but_valid_image_is_accepted_and_stored_as_plain_pixels(clients, settings, case, channel):
    filename, make, check = ACCEPTED[case]
    response = post_file(channel, clients, filename, make())
    assert_accepted(channel, response)
    classification, stored = _stored(settings)
    assert classification.original_filename == filename
    check(classification, stored)


def test_stored_polyglot_is_served_as_an_image_only(clients, settings):
    response = post_file("api", clients, "poly.jpg", polyglot_jpeg())
    assert response.status_code == 201
    download = clients.api.get(f"{API_URL}{response.json()['id']}/image/")
    assert download.status_code == 200
    assert download["Content-Type"] == "image/jpeg"
    assert SCRIPT not in b"".join(download.streaming_content)


# ---------------------------------------------------------------------------- file names

NAMES = {
    "dot_dot_slash": ("../../../../etc/cron.d/evil.jpg", "evil.jpg"),
    "backslashes": ("..\\..\\..\\windows\\system32\\evil.jpg", "evil.jpg"),
    "windows_fakepath": ("C:\\fakepath\\cell 7.jpg", "cell 7.jpg"),
    "absolute": ("/var/lib/hematovision/media/cells/x.jpg", "x.jpg"),
    "unicode": ("血液 细胞 Ünïcödé 🩸.jpg", "血液 细胞 Ünïcödé 🩸.jpg"),
    "right_to_left_override": ("cell\u202egpj.exe.jpg", "cellgpj.exe.jpg"),
    "nul_byte": ("cell\x00.php.jpg", "cell.php.jpg"),
    "html": ("<img src=x onerror=alert(1)>.jpg", "<img src=x onerror=alert(1)>.jpg"),
    "html_with_slash": ("<b>x</b>.jpg", "b>.jpg"),  # everything up to the last slash goes
    "very_long": ("a" * 300 + ".jpg", "a" * 251 + ".jpg"),
}


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("case", list(NAMES))
def test_hostile_file_name_is_reduced_to_a_base_name_and_stored_under_a_random_one(
    clients, settings, tmp_path, case, channel
):
    sent, kept = NAMES[case]
    response = post_file(channel, clients, sent, jpeg())
    assert_accepted(channel, response)
    classification, _ = _stored(settings)
    assert classification.original_filename == kept
    media = Path(settings.MEDIA_ROOT).relative_to(tmp_path)
    assert all(Path(p).parts[0] == media.name for p in files_under(tmp_path))  # all under MEDIA_ROOT
    if channel == "portal":
        page = clients.portal.get(response.url).content.decode()
        assert "<img src=x" not in page
        assert html.escape(kept) in page


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("name", ["..", ".", "", "/", "../"])
def test_file_name_with_nothing_left_counts_as_no_file(clients, settings, tmp_path, name, channel):
    response = post_file(channel, clients, name, jpeg())
    if channel == "api" and name == "":  # filename="" makes the part a plain form field
        assert_missing_file(channel, response, NOT_A_FILE, "invalid")
    else:
        assert_missing_file(channel, response)
    assert_nothing_stored(settings, tmp_path)


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


@pytest.mark.parametrize("channel", CHANNELS)
def test_missing_image_field(clients, settings, tmp_path, channel):
    response = post(channel, clients, multipart(("accession", "ACC-1"), ("external_id", "LIS-1")))
    assert_missing_file(channel, response)
    assert_nothing_stored(settings, tmp_path)


@pytest.mark.parametrize("channel", CHANNELS)
def test_image_field_sent_as_text_not_a_file(clients, settings, tmp_path, channel):
    response = post(channel, clients, multipart((file_field(channel), "cell.jpg"), ("accession", "ACC-1")))
    if channel == "api":
        assert_missing_file(channel, response, NOT_A_FILE, "invalid")
    else:
        assert_missing_file(channel, response)
    assert_nothing_stored(settings, tmp_path)


@pytest.mark.parametrize("channel", CHANNELS)
def test_image_under_the_wrong_field_name(clients, settings, tmp_path, channel):
    wrong = "images" if channel == "api" else "image"
    response = post(channel, clients, multipart((wrong, "cell.jpg", jpeg(), "image/jpeg")))
    assert_missing_file(channel, response)
    assert_nothing_stored(settings, tmp_path)


@pytest.mark.parametrize("channel", CHANNELS)
def test_unknown_fields_are_ignored_and_cannot_set_owner_label_or_state(
    clients, settings, user, other_user, channel
):
    extra = [("owner", str(other_user.pk)), ("owner_id", str(other_user.pk)), ("status", "signed"),
             ("review_state", "signed"), ("predicted_label", "NEUTROPHIL"), ("final_label", "MONOCYTE"),
             ("label", "MONOCYTE"), ("confidence", "1.0"), ("signed_by", str(other_user.pk)),
             ("id", "999999"), ("model_version", "evil"), ("kind", "fields"), ("images[]", "x"),
             ("../../../etc/passwd", "x")]
    response = post_file(channel, clients, "cell.jpg", jpeg(), extra=extra)
    assert_accepted(channel, response)
    classification, _ = _stored(settings)
    assert classification.owner == user
    assert classification.pk != 999999
    assert (classification.predicted_label, classification.final_label) == ("EOSINOPHIL", "")
    assert (classification.status, classification.review_state) == ("classified", ReviewState.UNREVIEWED)
    assert classification.signed_by is None
    assert classification.model_version == "fake-0001"
    assert classification.specimen.accession == "ACC-BAD-1"


# ---------------------------------------------------------------------------- wrong content types


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'{"image": "/9j/4AAQSkZJRgABAQ==", "accession": "ACC-1"}'),
        ("text/plain", b"image=cell.jpg"),
        ("application/x-www-form-urlencoded", b"image=cell.jpg&accession=ACC-1"),
        ("image/jpeg", None),
        ("application/octet-stream", None),
    ],
    ids=["json", "text", "urlencoded", "raw_jpeg", "octet_stream"],
)
def test_api_refuses_bodies_that_are_not_multipart_with_415(clients, settings, tmp_path, content_type, body):
    response = clients.api.post(API_URL, data=body if body is not None else jpeg(), content_type=content_type)
    assert response.status_code == 415
    assert response.json() == {
        "detail": f'Unsupported media type "{content_type}" in request.', "code": "unsupported_media_type"
    }
    assert_nothing_stored(settings, tmp_path)


@pytest.mark.parametrize("channel", ["portal", "portal_json"])
@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'{"images": "/9j/4AAQSkZJRgABAQ==", "accession": "ACC-1"}'),
        ("text/plain", b"images=cell.jpg"),
        ("image/jpeg", None),
    ],
    ids=["json", "text", "raw_jpeg"],
)
def test_portal_asks_for_a_file_when_the_body_is_not_multipart(
    clients, settings, tmp_path, channel, content_type, body
):
    response = post(channel, clients, body if body is not None else jpeg(), content_type)
    assert_missing_file(channel, response)
    assert_nothing_stored(settings, tmp_path)


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize(
    "content_type",
    ["multipart/form-data", "multipart/form-data; boundary=", "multipart/form-data; boundary=x"],
)
def test_broken_multipart_is_a_400_not_a_500(clients, settings, tmp_path, channel, content_type):
    response = post(channel, clients, multipart((file_field(channel), "cell.jpg", jpeg())), content_type)
    assert response.status_code == 400, response.content[:300]
    if channel == "api" and content_type == "multipart/form-data; boundary=x":
        assert_missing_file(channel, response)
    elif channel == "api":
        boundary = "None" if content_type == "multipart/form-data" else ""
        assert response.json() == {
            "detail": f"Multipart form parse error - Invalid boundary in multipart: {boundary}",
            "code": "parse_error",
        }
    elif content_type == "multipart/form-data; boundary=x":  # parsed: no part matches the boundary
        assert_missing_file(channel, response)
    else:  # Django refuses the body before the view runs (templates/400.html), JSON asked or not
        assert "The request could not be read" in response.content.decode()
    assert_nothing_stored(settings, tmp_path)


@pytest.mark.parametrize("channel", CHANNELS)
def test_image_part_labelled_text_plain_is_judged_by_its_content(clients, settings, channel):
    response = post_file(channel, clients, "cell.txt", jpeg(), content_type="text/plain")
    assert_accepted(channel, response)
    classification, stored = _stored(settings)
    assert classification.original_filename == "cell.txt"
    assert classification.image.name.endswith(".jpg")  # the stored type follows the content
    assert _decoded(stored).format == "JPEG"


# ---------------------------------------------------------------------------- accession numbers

ACCESSION_RULE = (
    "An accession number is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit."
)
BAD_ACCESSIONS = {
    "dot_dot_slash": ("../../etc/passwd", ACCESSION_RULE),
    "slash": ("ACC/1", ACCESSION_RULE),
    "backslash": ("..\\ACC", ACCESSION_RULE),
    "dot_dot": ("..", ACCESSION_RULE),
    "space": ("ACC 1", ACCESSION_RULE),
    "html": ("<script>x</script>", ACCESSION_RULE),
    "sql": ("1' OR '1'='1", ACCESSION_RULE),
    "unicode": ("ÄCC-1", ACCESSION_RULE),
    "newline": ("ACC-1\nMSH|^~\\&|", ACCESSION_RULE),  # HL7 segment injection
    "nul": ("ACC\x001", ACCESSION_RULE, "Null characters are not allowed."),
    "too_long": ("A" * 65, ACCESSION_RULE, "Ensure this value has at most 64 characters (it has 65)."),
}


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("case", list(BAD_ACCESSIONS))
def test_bad_accession_is_refused_before_anything_is_stored(clients, settings, tmp_path, case, channel):
    accession, *messages = BAD_ACCESSIONS[case]
    if channel == "api" and case == "too_long":  # DRF words the length limit its own way
        messages = [ACCESSION_RULE, "Ensure this field has no more than 64 characters."]
    body = multipart((file_field(channel), "cell.jpg", jpeg(), "image/jpeg"), ("accession", accession))
    response = post(channel, clients, body)
    assert response.status_code == 400, response.content[:300]
    if channel == "api":
        body = response.json()
        assert body == {"detail": f"accession: {messages[0]}", "code": "invalid",
                        "errors": {"accession": messages}}
    elif channel == "portal_json":
        assert response.json() == {"error": "; ".join(messages), "code": "invalid"}
    else:
        page = response.content.decode()
        assert all(html.escape(message) in page for message in messages)
    assert_nothing_stored(settings, tmp_path)


@pytest.mark.parametrize(
    ("accession", "status"),
    [("ACC%201", 400), ("%3Cscript%3E", 400), ("..", 400), ("ACC-1%00", 400), ("..%2F..%2Fetc", 404),
     ("ACC-1%2F..%2F..%2Fetc", 404)],
)
def test_batch_accession_in_the_url_is_checked(clients, settings, tmp_path, accession, status):
    body = multipart(("images", "cell.jpg", jpeg(), "image/jpeg"))
    response = clients.api.post(f"/api/v1/specimens/{accession}/batch/", data=body, content_type=MULTIPART)
    assert response.status_code == status, response.content[:300]
    if status == 400:
        assert response.json()["detail"] in {ACCESSION_RULE, "Null characters are not allowed."}
    assert BatchJob.objects.count() == 0
    assert_nothing_stored(settings, tmp_path)


# ---------------------------------------------------------------------------- the batch API


def test_batch_of_bad_files_records_each_refusal_and_keeps_nothing(
    clients, settings, tmp_path, django_capture_on_commit_callbacks
):
    """Files are staged and checked in the background; each bad one ends failed with its reason,
    with no classification and no staged copy left behind (a rejected image is not retried)."""
    names = ["empty_file", "text_renamed_jpg", "truncated_jpeg", "animated_gif", "svg_with_script",
             "decompression_bomb", "over_max_pixels", "tiny_8x8", "animated_png"]
    parts = []
    for case in names:
        filename, make, *_ = REJECTED[case]
        parts.append(("images", f"../../{case}-{filename}", make(), "image/jpeg"))
    with django_capture_on_commit_callbacks(execute=True):
        response = clients.api.post("/api/v1/specimens/ACC-BATCH-1/batch/", data=multipart(*parts),
                                    content_type=MULTIPART)
    assert response.status_code == 202, response.content[:300]
    outcome = {
        item.filename: (item.state, item.error_code, item.error_message)
        for item in BatchItem.objects.all()
    }
    expected = {}
    for case in names:
        filename, _, _, code, message = REJECTED[case]
        if case in ("animated_gif", "svg_with_script"):  # refused by extension before staging
            code = "not_an_image"
            message = "Not an image file; upload JPEG, PNG, TIFF, BMP or WebP (by extension)."
        elif code == "not_an_image":
            message = NOT_READABLE.format(f"{case}-{filename}")
        expected[f"{case}-{filename}"] = (BatchItem.State.FAILED, code, message)
    assert outcome == expected
    assert BatchJob.objects.get().state == BatchJob.State.DONE_WITH_ERRORS
    assert Classification.objects.count() == 0
    assert files_under(settings.MEDIA_ROOT) == []
    assert files_under(tmp_path) == []


def test_batch_with_no_files_or_unknown_kind_is_400(clients, settings, tmp_path):
    response = clients.api.post("/api/v1/specimens/ACC-1/batch/", data=multipart(("accession", "x")),
                                content_type=MULTIPART)
    assert response.status_code == 400
    assert response.json()["detail"] == "Send one or more `images` or one `archive` ZIP."
    response = clients.api.post(
        "/api/v1/specimens/ACC-1/batch/",
        data=multipart(("images", "cell.jpg", jpeg()), ("kind", "../../shell")), content_type=MULTIPART,
    )
    assert response.status_code == 400
    assert response.json()["errors"] == {"kind": ['"../../shell" is not a valid choice.']}
    assert BatchJob.objects.count() == 0
    assert_nothing_stored(settings, tmp_path)


def test_batch_refuses_a_json_body_with_415(clients):
    response = clients.api.post("/api/v1/specimens/ACC-1/batch/", data={"images": ["x"]}, format="json")
    assert response.status_code == 415
    assert response.json() == {
        "detail": 'Unsupported media type "application/json" in request.', "code": "unsupported_media_type"
    }


def test_oversize_file_among_good_ones_is_refused_alone(clients, settings, tmp_path):
    """The limit handler drops only the oversize file; the files around it are stored."""
    settings.HEMATOVISION_MAX_UPLOAD_BYTES = 200_000
    big = _save(cell((300, 300)), "BMP")  # 270 kB
    green = _save(Image.fromarray(np.asarray(cell())[..., [1, 0, 2]]), "PNG")
    body = multipart(("images", "first.jpg", jpeg()), ("images", "big.bmp", big),
                     ("images", "last.png", green))
    response = post("portal", clients, body)
    assert response.status_code == 302
    assert response.url == "/classifications/"
    messages = [str(m) for m in response.wsgi_request._messages]
    assert messages == ["big.bmp: The file is 263.7 KB; the limit is 195.3 KB.", "2 images classified."]
    assert sorted(Classification.objects.values_list("original_filename", "predicted_label")) == [
        ("first.jpg", "EOSINOPHIL"), ("last.png", "LYMPHOCYTE")
    ]
    assert len(files_under(settings.MEDIA_ROOT)) == 2  # two images (heat maps are drawn when opened)


def test_formula_in_a_file_name_is_kept_but_defused_in_csv_exports(clients, settings):
    response = post_file("api", clients, "=1+2*cmd|A0.jpg", jpeg())
    assert response.status_code == 201
    assert Classification.objects.get().original_filename == "=1+2*cmd|A0.jpg"
    export = clients.portal.get("/classifications/export.csv")
    text = b"".join(export.streaming_content).decode()
    assert "\"'=1+2*cmd|A0.jpg\"" in text
    assert ",=1+2*cmd" not in text
    assert '"=1+2*cmd' not in text


@pytest.mark.parametrize(
    ("external_id", "message", "code"),
    [("LIS\x001", "Null characters are not allowed.", "null_characters_not_allowed"),
     ("L" * 129, "Ensure this field has no more than 128 characters.", "max_length")],
    ids=["nul", "too_long"],
)
def test_bad_external_id_is_400(clients, settings, tmp_path, external_id, message, code):
    body = multipart(("image", "cell.jpg", jpeg()), ("external_id", external_id))
    response = post("api", clients, body)
    assert response.status_code == 400
    assert response.json() == {"detail": f"external_id: {message}", "code": code,
                               "errors": {"external_id": [message]}}
    assert_nothing_stored(settings, tmp_path)


def test_batch_zip_with_traversal_and_non_images_keeps_only_the_good_image(
    clients, settings, tmp_path, django_capture_on_commit_callbacks
):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../../../escape.jpg", jpeg())
        archive.writestr("/abs/escape2.jpg", jpeg())
        archive.writestr("cells/payload.svg", SVG)
        archive.writestr("cells/notes.jpg", b"plain text")
        archive.writestr("cells/good.jpg", jpeg())
    body = multipart(("archive", "cells.zip", buffer.getvalue(), "application/zip"))
    with django_capture_on_commit_callbacks(execute=True):
        response = clients.api.post("/api/v1/specimens/ACC-ZIP-1/batch/", data=body, content_type=MULTIPART)
    assert response.status_code == 202, response.content[:300]
    outcome = sorted(BatchItem.objects.values_list("filename", "state", "error_code"))
    assert outcome == [
        ("escape.jpg", "failed", "unsafe_path"),
        ("escape2.jpg", "failed", "unsafe_path"),
        ("good.jpg", "done", ""),
        ("notes.jpg", "failed", "not_an_image"),
        ("payload.svg", "failed", "not_an_image"),
    ]
    assert list(Classification.objects.values_list("original_filename", flat=True)) == ["good.jpg"]
    classification = Classification.objects.get()
    assert files_under(tmp_path) == [f"media/{classification.image.name}"]


@pytest.mark.django_db
@pytest.mark.parametrize("axes", [True, False])
@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"username": "u" * 151, "password": "x"}, "username",
         "Ensure this field has no more than 150 characters."),
        ({"username": "tech", "password": "p" * 4097}, "password",
         "Ensure this field has no more than 4096 characters."),
        ({"username": "\udfff", "password": "x"}, "username",
         "Surrogate characters are not allowed: U+DFFF."),
    ],
)
def test_token_endpoint_refuses_unstorable_credentials(api_client, settings, axes, body, field, message):
    """Found by Schemathesis on PostgreSQL: axes stored a 300-character username -> 500."""
    from axes.models import AccessAttempt

    settings.AXES_ENABLED = axes
    raw = json.dumps(body)  # ASCII with \uXXXX escapes: lone surrogates survive to the parser
    response = api_client.post("/api/v1/auth/token/", raw, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["errors"] == {field: [message]}
    assert AccessAttempt.objects.count() == 0
