"""Issue 16's acceptance, end to end in Debian's Chromium (Playwright; never a downloaded browser).

A reviewer opens the worklist, reviews a 100-cell specimen whose cells the fake predictor read (ten of
them misclassified on purpose, two unidentified), signs it, and reads the differential in the PDF.
Every click, key press, drag and typed field after signing in is counted against the issue's budget
(25); timings are not asserted (they belong in benchmarks). Any console error (CSP included) fails.
Screenshots go to test-artifacts/screenshots/review-*.png.
"""

import io
import random
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image, ImageDraw

from classifier.cells import review as cell_review
from classifier.cells import services as cell_services
from classifier.models import Classification, ReviewEvent, Specimen
from classifier.testing.fake_predictor import FakePredictor
from classifier.tests.pdf_helpers import pdf_text
from classifier.tests.test_browser import (
    SCREENSHOTS,
    Session,
    browser,  # noqa: F401 - the fixture
)

playwright_sync = pytest.importorskip("playwright.sync_api")
expect = playwright_sync.expect

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

ACTION_BUDGET = 25
ACCESSION = "ACC-REVIEW-100"
# (what the fake predictor calls it, what the cell really is, how many)
PLAN = [
    (None, "ARTEFACT", 2),  # unidentified: flat images
    ("NEUTROPHIL", "NEUTROPHIL", 46),
    ("NEUTROPHIL", "BAND", 4),  # misclassified
    ("LYMPHOCYTE", "LYMPHOCYTE", 25),
    ("MONOCYTE", "MONOCYTE", 7),
    ("MONOCYTE", "LYMPHOCYTE", 3),  # misclassified
    ("EOSINOPHIL", "EOSINOPHIL", 10),
    ("EOSINOPHIL", "NEUTROPHIL", 3),  # misclassified
]
BACKGROUND = {"EOSINOPHIL": (225, 150, 150), "LYMPHOCYTE": (150, 220, 160), "MONOCYTE": (150, 160, 225)}


def _cell_png(predicted: str | None, rng: random.Random, fake: FakePredictor) -> bytes:
    """A synthetic cell (a stained disc on a tinted background) that the fake predictor reads as
    ``predicted`` (None: unidentified, a flat image)."""
    for _ in range(200):
        if predicted is None:
            base = rng.randint(120, 200)
            pixels = np.full((160, 160, 3), base, dtype=np.uint8)
            pixels[rng.randrange(160), rng.randrange(160)] = base + 3  # unique, still flat
            image = Image.fromarray(pixels)
        else:
            colour = BACKGROUND.get(predicted) or tuple(rng.randint(175, 195) for _ in range(3))
            image = Image.new("RGB", (160, 160), colour)
            draw = ImageDraw.Draw(image)
            r = rng.randint(30, 40)
            draw.ellipse((80 - r, 80 - r, 80 + r, 80 + r), fill=(200, 170, 210))
            n = rng.randint(14, 22)
            dx, dy = rng.randint(-8, 8), rng.randint(-8, 8)
            draw.ellipse((80 + dx - n, 80 + dy - n, 80 + dx + n, 80 + dy + n), fill=(95, 50, 140))
            noise = np.asarray(image, dtype=np.int16) + np.array(
                [[rng.randint(-6, 6) for _ in range(3)]], dtype=np.int16
            )
            image = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8))
        prediction = fake.predict_one(image)
        wanted = "unidentified" if predicted is None else "classified"
        if prediction.status == wanted and (predicted is None or prediction.label == predicted):
            out = io.BytesIO()
            image.save(out, format="PNG")
            return out.getvalue()
    raise AssertionError(f"no image the fake predictor calls {predicted}")


@pytest.fixture
def specimen_100(user):
    """100 cells uploaded through the services and the fake predictor: {cell id: true class}."""
    rng = random.Random(16)
    fake = FakePredictor()
    plan = [(predicted, truth) for predicted, truth, n in PLAN for _ in range(n)]
    rng.shuffle(plan)
    truth = {}
    for i, (predicted, real) in enumerate(plan):
        cell = cell_services.classification_create(
            user=user, data=_cell_png(predicted, rng, fake), filename=f"cell-{i:03d}.png", accession=ACCESSION
        )
        assert (cell.status, cell.predicted_label if predicted else None) == (
            "unidentified" if predicted is None else "classified",
            predicted,
        )
        truth[cell.pk] = (predicted, real)
    return truth


def test_review_a_100_cell_specimen_to_sign_off_within_the_action_budget(  # noqa: C901 - one end-to-end scenario
    live_server,
    reviewer,
    password,
    specimen_100,
    settings,
    browser,  # noqa: F811 - the fixture of this module
):
    truth = specimen_100
    settings.HEMATOVISION_LAB_ADDRESS = "1 Example Street | 12345 Sampletown"
    reviewer.first_name, reviewer.last_name = "Ada", "Lovelace"
    reviewer.save()
    rev = Session(browser, live_server.url)
    page = rev.page
    rev.login(reviewer.username, password)
    actions = []

    def act(what, fn, *args, **kwargs):
        actions.append(what)
        return fn(*args, **kwargs)

    def wrong(predicted, real):
        return [pk for pk, (p, r) in truth.items() if (p, r) == (predicted, real)]

    def tile(pk):
        return page.locator(f'.cell-tile[data-id="{pk}"]')

    def section(code):
        return page.locator(f'section.gallery-section[data-group="{code}"]')

    # 1. The worklist: the specimen, its counts and flags, nothing reviewed yet.
    act("open the worklist", page.click, "#nav-review")
    page.wait_for_url("**/review/")
    row = page.locator(f'#worklist tr[data-accession="{ACCESSION}"]')
    expect(row).to_contain_text("100")
    expect(row).to_contain_text("2 unidentified")
    expect(row.locator(".progress-text")).to_have_text("0 of 100 reviewed")
    rev.shot("review-01-worklist")

    # 2. The gallery: unidentified first, then the classes in the table's order.
    act("open the specimen", row.locator("a.worklist-open").click)
    page.wait_for_url(f"**/specimens/{ACCESSION}/review/")
    visible = page.locator("section.gallery-section:not([hidden])")
    groups = [visible.nth(i).get_attribute("data-group") for i in range(visible.count())]
    assert groups == ["UNIDENTIFIED", "NEUTROPHIL", "EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE"]
    assert section("NEUTROPHIL").locator(".group-count").inner_text() == "50"
    first = page.locator(".cell-tile").first
    assert first.get_attribute("data-status") == "unidentified"
    thumb = first.locator("img")
    expect(thumb).to_have_js_property("complete", True)
    assert thumb.evaluate("img => img.naturalWidth") >= 128
    assert thumb.bounding_box()["width"] >= 128
    rev.shot("review-02-gallery")

    # 3. The two unidentified cells: click, shift-click, artefact's key.
    unidentified = section("UNIDENTIFIED").locator(".cell-tile")
    act("select the first unidentified cell", unidentified.first.click)
    act("shift-click the last", unidentified.last.click, modifiers=["Shift"])
    act("key a: artefact", page.keyboard.press, "a")
    expect(section("ARTEFACT").locator(".cell-tile")).to_have_count(2)
    expect(section("UNIDENTIFIED")).to_be_hidden()

    # 4. Four band neutrophils the model called neutrophils: click, ctrl-click, band's key (9).
    bands = wrong("NEUTROPHIL", "BAND")
    act("select a band", tile(bands[0]).click)
    expect(page.locator("#judge-id")).to_have_text(f"#{bands[0]}")
    references = page.locator("#reference-cells .reference-row")
    expect(references.first).to_have_attribute("data-class", "NEUTROPHIL")
    expect(references.first.locator("img.reference-img")).to_have_count(3)
    expect(references.first.locator("img.reference-img").first).to_have_js_property("complete", True)
    rev.shot("review-03-cell-beside-reference-cells")
    for pk in bands[1:]:
        act("ctrl-click another band", tile(pk).click, modifiers=["Control"])
    expect(page.locator(".cell-tile.selected")).to_have_count(4)
    act("key 9: band", page.keyboard.press, "9")
    expect(section("BAND").locator(".cell-tile")).to_have_count(4)

    # 5. Three lymphocytes the model called monocytes: dragged one by one onto Lymphocyte (the
    # palette stays in view while the gallery scrolls).
    for pk in wrong("MONOCYTE", "LYMPHOCYTE"):
        act(
            "drag onto Lymphocyte",
            page.drag_and_drop,
            f'.cell-tile[data-id="{pk}"]',
            '#class-palette [data-drop="LYMPHOCYTE"]',
        )
        expect(section("LYMPHOCYTE").locator(f'.cell-tile[data-id="{pk}"]')).to_have_count(1)

    # 6. Three neutrophils the model called eosinophils: click, ctrl-click, neutrophil's key (1).
    neutrophils = wrong("EOSINOPHIL", "NEUTROPHIL")
    act("select a neutrophil", tile(neutrophils[0]).click)
    for pk in neutrophils[1:]:
        act("ctrl-click another", tile(pk).click, modifiers=["Control"])
    act("key 1: neutrophil", page.keyboard.press, "1")
    for pk in neutrophils:
        expect(section("NEUTROPHIL").locator(f'.cell-tile[data-id="{pk}"]')).to_have_count(1)

    # 7. Accept the rest of each class the model called.
    for code in ("NEUTROPHIL", "EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE"):
        act(f"accept the rest of {code}", section(code).locator(".accept-rest").click)
        expect(section(code).locator(".rest-count")).to_have_text("0")
    expect(page.locator("#progress-text")).to_have_text("100 of 100 reviewed")

    # The differential on the page, updated in place (no reload): 98 white cells.
    expected = {
        "NEUTROPHIL": (49, "50.0"),
        "BAND": (4, "4.1"),
        "LYMPHOCYTE": (28, "28.6"),
        "MONOCYTE": (7, "7.1"),
        "EOSINOPHIL": (10, "10.2"),
    }
    for code, (count, percent) in expected.items():
        cells = page.locator(f'#differential tr[data-label="{code}"] td')
        expect(cells.nth(1)).to_have_text(str(count))
        expect(cells.nth(2)).to_have_text(percent)
    expect(page.locator("#counted")).to_have_text("98")
    expect(page.locator('#differential tr[data-label="ARTEFACT"] .count')).to_have_text("2")
    rev.shot("review-04-gallery-reviewed")

    # 8. One sign-off, confirmed with the differential being signed and a comment.
    act("sign the specimen", page.click, "#sign-button")
    page.wait_for_url(f"**/specimens/{ACCESSION}/sign/")
    confirmation = page.locator("#sign-confirmation")
    expect(confirmation.locator('#differential tr[data-label="NEUTROPHIL"] td').nth(2)).to_have_text("50.0")
    expect(confirmation).to_contain_text("100 cells")
    comment = "Four band forms; no blasts seen."
    act("type a comment", page.fill, "#id_comment", comment)
    rev.shot("review-05-sign-off-confirmation")
    act("confirm", page.click, "#confirm-sign")
    page.wait_for_url(f"**/specimens/{ACCESSION}/")
    expect(page.locator("#specimen-state")).to_have_text("Signed")
    expect(page.locator("#signed-by")).to_have_text("Ada Lovelace")

    assert len(actions) <= ACTION_BUDGET, actions
    print(f"\nreviewed and signed {len(truth)} cells in {len(actions)} actions")

    # The record: every cell has its true class, one audit row per change, one sign-off.
    specimen = Specimen.objects.get(accession=ACCESSION)
    assert specimen.is_signed
    assert specimen.review_comment == comment
    assert (specimen.signed_by_name, specimen.signed_by_role) == ("Ada Lovelace", "Reviewer")
    final = dict(Classification.objects.values_list("pk", "final_label"))
    assert final == {pk: real for pk, (_, real) in truth.items()}
    events = list(ReviewEvent.objects.values_list("action", flat=True))
    assert (events.count("reclassify"), events.count("confirm"), events.count("sign")) == (12, 88, 100)

    # 9. The PDF: the same differential, the comment, the signer's name and role, page numbers.
    response = page.request.get(f"/specimens/{ACCESSION}/report.pdf")
    assert response.status == 200
    assert response.headers["content-type"] == "application/pdf"
    pdf = SCREENSHOTS / "review-report.pdf"
    pdf.write_bytes(response.body())
    if shutil.which("pdftoppm") is None:
        pytest.fail("poppler-utils is missing: scripts/test_prereqs.py installs it")
    text = pdf_text(pdf.read_bytes())
    for code, (count, percent) in expected.items():
        name = {"BAND": "Band neutrophil"}.get(code, code.title())
        assert re.search(rf"{name}\s+{count}\s+{re.escape(percent)}\b", text), (name, text[:2000])
    assert re.search(r"White cells counted\s+98\s+100\.0", text)
    assert comment in text
    assert "Ada Lovelace (Reviewer)" in text
    assert "1 Example Street" in text
    assert "12345 Sampletown" in text
    pages = int(re.search(r"Page 1 of (\d+)", text).group(1))
    assert f"Page {pages} of {pages}" in text
    # The gallery is grouped like the portal's: band neutrophils after the model's classes.
    assert text.index("Neutrophil — 49 cell(s)") < text.index("Band neutrophil — 4 cell(s)")
    subprocess.run(
        [
            "pdftoppm",
            "-png",
            "-r",
            "70",
            "-f",
            "1",
            "-l",
            "1",
            "-singlefile",
            str(pdf),
            str(SCREENSHOTS / "review-06-report-pdf"),
        ],
        check=True,
    )
    assert (SCREENSHOTS / "review-06-report-pdf.png").stat().st_size > 10_000

    assert rev.errors == []
    rev.close()


def test_reviewer_only_class_shows_no_reference_image_and_zoom(
    live_server,
    reviewer,
    password,
    user,
    browser,  # noqa: F811
):
    """A cell given a class with no licensed reference image says so; Z zooms the cell."""
    rng = random.Random(3)
    fake = FakePredictor()
    cell = cell_services.classification_create(
        user=user, data=_cell_png("LYMPHOCYTE", rng, fake), accession="ACC-Z"
    )
    cell_review.classification_review(classification=cell, reviewer=reviewer, label="BLAST")
    rev = Session(browser, live_server.url)
    page = rev.page
    rev.login(reviewer.username, password)
    page.goto("/specimens/ACC-Z/review/")
    expect(page.locator("#judge-id")).to_have_text(f"#{cell.pk}")
    blast = page.locator('#reference-cells .reference-row[data-class="BLAST"]')
    expect(blast.locator(".reference-none")).to_have_text(
        "No reference image for Blast (none licensed here)."
    )
    expect(page.locator('#reference-cells .reference-row[data-class="LYMPHOCYTE"] img')).to_have_count(3)
    page.keyboard.press("z")
    expect(page.locator("#zoom-overlay")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#zoom-overlay")).to_be_hidden()
    assert rev.errors == []
    rev.close()


def test_a_64_character_accession_keeps_the_state_column_on_screen(
    live_server,
    user,
    password,
    browser,  # noqa: F811
):
    """Issue 16: a 64-character accession pushed the specimen table's State column off screen."""
    from classifier.tests.factories import SpecimenFactory

    accession = "ACC-" + "7" * 60
    SpecimenFactory(created_by=user, accession=accession)
    tech = Session(browser, live_server.url)
    page = tech.page
    page.set_viewport_size({"width": 1024, "height": 700})
    tech.login(user.username, password)
    page.goto("/specimens/")
    state = page.locator("#specimen-table tbody tr").first.locator("td").last
    box = state.bounding_box()
    assert box["x"] + box["width"] <= 1024
    wide = page.evaluate("""() => Array.from(document.querySelectorAll('body *'))
        .filter((el) => el.getBoundingClientRect().right > 1024)
        .map((el) => el.tagName + '#' + el.id + '.' + el.className).slice(0, 8)""")
    assert page.evaluate("document.documentElement.scrollWidth") <= 1024, wide
    tech.shot("review-07-long-accession")
    assert tech.errors == []
    tech.close()
