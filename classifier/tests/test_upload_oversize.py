"""Files over the upload limit: refused with 413 while streaming (never held in memory), alone among
good files, and in a batch up front."""

import io
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classifier.models import BatchItem, Classification, Specimen
from classifier.tests.bad_input import (
    API_URL,
    BOUNDARY,
    CHANNELS,
    MB,
    MULTIPART,
    UPLOAD_URL,
    assert_nothing_stored,
    assert_rejected,
    cell,
    encode,
    file_field,
    files_under,
    jpeg,
    multipart,
    post,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("bad_input_settings")]


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


def test_oversize_file_among_good_ones_is_refused_alone(clients, settings, tmp_path):
    """The limit handler drops only the oversize file; the files around it are stored."""
    settings.HEMATOVISION_MAX_UPLOAD_BYTES = 200_000
    big = encode(cell((300, 300)), "BMP")  # 270 kB
    green = encode(Image.fromarray(np.asarray(cell())[..., [1, 0, 2]]), "PNG")
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
