"""Issue 19: LOINC codes by method (the model's automated pre-classification until a reviewer signs,
then a verified manual differential) and the lab's own codes (HEMATOVISION_LOCAL_CODES) beside them,
the same in HL7 and FHIR."""

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from classifier.interop import codes
from classifier.models import ReportVersion
from classifier.tests.factories import ClassificationFactory, SpecimenFactory
from classifier.tests.test_lis import client_for, sign_all, strict


@pytest.fixture
def signer(db):
    from django.contrib.auth.models import Group

    from accounts.roles import REVIEWER
    from accounts.tests.factories import UserFactory

    user = UserFactory(username="drsmith", first_name="Anna", last_name="Smith")
    user.groups.add(Group.objects.get_or_create(name=REVIEWER)[0])
    return user


LOCAL = {"PANEL": ["DIFF", "WBC differential"], "NEUTROPHIL": ["NEUT%", "Neutrophils %"]}


@pytest.fixture
def specimen(db, user):
    specimen = SpecimenFactory(accession="ACC-CODES", created_by=user)
    for label in ("NEUTROPHIL", "NEUTROPHIL", "LYMPHOCYTE"):
        ClassificationFactory(owner=user, specimen=specimen, predicted_label=label)
    return specimen


def _hl7_codes(text: str) -> list[str]:
    group = strict(text).oru_r01_patient_result.oru_r01_order_observation
    return [group.obr.obr_4.to_er7()] + [o.obx.obx_3.to_er7() for o in group.oru_r01_observation][:4]


def _fhir_codes(bundle: dict) -> list[list[tuple[str, str]]]:
    found = []
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] in ("DiagnosticReport", "Observation") and "coding" in resource["code"]:
            found.append([(c["system"], c["code"]) for c in resource["code"]["coding"]])
    return found[:5]


@pytest.mark.django_db
def test_unsigned_automated_then_signed_manual_codes_with_the_labs_own(specimen, user, signer, settings):
    settings.HEMATOVISION_LOCAL_CODES = LOCAL
    api = client_for(user)
    preliminary = api.get("/api/v1/specimens/ACC-CODES/hl7/").content.decode()
    assert _hl7_codes(preliminary) == [
        "57023-4^Auto Differential panel - Blood^LN^DIFF^WBC differential^99LAB",
        "770-8^Neutrophils/100 leukocytes in Blood by Automated count^LN^NEUT%^Neutrophils %^99LAB",
        "713-8^Eosinophils/100 leukocytes in Blood by Automated count^LN",
        "736-9^Lymphocytes/100 leukocytes in Blood by Automated count^LN",
        "5905-5^Monocytes/100 leukocytes in Blood by Automated count^LN",
    ]
    loinc, local = "http://loinc.org", "urn:hematovision:local-code:99LAB"
    assert _fhir_codes(api.get("/api/v1/specimens/ACC-CODES/fhir/").json()) == [
        [(loinc, "57023-4"), (local, "DIFF")],
        [(loinc, "770-8"), (local, "NEUT%")],
        [(loinc, "713-8")],
        [(loinc, "736-9")],
        [(loinc, "5905-5")],
    ]
    sign_all(specimen, signer)
    version = ReportVersion.objects.get()
    assert _hl7_codes(version.hl7) == [
        "24318-8^Manual Differential panel - Blood^LN^DIFF^WBC differential^99LAB",
        "769-0^Neutrophils.segmented/100 leukocytes in Blood by Manual count^LN^NEUT%^Neutrophils %^99LAB",
        "714-6^Eosinophils/100 leukocytes in Blood by Manual count^LN",
        "737-7^Lymphocytes/100 leukocytes in Blood by Manual count^LN",
        "744-3^Monocytes/100 leukocytes in Blood by Manual count^LN",
    ]
    assert _fhir_codes(version.fhir) == [
        [(loinc, "24318-8"), (local, "DIFF")],
        [(loinc, "769-0"), (local, "NEUT%")],
        [(loinc, "714-6")],
        [(loinc, "737-7")],
        [(loinc, "744-3")],
    ]
    report = version.fhir["entry"][0]["resource"]
    assert report["code"]["coding"][1] == {"system": local, "code": "DIFF", "display": "WBC differential"}


@pytest.mark.django_db
def test_the_labs_code_system_names_are_settings_and_delimiters_are_escaped(specimen, user, settings):
    settings.HEMATOVISION_LOCAL_CODES = {"LYMPHOCYTE": ["LY|M", "Lymphs ^ %"]}
    settings.HEMATOVISION_LOCAL_CODE_SYSTEM = "L"
    settings.HEMATOVISION_LOCAL_CODE_URI = "http://lab.example.org/codes"
    api = client_for(user)
    assert _hl7_codes(api.get("/api/v1/specimens/ACC-CODES/hl7/").content.decode())[3] == (
        "736-9^Lymphocytes/100 leukocytes in Blood by Automated count^LN^LY\\F\\M^Lymphs \\S\\ %^L"
    )
    assert _fhir_codes(api.get("/api/v1/specimens/ACC-CODES/fhir/").json())[3] == [
        ("http://loinc.org", "736-9"),
        ("http://lab.example.org/codes", "LY|M"),
    ]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"NEUTROFIL": ["N", "N"]}, "'NEUTROFIL' is neither PANEL nor a class of the cell-class table"),
        ({"PANEL": ["DIFF"]}, "'PANEL' must map to [local code, display], two non-empty strings"),
        ({"PANEL": ["DIFF", " "]}, "'PANEL' must map to [local code, display], two non-empty strings"),
        (["PANEL"], "must be a mapping of PANEL or a class code to [local code, display]"),
    ],
)
def test_a_malformed_setting_is_named_by_manage_py_check_and_never_half_used(settings, value, problem):
    settings.HEMATOVISION_LOCAL_CODES = value
    with pytest.raises(SystemCheckError, match="hematovision.E019") as raised:
        call_command("check")
    assert problem in str(raised.value)
    with pytest.raises(ImproperlyConfigured) as raised:
        codes.local_code("PANEL")
    assert str(raised.value) == f"HEMATOVISION_LOCAL_CODES: {problem}"


def test_the_hl7_coding_system_must_be_local(settings):
    settings.HEMATOVISION_LOCAL_CODE_SYSTEM = "LN"
    with pytest.raises(SystemCheckError, match="must be L or 99zzz"):
        call_command("check")
