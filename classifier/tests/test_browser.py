"""End to end in headless Chromium (Debian's package, driven by Playwright; never downloaded).

A technologist signs in, uploads a real cell image, sees the predicted class and the
heat map, finds the result in history; a reviewer finds its specimen in the worklist and
confirms the cell with the keyboard (the specimen is signed as a whole: test_browser_review).
Each page is saved under test-artifacts/screenshots/.
"""

import os
import re
from pathlib import Path

import pytest

from classifier.models import Classification, ReviewEvent
from classifier.tests.factories import ClassificationFactory

playwright_sync = pytest.importorskip("playwright.sync_api")
expect = playwright_sync.expect

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "ml" / "tests" / "fixtures" / "cells"
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"

# Groups come from a data migration: restore them for these transactional tests.
pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


@pytest.fixture
def browser(live_server):
    """A fresh Chromium per test, started after (and stopped before) the test database work.

    Playwright's sync API keeps an asyncio loop "running" in this thread while it is open,
    which makes Django hand out a different connection object; setting the database up
    and flushing it outside that window keeps serialized rollback working.
    """
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: `make test` installs Debian's chromium ")
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are
    # synchronous and safe, so tell Django not to refuse them.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        with playwright_sync.sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                      "--disable-component-update", "--disable-sync", "--no-first-run"],
            )
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


class Session:
    """One signed-in browser context that records console errors (CSP violations show there)."""

    def __init__(self, browser, base_url):
        self.context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900})
        self.context.set_default_timeout(20_000)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def _console(self, msg):
        if msg.type == "error" and "favicon" not in (msg.location or {}).get("url", ""):
            self.errors.append(msg.text)

    def login(self, username, password):
        page = self.page
        page.goto("/accounts/login/")
        page.fill("#id_username", username)
        page.fill("#id_password", password)
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r"/$"))

    def shot(self, name):
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

    def close(self):
        self.context.close()


def test_upload_result_history_review_and_sign(live_server, user, reviewer, password, browser):
    tech = Session(browser, live_server.url)
    page = tech.page
    tech.login(user.username, password)
    assert page.locator("#user-role").inner_text() == "Technologist"
    tech.shot("01-dashboard-technologist")

    page.click("#nav-upload")
    page.wait_for_url("**/upload/")
    tech.shot("02-upload")
    page.set_input_files("#id_images", str(FIXTURES / "LYMPHOCYTE_1.jpeg"))
    assert page.locator("#file-summary").inner_text() == "1 file chosen"
    page.fill("#id_accession", "ACC-E2E-1")
    page.click("#upload-submit")
    page.wait_for_url(re.compile(r"/classifications/\d+/$"))

    cell = Classification.objects.get()
    assert page.url.endswith(f"/classifications/{cell.pk}/")
    assert cell.owner == user
    assert cell.specimen.accession == "ACC-E2E-1"
    assert page.locator("#predicted-label").inner_text() == cell.get_predicted_label_display()
    assert page.locator("#model-version").inner_text() == "fake-0001"
    assert page.locator("#probabilities .progress").count() == 4
    # The image and heat map load through the permission-checked views.
    assert page.locator("#cell-image").evaluate("img => img.complete && img.naturalWidth") == 320
    heatmap = page.locator("#heatmap-image")
    expect(heatmap).to_be_hidden()
    tech.shot("03-result")
    # The heat map is drawn when first shown (a lazy image, not displayed until the toggle).
    assert not Classification.objects.get().heatmap
    page.click("label[for=heatmap-toggle]")  # CSS-only toggle
    expect(heatmap).to_be_visible()
    page.wait_for_function("() => document.querySelector('#heatmap-image').naturalWidth === 320")
    assert Classification.objects.get().heatmap.name.startswith("heatmaps/")
    tech.shot("04-result-heatmap")

    page.click("#nav-history")
    page.wait_for_url("**/classifications/")
    page.fill("#id_q", "ACC-E2E")
    page.click("#history-filter button[type=submit]")
    page.wait_for_url(re.compile(r"q=ACC-E2E"))
    row = page.locator(f'#history-table tr[data-id="{cell.pk}"]')
    assert row.count() == 1
    assert cell.get_predicted_label_display() in row.inner_text()
    tech.shot("05-history")
    assert tech.errors == []
    tech.close()

    rev = Session(browser, live_server.url)
    page = rev.page
    rev.login(reviewer.username, password)
    rev.shot("06-dashboard-reviewer")
    page.click("#nav-review")
    page.wait_for_url("**/review/")
    expect(page.locator('#worklist tr[data-accession="ACC-E2E-1"]')).to_contain_text("0 of 1 reviewed")
    page.goto("/review/cells/?accession=ACC-E2E-1")  # the cell queue, this specimen's cells only
    assert page.locator("[data-review-item].selected").get_attribute("data-id") == str(cell.pk)
    rev.shot("07-review-queue")
    with page.expect_navigation():
        page.keyboard.press("Enter")  # confirm the model's class
    cell.refresh_from_db()
    assert cell.review_state in ("confirmed", "reclassified")
    assert cell.final_label == cell.predicted_label
    assert "as " + cell.get_final_label_display() in page.locator(".alert-success").inner_text()
    assert page.locator("#queue-empty").is_visible()  # a reviewed cell leaves the queue
    rev.shot("08-review-confirmed")
    page.keyboard.press("s")  # signs nothing: cells are signed with their specimen
    cell.refresh_from_db()
    assert cell.review_state != "signed"

    page.goto(f"/classifications/{cell.pk}/")
    trail = page.locator("#audit-trail tbody tr")
    assert trail.count() == 1
    assert page.locator("[data-sign]").count() == 0
    rev.shot("10-result-reviewed")
    assert rev.errors == []
    rev.close()
    assert list(ReviewEvent.objects.values_list("action", flat=True)) == [
        "confirm" if cell.status == "classified" else "reclassify",
    ]


def test_many_files_with_progress_and_a_rejected_file(live_server, user, password, settings, browser):
    tech = Session(browser, live_server.url)
    page = tech.page
    tech.login(user.username, password)
    page.goto("/upload/")
    bogus = Path(settings.MEDIA_ROOT).parent / "notes.jpg"
    bogus.write_text("this is not an image")
    page.set_input_files("#id_images", [str(FIXTURES / "MONOCYTE_1.jpeg"), str(bogus),
                                        str(FIXTURES / "NEUTROPHIL_2.jpeg")])
    page.click("#upload-submit")
    expect(page.locator("#progress-bar")).to_have_text("100%")
    progress = page.locator("#progress-text").inner_text()
    assert progress == "2 classified, 1 rejected (nothing stored for those)"
    assert page.locator("#upload-results .upload-ok").count() == 2
    error = page.locator("#upload-results .upload-error").inner_text()
    assert "notes.jpg is not an image that can be read" in error
    tech.shot("11-upload-many-progress")
    assert Classification.objects.count() == 2
    stored = sorted(p.name for p in Path(settings.MEDIA_ROOT).rglob("*") if p.is_file())
    # The two images and nothing from the rejected file; heat maps are drawn on first open.
    assert stored == sorted(Path(c.image.name).name for c in Classification.objects.all())
    assert all(not c.heatmap for c in Classification.objects.all())
    # Only the rejected upload logs a console error (its 415 answer).
    assert all("415" in error for error in tech.errors), tech.errors
    tech.close()


@pytest.fixture
def eosinophil_cell(db):
    return ClassificationFactory(predicted_label="EOSINOPHIL")


def test_reclassify_with_number_key_on_result_page(live_server, reviewer, password, eosinophil_cell, browser):
    cell = eosinophil_cell
    rev = Session(browser, live_server.url)
    rev.login(reviewer.username, password)
    rev.page.goto(f"/classifications/{cell.pk}/")
    with rev.page.expect_navigation():
        rev.page.keyboard.press("5")  # MONOCYTE (its key in the cell-class table)
    cell.refresh_from_db()
    assert (cell.review_state, cell.final_label) == ("reclassified", "MONOCYTE")
    assert rev.page.locator("#final-label").inner_text() == "Monocyte"
    rev.shot("12-result-reclassified")
    assert rev.errors == []
    rev.close()


def test_model_page_from_the_navigation(live_server, user, password, browser, settings):
    """The shipped model's page: reached from the nav bar, its version and figures shown, no console
    (CSP) errors."""
    import json

    settings.HEMATOVISION_PREDICTOR = "ml"
    card = json.loads((ROOT / "ml" / "artifacts" / "model_card.json").read_text())
    tech = Session(browser, live_server.url)
    page = tech.page
    tech.login(user.username, password)
    page.click("#nav-model")
    page.wait_for_url("**/model/")
    expect(page.locator("#model-identity code")).to_have_text(card["version"])
    assert page.locator("#model-classes tbody tr").count() == len(card["classes"])
    for source, name in (("bccd", "BCCD TEST"), ("pbc", "PBC test")):
        accuracy = card["test_metrics"]["per_source"][source]["accuracy"]
        expect(page.locator("#model-accuracy")).to_contain_text(f"{name}")
        expect(page.locator("#model-accuracy")).to_contain_text(f"accuracy {accuracy:.3f}")
    tech.shot("09-model")
    assert tech.errors == []
    tech.close()


def test_review_keys_act_on_the_card_tabbed_into(live_server, user, reviewer, password, browser):
    """Tabbing into the second card makes it the one the keys act on (not the previously selected one)."""
    first = ClassificationFactory(owner=user, predicted_label="EOSINOPHIL")
    second = ClassificationFactory(owner=user, predicted_label="EOSINOPHIL")
    rev = Session(browser, live_server.url)
    page = rev.page
    rev.login(reviewer.username, password)
    page.goto("/review/cells/")
    cards = page.locator("[data-review-item]")
    assert cards.nth(0).get_attribute("data-id") == str(first.pk)
    assert cards.nth(1).get_attribute("data-id") == str(second.pk)
    expect(cards.nth(0)).to_have_attribute("aria-current", "true")
    cards.nth(0).locator('[data-key="a"]').focus()  # the first card's last class button (artefact)
    page.keyboard.press("Tab")  # on into the second card (its thumbnail link)
    focused_card = page.evaluate("document.activeElement.closest('[data-review-item]').dataset.id")
    assert focused_card == str(second.pk)
    expect(cards.nth(1)).to_have_class(re.compile(r"\bselected\b"))
    expect(cards.nth(1)).to_have_attribute("aria-current", "true")
    assert cards.nth(0).get_attribute("aria-current") is None
    rev.shot("13-review-tabbed-into-second-card")
    with page.expect_navigation():
        page.keyboard.press("4")  # LYMPHOCYTE, for the card that has the focus
    first.refresh_from_db()
    second.refresh_from_db()
    assert (second.review_state, second.final_label) == ("reclassified", "LYMPHOCYTE")
    assert (first.review_state, first.final_label) == ("unreviewed", "")
    assert rev.errors == []
    rev.close()
