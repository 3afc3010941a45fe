"""The batch API's bad input: accession in the URL, bad files recorded one by one and kept nowhere,
no files or an unknown kind, a JSON body, ZIP entries with traversal paths or non-images."""

import io
import zipfile

import pytest

from classifier.models import BatchItem, BatchJob, Classification
from classifier.tests.bad_input import (
    ACCESSION_RULE,
    MULTIPART,
    NOT_READABLE,
    REJECTED,
    SVG,
    assert_nothing_stored,
    files_under,
    jpeg,
    multipart,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("bad_input_settings")]


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
