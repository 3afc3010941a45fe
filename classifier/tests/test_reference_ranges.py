"""Issue 19: reference ranges by the ordered patient's age and sex (``classifier.cells.ranges``), the
same range in HL7 (OBX-7, flags in OBX-8, OBX-10), FHIR (referenceRange with appliesTo and age), the
API, the portal page and the PDF; adult ranges when the age is unknown."""

from datetime import date

import pytest
from django.contrib.auth.models import Group

from accounts.roles import INTERFACE, REVIEWER
from accounts.tests.factories import UserFactory
from classifier.cells import classes, ranges
from classifier.cells import review as cell_review
from classifier.models import ReportVersion, Specimen
from classifier.specimens import signoff
from classifier.tests.factories import ClassificationFactory
from classifier.tests.test_lis import ORDER, client_for, strict

UCUM = "http://unitsofmeasure.org"


def _range(code: str, age_months: int | None, sex: str | None = None):
    return ranges.applicable(classes.get(code), ranges.Patient(age_months, sex))


def test_bands_by_age_with_the_adult_range_after_them_and_for_an_unknown_age():
    months = (0, 1, 23, 24, 131, 132)
    assert [(_range("NEUTROPHIL", m).low, _range("NEUTROPHIL", m).high) for m in months] == [
        (24, 58), (21, 67), (21, 67), (30, 77), (30, 77), (40.0, 75.0),
    ]
    assert [_range("LYMPHOCYTE", m).text for m in (0, 12, 60, 400)] == [
        "Age birth to 1 month", "Age 1 to 23 months", "Age 2 to 10 years", "Age 11 years and older",
    ]
    assert (_range("IG", 119).high, _range("IG", 120).high) == (0.4, 0.5)  # Davis: birth-9 yr 0-0.4 %
    unknown = _range("NEUTROPHIL", None)
    assert (unknown.low, unknown.high, unknown.band, unknown.text) == (
        40.0, 75.0, None, "Adult range (the patient's age is not known)",
    )
    assert ranges.applicable(classes.get("NEUTROPHIL")) == unknown  # no patient at all
    # Nucleated red cells are normal in a newborn: no range (so no H) in the first month, then 0-0.
    assert _range("ERYTHROBLAST", 0) is None
    assert (_range("ERYTHROBLAST", 1).high, _range("ERYTHROBLAST", 1).text) == (0.0, "Age 1 month and older")
    assert _range("BLAST", 0).text == "Any age"  # no children's band: the table's range at every age
    assert _range("PLATELET", 30) is None
    assert _range("VARIANT_LYMPHOCYTE", 30) is None


def test_a_sex_specific_band_wins_over_one_for_both(monkeypatch):
    band = ranges.AgeBand(11, 17, "a")
    table = {**ranges.CHILDREN, "MONOCYTE": (ranges.Range(3, 10, band), ranges.Range(2, 8, band, sex="F"))}
    monkeypatch.setattr(ranges, "CHILDREN", table)
    female, male, unknown = (_range("MONOCYTE", 14 * 12, sex) for sex in ("F", "M", None))
    assert (female.low, female.high, female.text) == (2, 8, "Age 11 to 17 years, female")
    assert (male.low, male.high, male.sex) == (3, 10, None)
    assert unknown == male


def test_age_in_whole_months_at_collection():
    assert ranges.age_in_months(date(2020, 2, 29), date(2021, 2, 28)) == 11
    assert ranges.age_in_months(date(2020, 2, 29), date(2021, 3, 1)) == 12
    assert ranges.age_in_months(date(2026, 12, 1), date(2026, 11, 25)) is None  # born after collection
    assert ranges.age_in_months(None, date(2026, 11, 25)) is None


@pytest.fixture
def child(db, user):
    """A 6-year-old girl's ordered specimen: 6 neutrophils and 4 lymphocytes, reviewed and signed."""
    interface = UserFactory(username="lis")
    interface.groups.add(Group.objects.get_or_create(name=INTERFACE)[0])
    order = {**ORDER, "patient": {**ORDER["patient"], "birth_date": "2020-06-15"}}
    assert client_for(interface).post("/api/v1/orders/", order, format="json").status_code == 201
    specimen = Specimen.objects.get(accession="ACC-LIS-1")
    for label in ["NEUTROPHIL"] * 6 + ["LYMPHOCYTE"] * 4:
        ClassificationFactory(owner=user, specimen=specimen, predicted_label=label)
    return specimen


def _sign(specimen):
    reviewer = UserFactory(username="drsmith", first_name="Anna", last_name="Smith")
    reviewer.groups.add(Group.objects.get_or_create(name=REVIEWER)[0])
    for cell in specimen.cells.all():
        cell_review.classification_review(classification=cell, reviewer=reviewer, label=cell.predicted_label)
    signoff.specimen_sign(specimen=specimen, reviewer=reviewer)
    return reviewer


@pytest.mark.django_db
def test_a_childs_result_carries_the_childrens_range_in_every_format(child):
    reviewer = _sign(child)
    version = ReportVersion.objects.get()
    group = strict(version.hl7).oru_r01_patient_result.oru_r01_order_observation
    rows = [
        tuple(getattr(o.obx, f"obx_{n}").to_er7() for n in (3, 5, 7, 8, 10))
        for o in group.oru_r01_observation
        if o.obx.obx_7.to_er7()
    ]
    # 60 % neutrophils is normal for a 6-year-old (30-77) and 40 % lymphocytes too (14-50), where an
    # adult's 20-45 would be used without the date of birth.
    assert [(code.split("^")[0], *rest) for code, *rest in rows] == [
        ("769-0", "60", "30-77", "N", "A"),
        ("714-6", "0", "0-5.8", "N", "A"),
        ("737-7", "40", "14-50", "N", "A"),
        ("744-3", "0", "4-9", "L", "A"),
    ]
    observations = {
        e["resource"]["code"]["coding"][0]["code"]: e["resource"]
        for e in version.fhir["entry"]
        if e["resource"]["resourceType"] == "Observation" and "coding" in e["resource"]["code"]
    }
    percent = {"unit": "%", "system": UCUM, "code": "%"}
    assert observations["744-3"]["referenceRange"] == [
        {
            "low": {"value": 4.0, **percent},
            "high": {"value": 9.0, **percent},
            "type": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/referencerange-meaning",
                        "code": "normal",
                        "display": "Normal Range",
                    }
                ]
            },
            "appliesTo": [{"text": "Age 2 to 10 years"}],
            "age": {
                "low": {"value": 2.0, "unit": "years", "system": UCUM, "code": "a"},
                "high": {"value": 10.0, "unit": "years", "system": UCUM, "code": "a"},
            },
            "text": "Age 2 to 10 years",
        }
    ]
    assert observations["744-3"]["interpretation"][0]["coding"][0]["code"] == "L"
    # The API, the portal page and the PDF show the same range.
    api = client_for(reviewer).get("/api/v1/specimens/ACC-LIS-1/").json()["differential"]
    assert [(r["label"], r["reference_low"], r["reference_high"], r["flag"]) for r in api["classes"]] == [
        ("NEUTROPHIL", 30, 77, None), ("EOSINOPHIL", 0, 5.8, None),
        ("LYMPHOCYTE", 14, 50, None), ("MONOCYTE", 4, 9, "L"),
    ]
    assert api["reference_note"] == "Reference ranges for the patient's age (6 years, female)."
    from django.test import Client

    browser = Client()
    browser.force_login(reviewer)
    page = browser.get("/specimens/ACC-LIS-1/").content.decode()
    assert "<td class=\"text-end\">14–50</td>" in page
    assert "Reference ranges for the patient&#x27;s age (6 years, female)." in page
    from classifier.specimens import report_pdf
    from classifier.tests.pdf_helpers import pdf_text

    text = " ".join(pdf_text(report_pdf.specimen_report_pdf(specimen=child)).split())
    assert "Lymphocyte 4 40.0 14 – 50 %" in text
    assert "Reference ranges for the patient's age (6 years, female)." in text


@pytest.mark.django_db
def test_without_a_date_of_birth_the_adult_range_is_sent_as_the_generic_one(child):
    child.order.patient_birth_date = None
    child.order.save()
    _sign(Specimen.objects.get(pk=child.pk))
    version = ReportVersion.objects.get()
    group = strict(version.hl7).oru_r01_patient_result.oru_r01_order_observation
    lymphocytes = group.oru_r01_observation[2].obx
    # 40 % is within the adult 20-45; OBX-10 N: the generic range.
    assert [lymphocytes.obx_7.to_er7(), lymphocytes.obx_8.to_er7(), lymphocytes.obx_10.to_er7()] == [
        "20-45", "N", "N",
    ]
    observation = next(
        e["resource"]
        for e in version.fhir["entry"]
        if e["resource"].get("code", {}).get("text") == "Lymphocyte %"
    )
    (reference,) = observation["referenceRange"]
    assert "age" not in reference
    assert reference["appliesTo"] == [{"text": "Adult range (the patient's age is not known)"}]
