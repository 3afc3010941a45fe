"""The specimen check in the review gallery, in Debian's Chromium: an alarmed specimen shows the warning,
has no "Accept the rest" button, refuses Enter on a selection of many cells and accepts one cell.
Screenshot: test-artifacts/screenshots/review-specimen-check.png."""

import pytest

from classifier.models import ReviewEvent, ReviewState, Status
from classifier.tests.factories import ClassificationFactory, SpecimenFactory
from classifier.tests.test_browser import (
    Session,
    browser,  # noqa: F401 - the fixture
)
from ml import shift

playwright_sync = pytest.importorskip("playwright.sync_api")
expect = playwright_sync.expect

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

ALARM_AT = shift.SpecimenRule(shift.DEFAULT_BASE_RATE).critical(10)  # the fake predictor's (default) rule


def test_an_alarmed_specimen_is_accepted_one_cell_at_a_time(
    live_server,
    user,
    reviewer,
    password,
    browser,  # noqa: F811 - the fixture of this module
):
    specimen = SpecimenFactory(created_by=user, accession="ACC-CHECK")
    first, second, *_ = [
        ClassificationFactory(owner=user, specimen=specimen, predicted_label="NEUTROPHIL")
        for _ in range(10 - ALARM_AT)
    ]
    for _ in range(ALARM_AT):
        ClassificationFactory(owner=user, specimen=specimen, unidentified=True)
    rev = Session(browser, live_server.url)
    page = rev.page
    rev.login(reviewer.username, password)
    page.goto("/specimens/ACC-CHECK/review/")
    expect(page.locator("#specimen-check")).to_contain_text(f"{ALARM_AT} of 10 cells")
    expect(page.locator(".accept-rest")).to_have_count(0)

    page.click(f'.cell-tile[data-id="{first.pk}"]')
    page.click(f'.cell-tile[data-id="{second.pk}"]', modifiers=["Shift"])
    page.keyboard.press("Enter")
    expect(page.locator("#review-error")).to_contain_text("accepting cells in bulk is off")
    page.keyboard.press("Shift+Enter")  # the rest of the class: refused the same way
    expect(page.locator("#review-error")).to_be_visible()
    rev.shot("review-specimen-check")
    assert not ReviewEvent.objects.exists()

    page.click(f'.cell-tile[data-id="{first.pk}"]')
    page.keyboard.press("Enter")
    expect(page.locator(f'.cell-tile[data-id="{first.pk}"]')).to_have_attribute("data-state", "confirmed")
    first.refresh_from_db()
    assert (first.status, first.review_state) == (Status.CLASSIFIED, ReviewState.CONFIRMED)
    assert ReviewEvent.objects.count() == 1
    assert rev.errors == []
    rev.close()
