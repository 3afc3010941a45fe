"""Odd but valid images through the portal and the API: accepted, stored re-encoded as plain pixels."""


import numpy as np
import pytest

from classifier.tests.bad_input import (
    API_URL,
    CHANNELS,
    RED,
    SCRIPT,
    assert_accepted,
    cmyk_jpeg,
    decoded,
    png_16bit_grey,
    png_with_alpha,
    polyglot_jpeg,
    polyglot_png,
    post_file,
    stored_image,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("bad_input_settings")]


def check_alpha(classification, stored):
    image = decoded(stored)
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", (64, 64))
    assert image.getpixel((0, 0)) == (255, 255, 255)  # transparent corner composited onto white
    assert classification.predicted_label == "EOSINOPHIL"  # the hidden blue did not reach the model


def check_16bit(classification, stored):
    image = decoded(stored)
    assert (image.format, image.mode, image.size) == ("PNG", "L", (64, 48))
    pixels = np.asarray(image)
    assert pixels.min() < 10
    assert pixels.max() > 245
    assert classification.status == "classified"


def check_cmyk(classification, stored):
    image = decoded(stored)
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (64, 48))
    mean = np.asarray(image).reshape(-1, 3).mean(axis=0)
    assert abs(mean - np.asarray(RED)).max() < 25  # still the red cell
    assert classification.predicted_label == "EOSINOPHIL"


def check_polyglot(classification, stored):
    image = decoded(stored)
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
    classification, stored = stored_image(settings)
    assert classification.original_filename == filename
    check(classification, stored)


def test_stored_polyglot_is_served_as_an_image_only(clients, settings):
    response = post_file("api", clients, "poly.jpg", polyglot_jpeg())
    assert response.status_code == 201
    download = clients.api.get(f"{API_URL}{response.json()['id']}/image/")
    assert download.status_code == 200
    assert download["Content-Type"] == "image/jpeg"
    assert SCRIPT not in b"".join(download.streaming_content)
