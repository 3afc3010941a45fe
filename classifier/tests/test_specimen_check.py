"""The specimen check (``ml.shift``): a specimen with far more cells flagged than a validated lab gives
raises the alarm; its pages say so, its cells are accepted one at a time, and every report carries it.

The tests run on the fake predictor, which has no rule of its own: the default rule
(``ml.shift.DEFAULT_BASE_RATE``) judges, and the alarming count is taken from it, not written here.
"""

import csv
import io
import json
import re

import pytest
from django.urls import reverse

from classifier import inference
from classifier.models import Classification, ReviewEvent, ReviewState, Status
from classifier.specimens import report_pdf
from classifier.specimens import selectors as specimen_selectors
from classifier.tests.factories import ClassificationFactory, SpecimenFactory
from classifier.tests.pdf_helpers import pdf_text
from classifier.tests.test_hl7 import parse as parse_hl7
from ml import shift

pytestmark = pytest.mark.django_db

RULE = shift.SpecimenRule(shift.DEFAULT_BASE_RATE)
ALARM_AT = RULE.critical(10)  # the smallest alarming count of flagged cells among 10 (6 at 10 %)


def _specimen(user, accession, *, classified, unidentified, pending=0):
    specimen = SpecimenFactory(created_by=user, accession=accession)
    cells = [ClassificationFactory(owner=user, specimen=specimen, predicted_label="NEUTROPHIL")
             for _ in range(classified)]
    cells += [ClassificationFactory(owner=user, specimen=specimen, unidentified=True)
              for _ in range(unidentified)]
    cells += [ClassificationFactory(owner=user, specimen=specimen, status=Status.PENDING, predicted_label="",
                                    confidence=None, probabilities={}, model_version="")
              for _ in range(pending)]
    return specimen, cells


@pytest.fixture
def alarmed(user):
    """10 cells read, ALARM_AT of them flagged (and two pending, which the check leaves out)."""
    return _specimen(user, "CHK-ALARM", classified=10 - ALARM_AT, unidentified=ALARM_AT, pending=2)


@pytest.fixture
def quiet(user):
    return _specimen(user, "CHK-QUIET", classified=9, unidentified=1)


def _warning(flagged=ALARM_AT, cells=10):
    return (
        f"Specimen check: {flagged} of {cells} cells ({round(100 * flagged / cells)} %) were flagged by the "
        f"model, far more than in the labs it was validated on (the alarm is at {ALARM_AT}). The stain, the "
        "camera or the cells themselves differ from what the model knows: review every cell one by one; "
        "accepting cells in bulk is off for this specimen."
    )


COMMENT = (
    f"Specimen check: {ALARM_AT} of 10 cells ({10 * ALARM_AT} %) were flagged by the model, far more than "
    f"in the labs it was validated on (alarm at {ALARM_AT}); the specimen is reviewed cell by cell."
)


# ---------------------------------------------------------------- the verdict


def test_the_fake_predictor_is_judged_by_the_default_rule():
    assert inference.specimen_rule() == RULE
    assert ALARM_AT is not None
    assert RULE.critical(9) is None


def test_verdict_alarm_quiet_and_not_judged(user, alarmed, quiet):
    few, _ = _specimen(user, "CHK-FEW", classified=0, unidentified=9)
    one_less, _ = _specimen(user, "CHK-ONE-LESS", classified=11 - ALARM_AT, unidentified=ALARM_AT - 1)
    verdicts = {
        s.accession: specimen_selectors.specimen_differential(specimen=s).specimen_check.to_dict()
        for s in (alarmed[0], quiet[0], few, one_less)
    }
    assert verdicts == {
        "CHK-ALARM": {"cells": 10, "flagged": ALARM_AT, "flagged_share": ALARM_AT / 10,
                      "alarm_at": ALARM_AT, "alarm": True},
        "CHK-QUIET": {"cells": 10, "flagged": 1, "flagged_share": 0.1, "alarm_at": ALARM_AT, "alarm": False},
        "CHK-FEW": {"cells": 9, "flagged": 9, "flagged_share": 1.0, "alarm_at": None, "alarm": False},
        "CHK-ONE-LESS": {"cells": 10, "flagged": ALARM_AT - 1, "flagged_share": (ALARM_AT - 1) / 10,
                         "alarm_at": ALARM_AT, "alarm": False},
    }


def test_a_flagged_cell_stays_flagged_once_a_reviewer_labels_it(reviewer_client, alarmed):
    specimen, cells = alarmed
    flagged = [c for c in cells if c.status == Status.UNIDENTIFIED]
    for cell in flagged:
        response = _post(reviewer_client, specimen.accession, [cell], "LYMPHOCYTE")
        assert response.status_code == 200
    check = specimen_selectors.specimen_differential(specimen=specimen).specimen_check
    assert (check.cells, check.flagged, check.alarm) == (10, ALARM_AT, True)


def test_a_predictor_with_its_own_rule_is_judged_by_it(monkeypatch, alarmed):
    strict = shift.SpecimenRule(0.5)
    monkeypatch.setattr(inference.get_predictor(), "specimen_rule", strict, raising=False)
    assert inference.specimen_rule() is strict
    check = specimen_selectors.specimen_differential(specimen=alarmed[0]).specimen_check
    assert (check.critical, check.alarm) == (strict.critical(10), ALARM_AT >= strict.critical(10))


def test_the_real_models_rule_comes_from_its_card_without_loading_it(settings):
    settings.HEMATOVISION_PREDICTOR = "ml"
    from ml import predictor as ml_predictor

    card = json.loads((ml_predictor.DEFAULT_MODEL_PATH.parent / "model_card.json").read_text())
    assert inference.specimen_rule() == shift.rule_from_card(card)
    assert inference.readiness()["state"] == "idle"  # nothing was loaded
    settings.HEMATOVISION_MODEL_PATH = "/nonexistent/model.keras"
    assert inference.specimen_rule() == RULE


# ---------------------------------------------------------------- the pages


def test_pages_of_an_alarmed_specimen_warn(reviewer_client, alarmed):
    accession = alarmed[0].accession
    for name in ("specimen-detail", "specimen-review", "specimen-sign"):
        html = reviewer_client.get(reverse(name, args=[accession])).content.decode()
        assert 'class="alert alert-danger" role="alert" id="specimen-check"' in html, name
        assert _warning() in html, name
    gallery = reviewer_client.get(reverse("specimen-review", args=[accession])).content.decode()
    assert 'data-bulk-accept="off"' in gallery
    assert "accept-rest" not in gallery  # no "Accept the rest of this class" button


def test_pages_of_a_quiet_specimen_show_the_counts_only(reviewer_client, quiet):
    accession = quiet[0].accession
    for name in ("specimen-detail", "specimen-review", "specimen-sign"):
        html = reviewer_client.get(reverse(name, args=[accession])).content.decode()
        assert "alert alert-danger\" role=\"alert\" id=\"specimen-check\"" not in html, name
        assert f"Specimen check: 1 of 10 cells flagged by the model (the alarm is at {ALARM_AT})." in html
    gallery = reviewer_client.get(reverse("specimen-review", args=[accession])).content.decode()
    assert 'data-bulk-accept="on"' in gallery
    assert 'class="btn btn-sm btn-outline-success ms-auto accept-rest" data-accept="NEUTROPHIL"' in gallery


def test_worklist_and_specimen_list_badge_the_alarmed_specimen_only(reviewer_client, alarmed, quiet, user):
    few, _ = _specimen(user, "CHK-FEW", classified=0, unidentified=9)  # too few cells to judge
    badge = re.compile(r'<tr data-accession="([^"]+)">.*?</tr>', re.S)
    worklist = reviewer_client.get(reverse("review-worklist")).content.decode()
    rows = {m.group(1): m.group(0) for m in badge.finditer(worklist)}
    assert set(rows) == {"CHK-ALARM", "CHK-QUIET", "CHK-FEW"}
    assert {a for a, row in rows.items() if "specimen-check-badge" in row} == {"CHK-ALARM"}
    assert (
        f'title="Specimen check: {ALARM_AT} of 10 cells flagged by the model (alarm at {ALARM_AT}); review '
        'every cell one by one"' in rows["CHK-ALARM"]
    )
    listed = reviewer_client.get(reverse("specimen-list")).content.decode()
    rows = re.findall(r'<tr>\s*<td class="accession-cell"><a href="[^"]+">([^<]+)</a>.*?</tr>', listed, re.S)
    assert sorted(rows) == ["CHK-ALARM", "CHK-FEW", "CHK-QUIET"]
    assert listed.count("specimen-check-badge") == 1
    alarmed_row = listed[listed.index(">CHK-ALARM<"):]
    assert "specimen-check-badge" in alarmed_row[: alarmed_row.index("</tr>")]


# ---------------------------------------------------------------- review


def _post(client, accession, cells, label=None):
    body = {"cells": {str(c.pk): c.review_version for c in cells}, "label": label}
    return client.post(
        reverse("specimen-review-cells", args=[accession]), json.dumps(body), content_type="application/json"
    )


def _states(cells):
    return {c.pk: (c.review_state, c.final_label) for c in Classification.objects.filter(
        pk__in=[c.pk for c in cells])}


def test_bulk_accept_is_refused_in_an_alarmed_specimen(reviewer_client, alarmed):
    specimen, cells = alarmed
    classified = [c for c in cells if c.status == Status.CLASSIFIED]
    before = _states(cells)
    response = _post(reviewer_client, specimen.accession, classified)
    assert response.status_code == 400
    assert response.json() == {
        "error": f"Specimen check: {ALARM_AT} of 10 cells of specimen CHK-ALARM were flagged by the model, "
        "far more than in the labs it was validated on; review every cell one by one (accepting cells in "
        "bulk is off for this specimen).",
        "code": "specimen_check",
    }
    assert _states(cells) == before
    assert not ReviewEvent.objects.exists()


def test_one_cell_at_a_time_and_reclassifying_stay_allowed(reviewer_client, reviewer, alarmed):
    specimen, cells = alarmed
    first, second = [c for c in cells if c.status == Status.CLASSIFIED][:2]
    assert _post(reviewer_client, specimen.accession, [first]).status_code == 200
    flagged = [c for c in cells if c.status == Status.UNIDENTIFIED]
    assert _post(reviewer_client, specimen.accession, [second, *flagged], "MONOCYTE").status_code == 200
    assert _states([first, second, *flagged]) == {
        first.pk: (ReviewState.CONFIRMED, "NEUTROPHIL"),
        second.pk: (ReviewState.RECLASSIFIED, "MONOCYTE"),
        **{c.pk: (ReviewState.RECLASSIFIED, "MONOCYTE") for c in flagged},
    }
    assert ReviewEvent.objects.filter(actor=reviewer).count() == 2 + len(flagged)


def test_bulk_accept_still_works_in_a_quiet_specimen(reviewer_client, quiet):
    specimen, cells = quiet
    classified = [c for c in cells if c.status == Status.CLASSIFIED]
    response = _post(reviewer_client, specimen.accession, classified)
    assert response.status_code == 200
    assert set(_states(classified).values()) == {(ReviewState.CONFIRMED, "NEUTROPHIL")}
    assert ReviewEvent.objects.count() == 9


# ---------------------------------------------------------------- the API and the reports


def test_api_specimen_carries_the_check(tech_api, alarmed):
    body = tech_api.get("/api/v1/specimens/CHK-ALARM/").json()
    assert body["differential"]["specimen_check"] == {
        "cells": 10, "flagged": ALARM_AT, "flagged_share": ALARM_AT / 10, "alarm_at": ALARM_AT, "alarm": True,
    }


def test_pdf_and_csv_carry_one_line_when_alarmed(client, user, alarmed, quiet):
    client.force_login(user)
    pdf = " ".join(pdf_text(report_pdf.specimen_report_pdf(specimen=alarmed[0])).split())
    assert COMMENT in pdf
    assert "Specimen check" not in pdf_text(report_pdf.specimen_report_pdf(specimen=quiet[0]))
    rows = list(csv.reader(io.StringIO(
        client.get(reverse("specimen-report-csv", args=["CHK-ALARM"])).content.decode()
    )))
    assert len(rows) == 1 + 12 + 1  # header, the cells (pending ones too), the check's line
    assert rows[-1] == [COMMENT]
    quiet_csv = client.get(reverse("specimen-report-csv", args=["CHK-QUIET"])).content.decode()
    assert len(list(csv.reader(io.StringIO(quiet_csv)))) == 1 + 10


def test_the_specimens_csv_ends_each_row_with_the_check(client, user, alarmed, quiet):
    _specimen(user, "CHK-FEW", classified=0, unidentified=9)
    client.force_login(user)
    export = client.get(reverse("specimen-export"), {"start": "2000-01-01", "end": "2999-12-31"})
    rows = list(csv.reader(io.StringIO(export.content.decode())))
    assert rows[0][-3:] == ["signed_by", "signed_at", "specimen_check"]
    assert {row[0]: row[-1] for row in rows[1:]} == {
        "CHK-ALARM": "alarm", "CHK-QUIET": "clear", "CHK-FEW": "not_judged"
    }


def test_fhir_conclusion_and_hl7_note_carry_it(tech_api, alarmed):
    bundle = tech_api.get("/api/v1/specimens/CHK-ALARM/fhir/").json()
    resources = [entry["resource"] for entry in bundle["entry"]]
    (report,) = [r for r in resources if r["resourceType"] == "DiagnosticReport"]
    assert report["conclusion"].endswith(" " + COMMENT)
    response = tech_api.get("/api/v1/specimens/CHK-ALARM/hl7/")
    parse_hl7(response)  # still a valid ORU^R01 (strict 2.5.1)
    segments = [line.split("|") for line in response.content.decode().split("\r")]
    assert COMMENT in [fields[3] for fields in segments if fields[0] == "NTE"]
