"""The cell-class table, the differential built from it, and the product with an eight-class model.

The shipped model has four classes (fake predictor ``fake``); the eight-class taxonomy is served by
``fake8``. Results of both render, and reviewers can give every class of the table.
"""

import csv
import io
import re

import numpy as np
import pytest
from django.urls import reverse
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from PIL import Image

from classifier.cells import classes
from classifier.cells.differential import build, largest_remainder
from classifier.models import Classification, ReviewState, Specimen, Status
from classifier.specimens import report_csv, report_pdf, signoff
from classifier.specimens import selectors as specimen_selectors
from classifier.tests.factories import ClassificationFactory, SpecimenFactory, probabilities_for

YELLOW, CYAN, MAGENTA, RED, GREY, DARK = (
    (200, 200, 60),
    (60, 200, 200),
    (200, 60, 200),
    (200, 60, 60),
    (128, 124, 126),
    (40, 40, 40),
)


def _png(colour, seed=0) -> bytes:
    """A textured image of one colour: the fake predictor's class for that colour."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.integers(-15, 16, size=(48, 64, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _pdf_strings(pdf: bytes) -> str:
    """The text shown by a ReportLab PDF (its content streams decoded; no poppler needed)."""
    import base64
    import zlib

    shown = []
    for stream in re.findall(rb"stream\r?\n(.*?)endstream", pdf, flags=re.S):
        data = stream.strip()
        if data.endswith(b"~>"):
            data = base64.a85decode(data, adobe=True)
        try:
            data = zlib.decompress(data)
        except zlib.error:
            continue
        shown += [
            m.decode("latin-1").replace("\\(", "(").replace("\\)", ")")
            for m in re.findall(rb"\((.*?)(?<!\\)\) Tj", data)
        ]
    return "\n".join(shown)


def _luhn_ok(code: str) -> bool:
    """LOINC's check digit (mod 10, as Luhn) over the number before the dash."""
    number, check = code.split("-")
    total = 0
    for i, digit in enumerate(int(d) for d in reversed(number)):
        if i % 2 == 0:
            digit = digit * 2 - 9 if digit * 2 > 9 else digit * 2
        total += digit
    return (10 - total % 10) % 10 == int(check)


# ---------------------------------------------------------------- the table


def test_model_classes_are_ml_taxonomy_s_names_in_its_order():
    from ml import taxonomy

    assert classes.MODEL_CODES == taxonomy.CLASSES
    assert classes.FIRST_MODEL_CODES == taxonomy.LEGACY_CLASSES
    assert [c.code for c in classes.TABLE if c.reviewer_only] == [
        "BAND",
        "BLAST",
        "VARIANT_LYMPHOCYTE",
        "PLASMA_CELL",
        "SMUDGE",
        "ARTEFACT",
    ]


def test_every_class_has_a_usable_code_key_colour_and_counting_rule():
    keys = [c.key for c in classes.TABLE]
    assert len(set(keys)) == len(keys)
    assert all(len(k) == 1 and k == k.lower() and k not in "jkso" for k in keys)  # the page's own keys
    assert all(
        re.fullmatch(r"[A-Z_]+", c.code) and len(c.code) <= classes.MAX_CODE_LENGTH for c in classes.TABLE
    )
    assert all(re.fullmatch(r"#[0-9a-f]{6}", c.colour) for c in classes.TABLE)
    assert len({c.colour for c in classes.TABLE}) == len(classes.TABLE)
    assert all(classes.contrast(c.text_colour, c.colour) >= 4.5 for c in classes.TABLE)
    counting = {c.code: c.counting for c in classes.TABLE}
    assert counting["ERYTHROBLAST"] is classes.Counting.PER_100_WHITE
    assert {k for k, v in counting.items() if v is classes.Counting.NOT_COUNTED} == {
        "PLATELET",
        "SMUDGE",
        "ARTEFACT",
    }
    assert not any(classes.get(code).counts_in_white_total for code in ("ERYTHROBLAST", "PLATELET", "SMUDGE"))


def test_loinc_codes_have_valid_check_digits_and_every_reported_class_has_one():
    for cell in classes.TABLE:
        for loinc in (cell.loinc, cell.loinc_absolute):
            if loinc:
                assert _luhn_ok(loinc.code), (cell.code, loinc.code)
                assert "Blood" in loinc.name
        if cell.counting is not classes.Counting.NOT_COUNTED:
            assert cell.loinc is not None, cell.code
    assert (classes.get("BASOPHIL").loinc.code, classes.get("ERYTHROBLAST").loinc.code) == (
        "706-2",
        "58413-6",
    )
    assert classes.get("PLATELET").loinc is None
    assert classes.get("ARTEFACT").loinc is None


# ---------------------------------------------------------------- the differential record


def test_largest_remainder_shows_percentages_that_add_up_to_100():
    assert largest_remainder([1, 1, 1], total=3) == [33.4, 33.3, 33.3]
    assert largest_remainder([4, 2, 2, 1], total=9) == [44.5, 22.2, 22.2, 11.1]
    assert largest_remainder([0, 7], total=7) == [0.0, 100.0]
    rng = np.random.default_rng(0)
    for _ in range(200):
        counts = [int(x) for x in rng.integers(0, 40, size=int(rng.integers(1, 11)))]
        if sum(counts):
            shares = largest_remainder(counts, total=sum(counts))
            assert sum(round(s * 10) for s in shares) == 1000
            assert all(
                abs(s - 100 * c / sum(counts)) < 0.1 + 1e-9 for s, c in zip(shares, counts, strict=True)
            )


def test_white_cells_add_to_100_nucleated_red_cells_per_100_and_others_apart():
    labels = (
        ["NEUTROPHIL"] * 5 + ["LYMPHOCYTE"] * 3 + ["BAND"] + ["ERYTHROBLAST"] * 2 + ["PLATELET", "SMUDGE"]
    )
    d = build(
        labels=labels,
        model_classes=classes.MODEL_CODES,
        accession="X",
        total_cells=14,
        unidentified=1,
        pending=0,
        unreviewed=14,
    )
    assert d.counted_cells == 9
    assert [(r.label, r.count, r.percent, r.flag) for r in d.classes] == [
        ("NEUTROPHIL", 5, 55.6, None),
        ("EOSINOPHIL", 0, 0.0, "L"),
        ("BASOPHIL", 0, 0.0, None),
        ("LYMPHOCYTE", 3, 33.3, None),
        ("MONOCYTE", 0, 0.0, "L"),
        ("IG", 0, 0.0, None),
        ("BAND", 1, 11.1, "H"),
    ]
    assert sum(round(r.percent * 10) for r in d.classes) == 1000
    assert [(r.label, r.count, r.per_100_white_cells, r.flag) for r in d.per_100_white_cells] == [
        ("ERYTHROBLAST", 2, 22.2, "H")
    ]
    assert [(r.label, r.count, r.value) for r in d.not_counted] == [
        ("PLATELET", 1, None),
        ("SMUDGE", 1, None),
    ]
    assert [r.label for r in d.reported] == [*(r.label for r in d.classes), "ERYTHROBLAST"]


def test_four_class_results_report_their_four_classes_only():
    d = build(
        labels=["MONOCYTE"],
        model_classes=classes.FIRST_MODEL_CODES,
        accession="X",
        total_cells=1,
        unidentified=0,
        pending=0,
        unreviewed=1,
    )
    assert [r.label for r in d.classes] == ["NEUTROPHIL", "EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE"]
    assert d.per_100_white_cells == ()
    assert d.not_counted == ()


def test_no_counted_cell_lists_the_model_classes_without_values():
    d = build(
        labels=[], model_classes=[], accession="X", total_cells=0, unidentified=0, pending=0, unreviewed=0
    )
    assert [r.label for r in d.classes] == [
        "NEUTROPHIL",
        "EOSINOPHIL",
        "BASOPHIL",
        "LYMPHOCYTE",
        "MONOCYTE",
        "IG",
    ]
    assert all(r.percent is None and r.flag is None for r in d.classes)
    assert [(r.label, r.per_100_white_cells) for r in d.per_100_white_cells] == [("ERYTHROBLAST", None)]


def test_a_class_outside_the_table_still_counts_and_renders_by_its_code():
    d = build(
        labels=["NEUTROPHIL", "MEGAKARYOCYTE"],
        model_classes=["NEUTROPHIL", "MEGAKARYOCYTE"],
        accession="X",
        total_cells=2,
        unidentified=0,
        pending=0,
        unreviewed=2,
    )
    assert [(r.label, r.name, r.percent) for r in d.classes] == [
        ("NEUTROPHIL", "Neutrophil", 50.0),
        ("MEGAKARYOCYTE", "MEGAKARYOCYTE", 50.0),
    ]


# ---------------------------------------------------------------- an eight-class model, end to end


@pytest.fixture
def eight_class(settings):
    settings.HEMATOVISION_PREDICTOR = "fake8"
    return settings


def _upload(api, colour, seed, accession="ACC-8"):
    response = api.post(
        "/api/v1/classifications/",
        {"image": io.BytesIO(_png(colour, seed)), "accession": accession},
        format="multipart",
    )
    assert response.status_code == 201, response.content
    return response.json()


@pytest.mark.django_db
def test_eight_class_model_basophil_through_api_fhir_hl7_reports_and_history(
    eight_class, tech_api, tech_client, reviewer_client, tmp_path
):
    basophil = _upload(tech_api, YELLOW, 1)
    assert (basophil["label"], basophil["predicted_label"], basophil["status"]) == (
        "BASOPHIL",
        "BASOPHIL",
        "classified",
    )
    assert basophil["model_version"] == "fake8-0001"
    assert set(basophil["probabilities"]) == set(classes.MODEL_CODES)
    assert basophil["probabilities"]["BASOPHIL"] == 0.88
    assert [
        _upload(tech_api, colour, seed)["label"]
        for colour, seed in ((RED, 2), (GREY, 5), (CYAN, 4), (MAGENTA, 3), (DARK, 6))
    ] == ["EOSINOPHIL", "NEUTROPHIL", "IG", "ERYTHROBLAST", "PLATELET"]
    cell = Classification.objects.get(pk=basophil["id"])
    assert (cell.predicted_label, cell.specimen.accession, cell.model_version) == (
        "BASOPHIL",
        "ACC-8",
        "fake8-0001",
    )

    # The result page names it and its probabilities.
    html = tech_client.get(reverse("classification-detail", args=[cell.pk])).content.decode()
    assert '<div class="h3 mb-1" id="predicted-label">Basophil</div>' in html
    assert "Immature granulocyte" in html
    assert "Nucleated red cell" in html

    # The API's differential: four white cells, one nucleated red cell per 4 white cells, a platelet apart.
    body = tech_api.get("/api/v1/specimens/ACC-8/").json()["differential"]
    assert body["counted_cells"] == 4
    assert body["total_cells"] == 6
    assert {row["label"]: (row["count"], row["percent"]) for row in body["classes"]} == {
        "NEUTROPHIL": (1, 25.0),
        "EOSINOPHIL": (1, 25.0),
        "BASOPHIL": (1, 25.0),
        "LYMPHOCYTE": (0, 0.0),
        "MONOCYTE": (0, 0.0),
        "IG": (1, 25.0),
    }
    assert body["per_100_white_cells"] == [
        {
            "label": "ERYTHROBLAST",
            "name": "Nucleated red cell",
            "count": 1,
            "per_100_white_cells": 25.0,
            "reference_low": 0.0,
            "reference_high": 0.0,
            "flag": "H",
        }
    ]
    assert body["not_counted"] == [{"label": "PLATELET", "name": "Platelet", "count": 1}]

    # FHIR: basophils under LOINC 706-2, nucleated red cells per 100 white cells, platelets in the conclusion.
    bundle = Bundle.model_validate_json(tech_api.get("/api/v1/specimens/ACC-8/fhir/").content)
    observations = {
        e.resource.code.coding[0].code: e.resource
        for e in bundle.entry
        if isinstance(e.resource, Observation) and e.resource.code.coding[0].system == "http://loinc.org"
    }
    assert set(observations) == {"770-8", "713-8", "706-2", "736-9", "5905-5", "71695-1", "58413-6"}
    assert (
        observations["706-2"].code.coding[0].display == "Basophils/100 leukocytes in Blood by Automated count"
    )
    assert float(observations["706-2"].valueQuantity.value) == 25.0
    assert observations["706-2"].valueQuantity.code == "%"
    nrbc = observations["58413-6"]
    assert (float(nrbc.valueQuantity.value), nrbc.valueQuantity.code) == (25.0, "/100{WBCs}")
    assert nrbc.interpretation[0].coding[0].code == "H"
    (report,) = [e.resource for e in bundle.entry if isinstance(e.resource, DiagnosticReport)]
    assert report.conclusion.startswith("4 of 6 cells counted; not counted: 1 platelet;")

    # HL7: an OBX for basophils and one for nucleated red cells, parsed strictly.
    message = parse_message(
        tech_api.get("/api/v1/specimens/ACC-8/hl7/").content.decode(),
        validation_level=VALIDATION_LEVEL.STRICT,
    )
    obx = {
        o.obx.obx_3.to_er7().split("^")[0]: o.obx
        for o in message.oru_r01_patient_result.oru_r01_order_observation.oru_r01_observation
        if o.obx.obx_3.to_er7().endswith("^LN")  # the counts (local codes) follow the LOINC results
    }
    assert list(obx) == ["770-8", "713-8", "706-2", "736-9", "5905-5", "71695-1", "58413-6"]
    assert (obx["706-2"].obx_5.to_er7(), obx["706-2"].obx_6.to_er7(), obx["706-2"].obx_7.to_er7()) == (
        "25",
        "%^percent^UCUM",
        "0-2",
    )
    assert obx["58413-6"].obx_6.to_er7() == "/100{WBCs}^per 100 white cells^UCUM"

    # PDF and CSV.
    specimen = Specimen.objects.get(accession="ACC-8")
    text = _pdf_strings(report_pdf.specimen_report_pdf(specimen=specimen))
    assert "Basophil" in text
    assert "Nucleated red cell" in text
    assert "Platelet (not counted)" in text
    export = list(csv.DictReader(io.StringIO(report_csv.specimens_csv(specimens=Specimen.objects.all()))))
    assert (export[0]["basophil_count"], export[0]["basophil_percent"]) == ("1", "25.0")
    assert export[0]["erythroblast_per_100_white_cells"] == "25.0"
    assert export[0]["platelet_count"] == "1"
    assert export[0]["band_count"] == ""
    assert export[0]["smudge_count"] == ""

    # History filter and the specimen page.
    listed = tech_client.get(reverse("classification-list"), {"label": "BASOPHIL"}).content.decode()
    assert f'href="/classifications/{cell.pk}/"' in listed
    assert listed.count('class="badge cell-badge cell-basophil"') == 1
    page = reviewer_client.get(reverse("specimen-detail", args=["ACC-8"])).content.decode()
    assert '<tr data-label="BASOPHIL">' in page
    assert 'data-label="ERYTHROBLAST" class="per-100-white"' in page
    assert 'data-label="PLATELET" class="not-counted"' in page


@pytest.mark.django_db
def test_four_class_results_keep_their_version_beside_eight_class_ones(settings, user, reviewer, tech_api):
    old = ClassificationFactory(
        owner=user, specimen=SpecimenFactory(accession="MIX-1", created_by=user), predicted_label="LYMPHOCYTE"
    )
    settings.HEMATOVISION_PREDICTOR = "fake8"
    new = _upload(tech_api, YELLOW, 9, accession="MIX-1")
    old.refresh_from_db()
    assert (old.model_version, set(old.probabilities)) == ("fake-0001", set(classes.FIRST_MODEL_CODES))
    assert new["model_version"] == "fake8-0001"
    d = specimen_selectors.specimen_differential(specimen=old.specimen)
    assert [(r.label, r.count) for r in d.classes] == [
        ("NEUTROPHIL", 0),
        ("EOSINOPHIL", 0),
        ("BASOPHIL", 1),
        ("LYMPHOCYTE", 1),
        ("MONOCYTE", 0),
        ("IG", 0),
    ]
    assert set(d.model_classes) == set(classes.MODEL_CODES)


@pytest.mark.django_db
def test_reviewer_gives_reviewer_only_classes_with_their_keys(reviewer_client, reviewer, user):
    specimen = SpecimenFactory(accession="REV-1", created_by=user)
    cells = [
        ClassificationFactory(owner=user, specimen=specimen, predicted_label="NEUTROPHIL") for _ in range(4)
    ]
    html = reviewer_client.get(reverse("classification-detail", args=[cells[0].pk])).content.decode()
    for cell_type in classes.TABLE:  # one button per class of the table, with its key
        assert f'<input type="hidden" name="label" value="{cell_type.code}">' in html
        assert f'data-key="{cell_type.key}"' in html
    assert "<kbd>V</kbd> Variant lymphocyte" in html
    queue = reviewer_client.get(reverse("review-queue")).content.decode()
    assert queue.count('data-key="x"') == 4  # smudge cell, on every card

    for cell, label in zip(cells, ["BAND", "SMUDGE", "ARTEFACT", "NEUTROPHIL"], strict=True):
        response = reviewer_client.post(
            reverse("classification-review", args=[cell.pk]), {"label": label, "seen": cell.review_version}
        )
        assert response.status_code == 302
    assert sorted(Classification.objects.values_list("final_label", "review_state")) == [
        ("ARTEFACT", ReviewState.RECLASSIFIED),
        ("BAND", ReviewState.RECLASSIFIED),
        ("NEUTROPHIL", ReviewState.CONFIRMED),
        ("SMUDGE", ReviewState.RECLASSIFIED),
    ]
    d = specimen_selectors.specimen_differential(specimen=specimen)
    assert d.counted_cells == 2  # the smudge cell and the artefact are not white cells of the count
    assert [(r.label, r.percent) for r in d.classes if r.count] == [("NEUTROPHIL", 50.0), ("BAND", 50.0)]
    assert [(r.label, r.count) for r in d.not_counted] == [("SMUDGE", 1), ("ARTEFACT", 1)]
    specimen = signoff.specimen_sign(specimen=specimen, reviewer=reviewer)
    assert specimen.is_signed
    assert set(specimen.cells.values_list("status", flat=True)) == {Status.CLASSIFIED}


def test_factory_probabilities_follow_the_model_that_read_the_cell():
    assert set(probabilities_for("MONOCYTE")) == set(classes.FIRST_MODEL_CODES)
    assert set(probabilities_for("IG", classes=classes.MODEL_CODES)) == set(classes.MODEL_CODES)
