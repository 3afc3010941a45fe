"""Issue 19 leftover (e2): absolute counts from the order's white-cell count, in every format.

With an order's ``wbc_count`` (10^9/L) each counted white-cell class is also reported as its share of
it (count / counted x WBC, two decimals): HL7 OBX rows with the LOINC "[#/volume]" codes, FHIR
Observations in UCUM ``10*9/L``, the JSON differential, the PDF and the portal page. Below the minimum
count no H/L flag is given, as for the percentages. Without a white-cell count nothing is added.
"""

import json

import jsonschema
import pytest
from fhir.resources.R4B.bundle import Bundle

from classifier.cells import differential as differentials
from classifier.cells import ranges
from classifier.models import Order, ReportVersion, Specimen
from classifier.tests.factories import ClassificationFactory
from classifier.tests.pdf_helpers import pdf_text
from classifier.tests.test_lis import ORDER, client_for, fhir_schema, sign_all, strict

ACC = ORDER["accession"]
# 6 neutrophils, 2 lymphocytes, 1 monocyte, 1 eosinophil of 10; WBC 7.2 x10^9/L.
LABELS = ["NEUTROPHIL"] * 6 + ["LYMPHOCYTE"] * 2 + ["MONOCYTE", "EOSINOPHIL"]
ABSOLUTE = [  # label, code, value, range, flag (with flags given)
    ("NEUTROPHIL", "751-8", 4.32, (2.0, 7.5), None),
    ("EOSINOPHIL", "711-2", 0.72, (0.04, 0.4), "H"),
    ("LYMPHOCYTE", "731-0", 1.44, (1.0, 4.8), None),
    ("MONOCYTE", "742-7", 0.72, (0.2, 1.0), None),
]


@pytest.fixture
def interface(db):
    from django.contrib.auth.models import Group

    from accounts.roles import INTERFACE
    from accounts.tests.factories import UserFactory

    user = UserFactory(username="lis")
    user.groups.add(Group.objects.get_or_create(name=INTERFACE)[0])
    return user


@pytest.fixture
def signer(reviewer):
    return reviewer


@pytest.fixture
def specimen(interface, user, signer):
    """An ordered, signed specimen of ten cells (the four-class model); the order's WBC is 7.2."""
    client_for(interface).post("/api/v1/orders/", {**ORDER, "wbc_count": 7.2}, format="json")
    specimen = Specimen.objects.get(accession=ACC)
    for label in LABELS:
        ClassificationFactory(owner=user, specimen=specimen, predicted_label=label)
    sign_all(specimen, signer)
    return Specimen.objects.get(pk=specimen.pk)


def test_build_computes_each_white_class_share_of_the_count():
    made = differentials.build(
        labels=LABELS,
        model_classes=[],
        wbc_count=7.2,
        accession="A",
        total_cells=10,
        unidentified=0,
        pending=0,
        unreviewed=0,
    )
    model_four = [row for row in made.absolute if row.label in {a[0] for a in ABSOLUTE}]
    assert [
        (r.label, r.loinc.code, r.value, (r.reference_low, r.reference_high), r.flag) for r in model_four
    ] == ABSOLUTE
    assert {r.label: r.value for r in made.absolute}["BASOPHIL"] == 0.0  # eight-class table: listed at 0
    assert made.wbc_count == 7.2
    # No white-cell count, or none counted: no absolute counts.
    assert (
        differentials.build(
            labels=LABELS,
            model_classes=[],
            accession="A",
            total_cells=10,
            unidentified=0,
            pending=0,
            unreviewed=0,
        ).absolute
        == ()
    )
    assert (
        differentials.build(
            labels=[],
            model_classes=[],
            wbc_count=7.2,
            accession="A",
            total_cells=0,
            unidentified=0,
            pending=0,
            unreviewed=0,
        ).absolute
        == ()
    )


def test_minimum_count_withholds_absolute_flags_and_a_child_gets_no_adult_range():
    facts = {"accession": "A", "total_cells": 10, "unidentified": 0, "pending": 0, "unreviewed": 0}
    guarded = differentials.build(
        labels=LABELS, model_classes=[], wbc_count=7.2, min_count_for_flags=100, **facts
    )
    assert {r.flag for r in guarded.absolute} == {None}
    assert {r.label: r.reference_high for r in guarded.absolute}["EOSINOPHIL"] == 0.4  # the range stays
    child = differentials.build(
        labels=LABELS,
        model_classes=[],
        wbc_count=7.2,
        patient=ranges.Patient(age_months=72, sex="F"),
        **facts,
    )
    assert {r.label: (r.value, r.reference, r.flag) for r in child.absolute}["NEUTROPHIL"] == (
        4.32,
        None,
        None,
    )


@pytest.mark.django_db
def test_hl7_sends_an_obx_per_absolute_count(specimen):
    version = ReportVersion.objects.get(specimen=specimen)
    group = strict(version.hl7).oru_r01_patient_result.oru_r01_order_observation
    rows = {o.obx.obx_3.obx_3_1.to_er7(): o for o in group.oru_r01_observation}
    for label, code, value, (low, high), flag in ABSOLUTE:
        obx = rows[code].obx
        assert obx.to_er7().split("|")[2:12] == [
            "NM",
            f"{code}^{label.capitalize()}s [#/volume] in Blood by Automated count^LN",
            "",
            f"{value:g}",
            "10*9/L^10*9 per litre^UCUM",
            f"{low:g}-{high:g}",
            flag or "N",
            "",
            "N",
            "F",
        ]
    neutrophil_note = rows["751-8"].nte[0].nte_3.to_er7()
    assert neutrophil_note == "60 % of the white-cell count 7.2 x10\\S\\9/L given with the order"
    codes = [o.obx.obx_3.obx_3_1.to_er7() for o in group.oru_r01_observation]
    assert codes.index("742-7") < codes.index("WBC-COUNTED")  # after the percentages, before the counts


@pytest.mark.django_db
def test_fhir_observations_in_ucum_and_schema_valid(specimen):
    bundle = ReportVersion.objects.get(specimen=specimen).fhir
    validator = jsonschema.Draft6Validator(fhir_schema())
    assert not [e.message[:200] for e in validator.iter_errors(bundle)]
    Bundle.model_validate(bundle)
    observations = {
        o["resource"]["code"].get("coding", [{}])[0].get("code"): o["resource"]
        for o in bundle["entry"]
        if o["resource"]["resourceType"] == "Observation"
    }
    eosinophils = observations["711-2"]
    assert eosinophils["identifier"] == [
        {"system": "urn:hematovision:observation", "value": f"{ACC}-EOSINOPHIL-ABS"}
    ]
    assert eosinophils["code"] == {
        "coding": [
            {
                "system": "http://loinc.org",
                "code": "711-2",
                "display": "Eosinophils [#/volume] in Blood by Automated count",
            }
        ],
        "text": "Eosinophil # (absolute count)",
    }
    unit = {"unit": "10^9/L", "system": "http://unitsofmeasure.org", "code": "10*9/L"}
    assert eosinophils["valueQuantity"] == {"value": 0.72, **unit}
    assert eosinophils["referenceRange"][0]["low"] == {"value": 0.04, **unit}
    assert eosinophils["referenceRange"][0]["high"] == {"value": 0.4, **unit}
    assert eosinophils["interpretation"][0]["coding"][0]["code"] == "H"
    assert eosinophils["note"] == [{"text": "10 % of the white-cell count 7.2 x10^9/L given with the order."}]
    assert eosinophils["status"] == "final"
    assert [observations[code]["valueQuantity"]["value"] for _, code, *_ in ABSOLUTE] == [
        4.32,
        0.72,
        1.44,
        0.72,
    ]


@pytest.mark.django_db
def test_json_pdf_and_portal_show_absolute_counts(specimen, signer, client):
    body = client_for(signer).get(f"/api/v1/specimens/{ACC}/").json()["differential"]
    assert body["wbc_count"] == 7.2
    assert body["absolute"] == [
        {
            "label": label,
            "name": label.capitalize(),
            "count": LABELS.count(label),
            "value": value,
            "reference_low": low,
            "reference_high": high,
            "flag": flag,
        }
        for label, _, value, (low, high), flag in ABSOLUTE
    ]
    from classifier.specimens import report_pdf

    text = " ".join(pdf_text(report_pdf.specimen_report_pdf(specimen=specimen)).split())
    assert "Absolute counts (white-cell count 7.2 x10^9/L given with the order)" in text
    assert "Neutrophil 4.32 2 – 7.5" in text
    assert "Eosinophil 0.72 0.04 – 0.4 HIGH" in text
    client.force_login(signer)
    page = client.get(f"/specimens/{ACC}/").content.decode()
    assert 'id="absolute-counts"' in page
    assert "white-cell count 7.2 ×10⁹/L given with the order" in page
    assert '<td class="text-end absolute">4.32</td>' in page


@pytest.mark.django_db
def test_without_a_white_cell_count_nothing_is_added(specimen, signer, client, settings):
    Order.objects.filter(specimen=specimen).update(wbc_count=None)
    ReportVersion.objects.all().delete()  # release again, from an order without a count
    specimen.refresh_from_db()
    from classifier.specimens.amend import report_release

    version = report_release(specimen=specimen, reviewer=signer)
    assert "751-8" not in version.hl7
    assert "10*9/L" not in version.hl7
    assert "10*9/L" not in json.dumps(version.fhir)
    body = client_for(signer).get(f"/api/v1/specimens/{ACC}/").json()["differential"]
    assert (body["wbc_count"], body["absolute"]) == (None, [])
    from classifier.specimens import report_pdf

    assert "Absolute counts" not in pdf_text(report_pdf.specimen_report_pdf(specimen=specimen))
    client.force_login(signer)
    assert 'id="absolute-counts"' not in client.get(f"/specimens/{ACC}/").content.decode()


@pytest.mark.django_db
def test_below_the_minimum_count_absolute_counts_carry_no_flag(interface, user, signer, settings):
    settings.HEMATOVISION_MIN_CELLS_FOR_FLAGS = 100
    client_for(interface).post("/api/v1/orders/", {**ORDER, "wbc_count": 7.2}, format="json")
    specimen = Specimen.objects.get(accession=ACC)
    for label in LABELS:
        ClassificationFactory(owner=user, specimen=specimen, predicted_label=label)
    sign_all(specimen, signer)
    version = ReportVersion.objects.get(specimen=specimen)
    group = strict(version.hl7).oru_r01_patient_result.oru_r01_order_observation
    eosinophils = next(o.obx for o in group.oru_r01_observation if o.obx.obx_3.obx_3_1.to_er7() == "711-2")
    assert (eosinophils.obx_5.to_er7(), eosinophils.obx_7.to_er7(), eosinophils.obx_8.to_er7()) == (
        "0.72",
        "0.04-0.4",
        "",
    )
    fhir = [
        e["resource"]
        for e in version.fhir["entry"]
        if e["resource"].get("identifier", [{}])[0].get("value") == f"{ACC}-EOSINOPHIL-ABS"
    ]
    assert "interpretation" not in fhir[0]
