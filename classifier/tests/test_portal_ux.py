"""Portal usability and accessibility regressions: keyboard review acts on the focused card, times
show their zone, 404/500 pages in the site's style, badge contrast, the result page's <h1>, a truthful
empty review queue, and the review state in the specimen gallery for screen readers."""

import datetime as dt
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from django.contrib.auth.decorators import login_not_required
from django.template.loader import get_template
from django.urls import path, reverse

from classifier.models import CellClass, Classification, ReviewEvent, ReviewState, Specimen, Status
from classifier.tests.factories import ClassificationFactory, SpecimenFactory

ROOT = Path(__file__).resolve().parents[2]

# Winter (CET, UTC+1: 23:30 UTC is already the next day in Berlin) and summer (CEST, UTC+2).
WINTER = dt.datetime(2026, 2, 28, 23, 30, tzinfo=dt.UTC)
SUMMER = dt.datetime(2026, 7, 1, 10, 5, tzinfo=dt.UTC)
WINTER_BERLIN = '<time datetime="2026-03-01T00:30:00+01:00">2026-03-01 00:30 CET</time>'
SUMMER_BERLIN = '<time datetime="2026-07-01T12:05:00+02:00">2026-07-01 12:05 CEST</time>'


# ---------------------------------------------------------------- 1. review keys act on the focused card


def test_review_queue_marks_the_selected_card_aria_current(reviewer_client, user):
    first, second = ClassificationFactory(owner=user), ClassificationFactory(owner=user)
    html = reviewer_client.get(reverse("review-queue")).content.decode()
    assert (
        f'<div class="card shadow-sm mb-2 review-item selected" aria-current="true" data-review-item '
        f'data-id="{first.pk}" id="cell-{first.pk}" tabindex="-1">'
    ) in html
    assert (
        f'<div class="card shadow-sm mb-2 review-item" data-review-item data-id="{second.pk}" '
        f'id="cell-{second.pk}" tabindex="-1">'
    ) in html
    assert html.count('aria-current="true"') == 1


REVIEW_JS_HARNESS = r"""
// A minimal DOM: three review cards, each with buttons 1-4 and a sign button.
const clicked = [];
function attrs() { return { a: {}, setAttribute(k, v) { this.a[k] = String(v); },
  removeAttribute(k) { delete this.a[k]; }, getAttribute(k) { return k in this.a ? this.a[k] : null; },
  hasAttribute(k) { return k in this.a; } }; }
const items = [0, 1, 2].map((i) => {
  const item = Object.assign(attrs(), { id: i, listeners: {},
    classList: { s: new Set(i === 0 ? ["selected"] : []), contains(c) { return this.s.has(c); },
                 add(c) { this.s.add(c); }, remove(c) { this.s.delete(c); } },
    addEventListener(t, f) { (this.listeners[t] = this.listeners[t] || []).push(f); },
    fire(t) { (this.listeners[t] || []).forEach((f) => f({ type: t })); },
    scrollIntoView() {}, focus() {} });
  const button = (what) => ({ tagName: "BUTTON", disabled: false, click() { clicked.push(i + ":" + what); },
                              closest: (sel) => (sel === "[data-review-item]" ? item : null) });
  item.keys = [1, 2, 3, 4].map((k) => button("key" + k));
  item.sign = button("sign");
  item.querySelector = (sel) => {
    const m = sel.match(/data-key="(\d)"/);
    if (m) return item.keys[+m[1] - 1];
    return sel === "[data-sign]" ? item.sign : null;
  };
  return item;
});
let keydown;
global.document = { querySelectorAll: () => items,
                    addEventListener: (t, f) => { if (t === "keydown") keydown = f; } };
require(process.argv[2]);
const current = () => items.map((item) => item.getAttribute("aria-current"));
const key = (k, target) => keydown({ key: k, target, preventDefault() {} });
const out = { initial: current() };
// Tab into the SECOND card (focusin, no click, no arrow key) and press 2, then S.
items[1].fire("focusin");
out.afterFocus = current();
out.selected = items.map((item) => item.classList.contains("selected"));
key("2", items[1].keys[0]);
key("s", items[1].keys[0]);
// Focus in the THIRD card with no focusin seen (focused before the script ran): keys follow the focus.
key("3", items[2].keys[0]);
out.clicked = clicked;
out.final = current();
console.log(JSON.stringify(out));
"""


def test_review_js_keys_act_on_the_card_holding_the_focus(tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (the browser test covers this too)")
    harness = tmp_path / "harness.js"
    harness.write_text(REVIEW_JS_HARNESS)
    run = subprocess.run([node, str(harness), str(ROOT / "static" / "js" / "review.js")],
                         capture_output=True, text=True, timeout=60, check=True)
    out = json.loads(run.stdout)
    assert out["initial"] == ["true", None, None]
    assert out["afterFocus"] == [None, "true", None]
    assert out["selected"] == [False, True, False]
    assert out["clicked"] == ["1:key2", "2:key3"]  # S signs nothing: cells are signed with their specimen
    assert out["final"] == [None, None, "true"]


# ---------------------------------------------------------------- 2. times carry their zone


@pytest.fixture
def berlin(settings):
    settings.TIME_ZONE = "Europe/Berlin"


def test_result_page_shows_times_in_the_lab_zone_with_its_abbreviation(berlin, reviewer_client, user,
                                                                        reviewer):
    cell = ClassificationFactory(owner=user, review_state=ReviewState.SIGNED,
                                 final_label=CellClass.EOSINOPHIL, reviewed_by=reviewer,
                                 signed_by=reviewer, signed_at=SUMMER)
    event = ReviewEvent.objects.create(classification=cell, actor=reviewer, action=ReviewEvent.Action.CONFIRM,
                                       from_label="EOSINOPHIL", to_label="EOSINOPHIL")
    Classification.objects.filter(pk=cell.pk).update(created_at=WINTER)
    ReviewEvent.objects.filter(pk=event.pk).update(created_at=SUMMER)
    html = reviewer_client.get(reverse("classification-detail", args=[cell.pk])).content.decode()
    assert f'<dt class="col-sm-4">Submitted</dt><dd class="col-sm-8">{WINTER_BERLIN} by tech</dd>' in html
    assert f'<dt class="col-sm-4">Signed</dt><dd class="col-sm-8">{SUMMER_BERLIN} by reviewer</dd>' in html
    assert f"<tr><td>{SUMMER_BERLIN}</td><td>reviewer</td><td>Confirmed" in html


def test_specimen_page_shows_received_and_signed_in_the_lab_zone(berlin, reviewer_client, user, reviewer):
    spec = SpecimenFactory(created_by=user)
    Specimen.objects.filter(pk=spec.pk).update(created_at=WINTER, signed_at=SUMMER, signed_by=reviewer)
    html = reviewer_client.get(reverse("specimen-detail", args=[spec.accession])).content.decode()
    assert f"Received {WINTER_BERLIN} · opened by tech" in html
    assert f'signed by <strong id="signed-by">reviewer</strong> at {SUMMER_BERLIN}' in html


def test_history_and_review_queue_show_the_zone(berlin, reviewer_client, user):
    cell = ClassificationFactory(owner=user)
    Classification.objects.filter(pk=cell.pk).update(created_at=WINTER)
    history = reviewer_client.get(reverse("classification-list")).content.decode()
    assert f'<td class="small">{WINTER_BERLIN}</td>' in history
    queue = reviewer_client.get(reverse("review-queue")).content.decode()
    assert f"tech · {WINTER_BERLIN}</div>" in queue


def test_relative_times_carry_the_exact_time_with_zone(berlin, reviewer_client, user):
    spec = SpecimenFactory(created_by=user)
    Specimen.objects.filter(pk=spec.pk).update(created_at=WINTER)
    html = reviewer_client.get(reverse("specimen-list")).content.decode()
    assert '<time datetime="2026-03-01T00:30:00+01:00" title="2026-03-01 00:30 CET">' in html


# ---------------------------------------------------------------- 3. 404 and 500 pages


def _without_csrf(html):
    return re.sub(r'name="csrfmiddlewaretoken" value="[^"]*"', "", html)


def test_missing_result_gets_the_site_404_page(tech_client, user, other_user):
    response = tech_client.get(reverse("classification-detail", args=[987654]))
    assert response.status_code == 404
    html = response.content.decode()
    assert (
        '<h1 class="h5"><i class="bi bi-question-circle" aria-hidden="true"></i> Page not found (404)</h1>'
    ) in html
    assert '<a class="btn btn-primary btn-sm" href="/" id="not-found-home">Back to the dashboard</a>' in html
    assert 'id="nav-history"' in html  # the site's navigation, not Django's bare page
    # Another technologist's result answers the very same page: nothing tells that it exists.
    theirs = ClassificationFactory(owner=other_user)
    other = tech_client.get(reverse("classification-detail", args=[theirs.pk]))
    assert other.status_code == 404
    assert _without_csrf(other.content.decode()) == _without_csrf(html)
    assert "Classification" not in html
    assert "matches the given query" not in html


def test_500_template_renders_with_an_empty_context():
    html = get_template("500.html").render({})
    assert "<h1>Something went wrong (500)</h1>" in html
    assert '<nav class="navbar"><a href="/">HematoVision</a></nav>' in html
    assert '<a class="btn" href="/">Back to the dashboard</a>' in html
    assert "{%" not in (ROOT / "templates" / "500.html").read_text()  # no tags: nothing can fail in it


@login_not_required
def _boom(request):
    raise RuntimeError("boom")


urlpatterns = [path("boom/", _boom)]


def test_unhandled_error_answers_the_500_page(client, settings):
    settings.ROOT_URLCONF = __name__
    client.raise_request_exception = False
    response = client.get("/boom/")
    assert response.status_code == 500
    assert "<h1>Something went wrong (500)</h1>" in response.content.decode()


# ---------------------------------------------------------------- 4. class badge contrast


def _luminance(hex_colour):
    value = hex_colour.lstrip("#")
    if len(value) == 3:
        value = "".join(c * 2 for c in value)
    channels = [int(value[i:i + 2], 16) / 255 for i in (0, 2, 4)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _contrast(a, b):
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def _css_rules(css):
    """{selector: {property: value}} for the simple rules of hematovision.css (comments dropped)."""
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    rules = {}
    for selector, body in re.findall(r"([^{}]+)\{([^}]*)\}", css):
        props = rules.setdefault(selector.strip(), {})
        for declaration in body.split(";"):
            if ":" in declaration:
                name, value = declaration.split(":", 1)
                props[name.strip()] = value.replace("!important", "").strip()
    return rules


def test_contrast_helper_matches_wcag_reference_values():
    assert _contrast("#000", "#fff") == pytest.approx(21.0)
    assert _contrast("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)


def test_class_badges_reach_wcag_aa_contrast_and_stay_distinct(tech_client):
    """Every class of the table has a badge colour on every page, legible (AA) and its own."""
    from classifier.templatetags.cell_classes import class_styles_css

    css = (ROOT / "static" / "css" / "hematovision.css").read_text()
    assert ".cell-eosinophil" not in css  # the colours live in the cell-class table only
    rules = _css_rules(css + class_styles_css())
    default_text = rules[".cell-badge"]["color"]
    backgrounds = {}
    for cls in CellClass:
        name = cls.value.lower()
        background = rules[f".cell-{name}"]["background-color"]
        text = rules.get(f".cell-badge.cell-{name}", {}).get("color", default_text)
        assert re.fullmatch(r"#[0-9a-fA-F]{3}|#[0-9a-fA-F]{6}", background), background
        ratio = _contrast(text, background)
        assert ratio >= 4.5, f"{name}: {text} on {background} is {ratio:.2f}:1"
        backgrounds[name] = background.lower()
    assert len(set(backgrounds.values())) == len(CellClass)
    html = tech_client.get(reverse("dashboard")).content.decode()
    assert f"<style>\n{class_styles_css()}\n</style>" in html


# ---------------------------------------------------------------- 5. the result page has an <h1>


def test_result_page_has_one_h1(tech_client, user):
    cell = ClassificationFactory(owner=user, predicted_label="MONOCYTE")
    html = tech_client.get(reverse("classification-detail", args=[cell.pk])).content.decode()
    assert f'<h1 class="h4 mb-0 me-auto" id="result-title">Result #{cell.pk}</h1>' in html
    assert len(re.findall(r"<h1[ >]", html)) == 1
    assert '<div class="h3 mb-1" id="predicted-label">Monocyte</div>' in html


# ---------------------------------------------------------------- 6. empty review queue tells the truth


def test_empty_queue_does_not_claim_everything_is_signed(reviewer_client, user):
    ClassificationFactory(owner=user, status=Status.PENDING, predicted_label="", confidence=None,
                          probabilities={})
    html = reviewer_client.get(reverse("review-queue")).content.decode()
    assert (
        '<p class="text-muted" id="queue-empty">Nothing to review. Images still waiting for the model are '
        "not listed here until they are classified.</p>"
    ) in html
    assert "every result is signed" not in html


# ---------------------------------------------------------------- 7. gallery names the review state


def test_specimen_gallery_names_each_cells_review_state(reviewer_client, user, reviewer):
    spec = SpecimenFactory(created_by=user)
    reviewed = ClassificationFactory(owner=user, specimen=spec, review_state=ReviewState.CONFIRMED,
                                     reviewed_by=reviewer, final_label=CellClass.EOSINOPHIL)
    waiting = ClassificationFactory(owner=user, specimen=spec)
    html = reviewer_client.get(reverse("specimen-detail", args=[spec.accession])).content.decode()
    assert f'alt="cell {reviewed.pk}, confirmed" loading="lazy">' in html
    assert (
        f'#{reviewed.pk} <i class="bi bi-check-circle text-success" aria-hidden="true" title="Confirmed"></i>'
        '<span class="visually-hidden"> (confirmed)</span>'
    ) in html
    assert f'alt="cell {waiting.pk}, unreviewed" loading="lazy">' in html
    assert f'#{waiting.pk}<span class="visually-hidden"> (unreviewed)</span>' in html
