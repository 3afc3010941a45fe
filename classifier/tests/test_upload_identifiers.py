"""Accession numbers and external ids with path traversal, markup, NUL or over-long values: 400
before anything is stored."""

import html

import pytest

from classifier.tests.bad_input import (
    ACCESSION_RULE,
    CHANNELS,
    assert_nothing_stored,
    file_field,
    jpeg,
    multipart,
    post,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("bad_input_settings")]


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
