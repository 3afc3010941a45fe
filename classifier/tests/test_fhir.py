"""GET /api/v1/specimens/{accession}/fhir/: a FHIR R4 Bundle a third-party client can parse and validate."""

import json

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.specimen import Specimen as FHIRSpecimen

from classifier.cells import review as cell_review
from classifier.specimens import signoff
from classifier.tests.factories import ClassificationFactory, SpecimenFactory

pytestmark = pytest.mark.django_db

LOINC = "http://loinc.org"
EXPECTED_CODES = {  # LOINC "<cell>/100 leukocytes in Blood by Automated count"
    "713-8": "Eosinophils/100 leukocytes in Blood by Automated count",
    "736-9": "Lymphocytes/100 leukocytes in Blood by Automated count",
    "5905-5": "Monocytes/100 leukocytes in Blood by Automated count",
    "770-8": "Neutrophils/100 leukocytes in Blood by Automated count",
}



@pytest.fixture
def specimen(user):
    specimen = SpecimenFactory(accession="ACC-FHIR-1", created_by=user)
    for label in (
        "NEUTROPHIL",
        "NEUTROPHIL",
        "NEUTROPHIL",
        "LYMPHOCYTE",
        "LYMPHOCYTE",
        "EOSINOPHIL",
        "EOSINOPHIL",
        "EOSINOPHIL",
    ):
        ClassificationFactory(owner=user, specimen=specimen, predicted_label=label)
    ClassificationFactory(owner=user, specimen=specimen, unidentified=True)
    return specimen


def fetch(client, accession="ACC-FHIR-1", **headers):
    return client.get(f"/api/v1/specimens/{accession}/fhir/", **headers)


def parse(response) -> Bundle:
    """What a third-party client does: parse the JSON with fhir.resources' R4(B) models (validates)."""
    return Bundle.model_validate_json(response.content)


def resources(bundle: Bundle, kind):
    found = [entry.resource for entry in bundle.entry if isinstance(entry.resource, kind)]
    if kind is Observation:  # the class results (LOINC); the cells-counted one is tested in test_lis.py
        return [o for o in found if o.code.coding[0].system == LOINC]
    return found


def test_bundle_parses_and_validates_as_fhir_r4(api_client, user, specimen):
    api_client.force_authenticate(user)
    response = fetch(api_client)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/fhir+json"
    bundle = parse(response)
    assert bundle.type == "transaction"  # what a FHIR server accepts (issue 19)
    assert bundle.identifier.value == "ACC-FHIR-1"
    # No order: no Patient, no ServiceRequest. The model version is a Device; the last Observation
    # holds the cells counted.
    assert [type(e.resource).__name__ for e in bundle.entry] == [
        "DiagnosticReport",
        "Specimen",
        "Device",
        "Observation",
        "Observation",
        "Observation",
        "Observation",
        "Observation",
    ]
    # Every reference resolves inside the Bundle.
    full_urls = {entry.fullUrl for entry in bundle.entry}
    (report,) = resources(bundle, DiagnosticReport)
    assert {ref.reference for ref in report.result} | {report.specimen[0].reference} <= full_urls
    assert len(full_urls) == len(bundle.entry)


def test_report_is_preliminary_with_loinc_panel(api_client, user, specimen):
    api_client.force_authenticate(user)
    bundle = parse(fetch(api_client))
    (report,) = resources(bundle, DiagnosticReport)
    assert report.status == "preliminary"
    assert [(c.system, c.code, c.display) for c in report.code.coding] == [
        (LOINC, "57023-4", "Auto Differential panel - Blood")
    ]
    assert report.category[0].coding[0].code == "HM"
    assert report.conclusion == (
        "8 of 9 cells counted; 1 unidentified awaiting review; "
        "machine pre-classification, not yet verified by a reviewer."
    )
    assert report.resultsInterpreter is None
    (fhir_specimen,) = resources(bundle, FHIRSpecimen)
    assert fhir_specimen.accessionIdentifier.value == "ACC-FHIR-1"
    assert fhir_specimen.type.coding[0].code == "BLD"


def test_one_observation_per_class_with_loinc_ucum_range_and_flags(api_client, user, specimen):
    api_client.force_authenticate(user)
    observations = resources(parse(fetch(api_client)), Observation)
    rows = {}
    for obs in observations:
        (coding,) = obs.code.coding
        assert coding.system == LOINC
        assert EXPECTED_CODES[coding.code] == coding.display
        assert obs.status == "preliminary"
        assert obs.category[0].coding[0].code == "laboratory"
        quantity = obs.valueQuantity
        assert (quantity.unit, quantity.system, quantity.code) == ("%", "http://unitsofmeasure.org", "%")
        (reference,) = obs.referenceRange
        assert reference.low.code == reference.high.code == "%"
        rows[coding.code] = (
            float(quantity.value),
            obs.interpretation[0].coding[0].code,
            float(reference.low.value),
            float(reference.high.value),
            obs.note[0].text,
        )
    assert rows == {
        "770-8": (37.5, "L", 40.0, 75.0, "3 of 8 counted cells."),
        "736-9": (25.0, "N", 20.0, 45.0, "2 of 8 counted cells."),
        "5905-5": (0.0, "L", 2.0, 10.0, "0 of 8 counted cells."),
        "713-8": (37.5, "H", 1.0, 6.0, "3 of 8 counted cells."),
    }


def test_report_is_final_once_signed(api_client, user, reviewer, specimen):
    for cell in specimen.cells.all():
        cell_review.classification_review(classification=cell, reviewer=reviewer, label=cell.predicted_label)
    signed = signoff.specimen_sign(specimen=specimen, reviewer=reviewer)
    api_client.force_authenticate(user)
    bundle = parse(fetch(api_client))
    (report,) = resources(bundle, DiagnosticReport)
    assert report.status == "final"
    assert report.resultsInterpreter[0].display == "reviewer"
    assert report.issued.isoformat().startswith(signed.signed_at.replace(microsecond=0).isoformat()[:19])
    assert {obs.status for obs in resources(bundle, Observation)} == {"final"}
    # Signed: a verified manual differential (panel 24318-8, "by Manual count" codes), not 57023-4.
    panel = [(c.code, c.display) for c in report.code.coding]
    assert panel == [("24318-8", "Manual Differential panel - Blood")]
    eosinophils = next(o for o in resources(bundle, Observation) if o.code.coding[0].code == "714-6")
    assert eosinophils.code.coding[0].display == "Eosinophils/100 leukocytes in Blood by Manual count"
    # The reviewed unidentified cell now counts: 4 of 9 (44.44 %); largest-remainder rounding gives the
    # tenth the four rows' roundings leave over to it (44.5 + 22.2 + 22.2 + 11.1 = 100.0).
    assert float(eosinophils.valueQuantity.value) == 44.5
    values = [float(o.valueQuantity.value) for o in resources(bundle, Observation)]
    assert round(sum(values), 1) == 100.0


def test_specimen_without_counted_cells_reports_absent_values(api_client, user):
    specimen = SpecimenFactory(accession="ACC-EMPTY", created_by=user)
    ClassificationFactory(owner=user, specimen=specimen, unidentified=True)
    api_client.force_authenticate(user)
    observations = resources(parse(fetch(api_client, "ACC-EMPTY")), Observation)
    assert len(observations) == 4
    for obs in observations:
        assert obs.valueQuantity is None
        assert obs.interpretation is None
        assert obs.dataAbsentReason.coding[0].code == "temp-unknown"


def test_plain_json_on_request_and_errors_are_json(api_client, user, other_user, specimen):
    api_client.force_authenticate(user)
    response = fetch(api_client, HTTP_ACCEPT="application/json")
    assert response["Content-Type"] == "application/json"
    assert json.loads(response.content)["resourceType"] == "Bundle"
    api_client.force_authenticate(other_user)
    hidden = fetch(api_client)
    assert hidden.status_code == 404
    assert hidden["Content-Type"] == "application/json"
    assert hidden.json() == {"detail": "No Specimen matches the given query.", "code": "not_found"}
    # A client that asks for FHIR gets a FHIR error: an OperationOutcome (issue 19).
    outcome = fetch(api_client, HTTP_ACCEPT="application/fhir+json")
    assert (outcome.status_code, outcome["Content-Type"]) == (404, "application/fhir+json")
    assert json.loads(outcome.content) == {
        "resourceType": "OperationOutcome",
        "issue": [{
            "severity": "error", "code": "not-found", "details": {"text": "not_found"},
            "diagnostics": "No Specimen matches the given query.",
        }],
    }


def test_reviewer_sees_any_specimen_and_no_role_user_none(api_client, reviewer, no_role_user, specimen):
    api_client.force_authenticate(reviewer)
    assert fetch(api_client).status_code == 200
    api_client.force_authenticate(no_role_user)
    assert fetch(api_client).status_code == 404


def _stable(bundle: dict) -> dict:
    """The Bundle without what changes from one request to the next (its id, timestamp and issued)."""
    bundle = json.loads(json.dumps(bundle))
    bundle.pop("id", None)
    del bundle["timestamp"]
    for entry in bundle["entry"]:
        entry["resource"].pop("issued", None)
    return bundle


@pytest.mark.parametrize("blank", ["", "  \t "])
def test_blank_lab_name_falls_back_to_the_hl7_default(api_client, user, specimen, settings, blank):
    """An empty HEMATOVISION_LAB_NAME answered 500 (FHIR forbids an empty display); HL7 sent HEMATOVISION."""
    api_client.force_authenticate(user)
    settings.HEMATOVISION_LAB_NAME = "HEMATOVISION"
    named = fetch(api_client).json()
    settings.HEMATOVISION_LAB_NAME = blank
    response = fetch(api_client)
    assert response.status_code == 200
    bundle = response.json()
    assert bundle["entry"][0]["resource"]["performer"] == [{"display": "HEMATOVISION"}]
    assert _stable(bundle) == _stable(named)
    parse(response)
    hl7 = api_client.get("/api/v1/specimens/ACC-FHIR-1/hl7/").content.decode()
    assert hl7.split("\r")[0].split("|")[3] == "HEMATOVISION"


def test_lab_name_is_sent_on_one_line(api_client, user, specimen, settings):
    settings.HEMATOVISION_LAB_NAME = "  Labo\r\nHématologie\x00 Nord "
    api_client.force_authenticate(user)
    (report,) = resources(parse(fetch(api_client)), DiagnosticReport)
    assert [p.display for p in report.performer] == ["Labo Hématologie Nord"]
