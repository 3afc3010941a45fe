"""Upload requests shaped badly (portal and API): hostile file names, missing and extra fields, bodies
that are not multipart, broken multipart, a part's own Content-Type."""

import html
from pathlib import Path

import pytest

from classifier.models import ReviewState
from classifier.tests.bad_input import (
    API_URL,
    CHANNELS,
    NOT_A_FILE,
    assert_accepted,
    assert_missing_file,
    assert_nothing_stored,
    decoded,
    file_field,
    files_under,
    jpeg,
    multipart,
    post,
    post_file,
    stored_image,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("bad_input_settings")]


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
    classification, _ = stored_image(settings)
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
    classification, _ = stored_image(settings)
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
    classification, stored = stored_image(settings)
    assert classification.original_filename == "cell.txt"
    assert classification.image.name.endswith(".jpg")  # the stored type follows the content
    assert decoded(stored).format == "JPEG"
