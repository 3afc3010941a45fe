"""Portal and API uploads of files that are not a usable image: a clear 4xx, nothing stored."""


import pytest

from classifier.tests.bad_input import (
    CHANNELS,
    REJECTED,
    assert_nothing_stored,
    assert_rejected,
    jpeg,
    post_file,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("bad_input_settings")]


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
