"""Request limits: batch ZIPs have their own size limit, a full batch fits in one request, uploads
the database could not take are each kept, and the token throttle counts the real client address.

The limits are scaled down in each test (a 60 KB image limit stands in for the 20 MB default), so
no test builds a large file.
"""

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import OperationalError
from django.urls import reverse
from PIL import Image

from classifier.api.throttling import TokenRateThrottle
from classifier.models import BatchJob, Classification, Specimen
from classifier.tests.specimen_helpers import (
    cell_png,
    media_files,
    sync_jobs,  # noqa: F401
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("sync_jobs")]

KB = 1024
MB = 1024 * 1024
BATCH_URL = "/api/v1/specimens/{}/batch/"



def noisy_png(seed: int, size=(128, 96)) -> bytes:
    """An image PNG cannot compress (128x96: about 32 KB), red-dominant so the fake model classifies it."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    pixels[..., 0] = np.maximum(pixels[..., 0], 200)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def stored_zip(count: int, size=(128, 96)) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for i in range(count):
            zf.writestr(f"cells/c{i}.png", noisy_png(i, size))
    return buffer.getvalue()


def zip_upload(data: bytes, name="cells.zip") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="application/zip")


def png_upload(name: str, data: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="image/png")


@pytest.fixture
def small_limits(settings):
    """Image limit 60 KB (stands in for 20 MB), archive limit 1 MB (for 2048 MB)."""
    settings.HEMATOVISION_MAX_UPLOAD_BYTES = 60 * KB
    settings.HEMATOVISION_BATCH_MAX_ARCHIVE_MB = 1
    return settings


def assert_nothing_stored(settings):
    assert not BatchJob.objects.exists()
    assert not Specimen.objects.exists()
    assert not Classification.objects.exists()
    assert media_files(settings, "") == []


# ---------------------------------------------------------------------- a ZIP has its own size limit


def test_portal_zip_bigger_than_the_image_limit_is_accepted(
    tech_client, small_limits, django_capture_on_commit_callbacks
):
    data = stored_zip(3)
    assert 60 * KB < len(data) < MB  # over the image limit, under the archive limit
    with django_capture_on_commit_callbacks(execute=True):
        response = tech_client.post(
            reverse("batch-upload"), {"accession": "ZIP-P1", "kind": "cells", "archive": zip_upload(data)}
        )
    job = BatchJob.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("job-detail", args=[job.pk])
    assert [(i.filename, i.state) for i in job.items.order_by("position")] == [
        ("c0.png", "done"),
        ("c1.png", "done"),
        ("c2.png", "done"),
    ]
    assert Classification.objects.filter(specimen__accession="ZIP-P1").count() == 3


def test_api_zip_bigger_than_the_image_limit_is_accepted(
    tech_api, small_limits, django_capture_on_commit_callbacks
):
    data = stored_zip(3)
    with django_capture_on_commit_callbacks(execute=True):
        response = tech_api.post(
            BATCH_URL.format("ZIP-A1"), {"archive": zip_upload(data)}, format="multipart"
        )
    assert response.status_code == 202, response.content
    job = BatchJob.objects.get()
    assert [(i["filename"], i["state"]) for i in tech_api.get(f"/api/v1/jobs/{job.pk}/").json()["items"]] == [
        ("c0.png", "done"),
        ("c1.png", "done"),
        ("c2.png", "done"),
    ]


def _oversize_zip() -> bytes:
    data = stored_zip(34)  # about 1.1 MB, over the 1 MB archive limit
    assert len(data) > MB
    return data


def test_api_zip_over_the_archive_limit_is_413_and_stores_nothing(tech_api, small_limits):
    data = _oversize_zip()
    response = tech_api.post(BATCH_URL.format("ZIP-A2"), {"archive": zip_upload(data)}, format="multipart")
    assert response.status_code == 413
    assert response.json() == {
        "detail": f"The archive is {len(data) / MB:.1f} MB; the limit is 1.0 MB.",
        "code": "file_too_large",
    }
    assert_nothing_stored(small_limits)


def test_portal_zip_over_the_archive_limit_is_a_form_error(tech_client, small_limits):
    data = _oversize_zip()
    response = tech_client.post(
        reverse("batch-upload"), {"accession": "ZIP-P2", "kind": "cells", "archive": zip_upload(data)}
    )
    assert response.status_code == 200
    form = response.context["form"]
    assert form.errors == {"archive": [f"The archive is {len(data) / MB:.1f} MB; the limit is 1.0 MB."]}
    assert "not a readable ZIP" not in response.content.decode()
    assert_nothing_stored(small_limits)


def test_batch_form_states_the_limits(tech_client, small_limits):
    html = tech_client.get(reverse("batch-upload")).content.decode()
    assert "Up to 1000 files, each at most 60.0 KB." in html
    assert "At most 1.0 MB." in html


def test_oversize_image_in_a_batch_is_still_a_failed_file(tech_api, small_limits):
    """The image field keeps the image limit: the big file fails alone, the others are staged."""
    response = tech_api.post(
        BATCH_URL.format("ZIP-A3"),
        {"images": [png_upload("big.png", noisy_png(1, (256, 128))), png_upload("ok.png", noisy_png(2))]},
        format="multipart",
    )
    assert response.status_code == 202
    items = [(i["filename"], i["state"], i["error_code"], i["error"]) for i in response.json()["items"]]
    assert items[0][:3] == ("big.png", "failed", "file_too_large")
    assert items[0][3].startswith("The file is ")
    assert items[0][3].endswith("; the limit is 60.0 KB.")
    assert items[1] == ("ok.png", "pending", None, None)


# ---------------------------------------------------------------------- files per request


def test_request_file_limit_follows_the_batch_limit(settings):
    assert settings.DATA_UPLOAD_MAX_NUMBER_FILES == settings.HEMATOVISION_BATCH_MAX_FILES + 1  # + the ZIP


def _pngs(count: int) -> list[SimpleUploadedFile]:
    return [png_upload(f"c{i}.png", cell_png("EOSINOPHIL", i, size=(32, 32))) for i in range(count)]


def test_api_batch_of_101_images_is_accepted(tech_api, settings):
    response = tech_api.post(BATCH_URL.format("MANY-A1"), {"images": _pngs(101)}, format="multipart")
    assert response.status_code == 202, response.content
    assert BatchJob.objects.get().items.count() == 101
    assert len(media_files(settings, "batches")) == 101


def test_portal_batch_of_101_images_is_accepted(tech_client, settings):
    response = tech_client.post(
        reverse("batch-upload"), {"accession": "MANY-P1", "kind": "cells", "images": _pngs(101)}
    )
    job = BatchJob.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("job-detail", args=[job.pk])
    assert job.items.count() == 101


@pytest.fixture
def three_files(settings):
    settings.HEMATOVISION_BATCH_MAX_FILES = 3
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 4
    return settings


TOO_MANY = "Too many files in one upload; the limit is 3 files per job. Split them into several uploads."


def test_api_over_the_request_file_limit_is_a_clear_400(tech_api, three_files):
    response = tech_api.post(BATCH_URL.format("MANY-A2"), {"images": _pngs(5)}, format="multipart")
    assert response.status_code == 400
    assert response.json() == {"detail": TOO_MANY, "code": "too_many_files"}
    response = tech_api.post(BATCH_URL.format("MANY-A2"), {"images": _pngs(4)}, format="multipart")
    assert response.status_code == 400
    assert response.json() == {
        "detail": "4 files were sent; the limit is 3 per job.",
        "code": "too_many_files",
    }
    assert_nothing_stored(three_files)


@pytest.mark.parametrize("url", [reverse("batch-upload") + "?accession=MANY-P2", reverse("upload")])
def test_portal_over_the_request_file_limit_says_so_on_the_page(tech_client, three_files, url):
    response = tech_client.post(url, {"accession": "MANY-P2", "kind": "cells", "images": _pngs(5)})
    assert response.status_code == 302
    assert response["Location"] == url
    page = tech_client.get(url)
    assert page.status_code == 200
    assert [str(m) for m in page.context["messages"]] == [TOO_MANY]
    assert TOO_MANY in page.content.decode()
    assert_nothing_stored(three_files)


# ---------------------------------------------------------------------- database down mid-upload


def _spooled(settings) -> dict[str, tuple[str, bytes]]:
    """filename -> (reference, bytes) of every upload in the spool."""
    spool = Path(settings.MEDIA_ROOT) / "spool"
    kept = {}
    for meta in spool.glob("*.json"):
        reference = meta.stem
        kept[json.loads(meta.read_text())["filename"]] = (
            reference,
            (spool / f"{reference}.bin").read_bytes(),
        )
    return kept


def _database_fails_after(monkeypatch, ok_saves: int):
    real_save = Classification.save
    calls = {"n": 0}

    def save(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > ok_saves:
            raise OperationalError("database is locked")
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Classification, "save", save)


def test_portal_multi_upload_keeps_every_file_the_database_could_not_take(tech_client, settings, monkeypatch):
    data = {name: cell_png("MONOCYTE", seed) for seed, name in enumerate(["a.png", "b.png", "c.png"])}
    _database_fails_after(monkeypatch, ok_saves=1)
    response = tech_client.post(reverse("upload"), {"images": [png_upload(n, d) for n, d in data.items()]})
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert list(Classification.objects.values_list("original_filename", flat=True)) == ["a.png"]
    kept = _spooled(settings)
    assert sorted(kept) == ["b.png", "c.png"]
    assert all(kept[name][1] == data[name] for name in kept)
    html = response.content.decode()
    b_ref, c_ref = kept["b.png"][0], kept["c.png"][0]
    assert (
        "The database is busy or unavailable. 2 uploads were kept and will be classified when it is back "
        f"(references {b_ref}, {c_ref}); do not send them again." in html
    )
    assert f"<strong>b.png</strong>: kept as <code>{b_ref}</code>" in html
    assert f"<strong>c.png</strong>: kept as <code>{c_ref}</code>" in html
    assert "1 other image classified" in html


def test_portal_json_upload_reports_its_spool_reference(tech_client, settings, monkeypatch):
    _database_fails_after(monkeypatch, ok_saves=0)
    response = tech_client.post(
        reverse("upload"),
        {"images": [png_upload("a.png", cell_png("MONOCYTE"))]},
        HTTP_ACCEPT="application/json",
    )
    assert response.status_code == 503
    ((reference, _),) = _spooled(settings).values()
    assert response.json() == {
        "error": "The database is busy or unavailable. Your upload was kept and will be classified when it "
        f"is back (reference {reference}); do not send it again.",
        "code": "database_unavailable",
        "spooled": [{"filename": "a.png", "reference": reference}],
        "ids": [],
        "errors": [],
    }
    assert not Classification.objects.exists()


# ---------------------------------------------------------------------- token throttle per address


def _token_attempts(api_client, forwarded_for: list[str]) -> list[int]:
    return [
        api_client.post(
            "/api/v1/auth/token/", {"username": "tech", "password": "wrong"}, HTTP_X_FORWARDED_FOR=xff
        ).status_code
        for xff in forwarded_for
    ]


def test_forged_forwarded_for_does_not_escape_the_token_throttle(api_client, user, monkeypatch):
    monkeypatch.setattr(TokenRateThrottle, "rate", "3/min", raising=False)
    statuses = _token_attempts(api_client, [f"10.0.0.{i}" for i in range(6)])
    assert statuses == [400, 400, 400, 429, 429, 429]


def test_behind_trusted_proxies_the_throttle_counts_the_address_they_saw(
    api_client, user, settings, monkeypatch
):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    monkeypatch.setattr(TokenRateThrottle, "rate", "2/min", raising=False)
    # The proxy appends the address it saw; whatever the client put before it does not count.
    statuses = _token_attempts(api_client, ["1.1.1.1", "9.9.9.9, 1.1.1.1", "8.8.8.8, 1.1.1.1", "2.2.2.2"])
    assert statuses == [400, 400, 429, 400]


# ---------------------------------------------------------------------- what one request may carry


def test_files_of_one_request_add_up_to_at_most_a_zip_and_an_image(tech_api, tech_client, small_limits):
    """Each image under its 60 KB limit, but together over 1 MB + 60 KB: refused while the body is
    read (before, 1,001 images of 20 MB each could reach 20 GB of temporary files)."""
    images = [png_upload(f"big{i}.png", noisy_png(i, size=(150, 120))) for i in range(40)]
    sizes = [img.size for img in images]
    assert max(sizes) < 60 * KB < MB + 60 * KB < sum(sizes)
    message = (
        "The files in this upload add up to more than 1.1 MB, the most one upload may carry. "
        "Split them into several uploads."
    )
    response = tech_api.post(BATCH_URL.format("BIG-A"), {"images": images}, format="multipart")
    assert response.status_code == 413
    assert response.json() == {"detail": message, "code": "request_too_large"}
    for image in images:
        image.seek(0)
    url = reverse("batch-upload")
    response = tech_client.post(url, {"accession": "BIG-P", "kind": "cells", "images": images})
    assert response.status_code == 302
    assert response["Location"] == url
    assert [str(m) for m in tech_client.get(url).context["messages"]] == [message]
    assert_nothing_stored(small_limits)
