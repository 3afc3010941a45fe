"""GET /api/v1/specimens/{accession}/hl7/: an ORU^R01 v2.5.1 message that hl7apy parses strictly."""

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from classifier.cells import review as cell_review
from classifier.specimens import signoff
from classifier.tests.factories import ClassificationFactory, SpecimenFactory

pytestmark = pytest.mark.django_db



@pytest.fixture
def specimen(user):
    specimen = SpecimenFactory(accession="ACC-HL7.1", created_by=user)
    for label in ("NEUTROPHIL", "NEUTROPHIL", "LYMPHOCYTE", "MONOCYTE"):
        ClassificationFactory(owner=user, specimen=specimen, predicted_label=label)
    return specimen


def fetch(client, accession="ACC-HL7.1", **headers):
    return client.get(f"/api/v1/specimens/{accession}/hl7/", **headers)


def parse(response):
    """What a receiving LIS does: parse with strict 2.5.1 validation, then validate the whole message."""
    text = response.content.decode("utf-8")
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT)
    assert message.validate() is True
    return message


def obx_rows(message):
    rows = []
    for observation in message.oru_r01_patient_result.oru_r01_order_observation.oru_r01_observation:
        obx = observation.obx
        if not obx.obx_3.to_er7().endswith("^LN"):
            continue  # the counts behind the percentages (local codes): tested in test_lis.py
        rows.append(
            (
                obx.obx_2.to_er7(),
                obx.obx_3.to_er7(),
                obx.obx_5.to_er7(),
                obx.obx_6.to_er7(),
                obx.obx_7.to_er7(),
                obx.obx_8.to_er7(),
                obx.obx_11.to_er7(),
            )
        )
    return rows


def test_oru_r01_parses_in_strict_mode(api_client, user, specimen):
    api_client.force_authenticate(user)
    response = fetch(api_client)
    assert response.status_code == 200
    assert response["Content-Type"] == "x-application/hl7-v2+er7; charset=utf-8"
    segments = response.content.decode().split("\r")
    assert segments[-1] == ""  # the last segment is terminated too
    # No order: no PID (none is invented); ORC with the filler number; then the counts as OBX of their own.
    assert [s[:3] for s in segments[:-1]] == [
        "MSH",
        "ORC",
        "OBR",
        "OBX",
        "NTE",
        "OBX",
        "NTE",
        "OBX",
        "NTE",
        "OBX",
        "NTE",
        "OBX",
        "OBX",
        "SPM",
    ]
    message = parse(response)
    assert message.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert message.msh.msh_12.to_er7() == "2.5.1"
    assert message.msh.msh_3.to_er7() == "HEMATOVISION"
    assert message.msh.msh_4.to_er7() == "Hematology"  # the lab name, cut at a word to 20 characters
    result = message.oru_r01_patient_result
    assert result.oru_r01_order_observation.orc.orc_3.to_er7() == "ACC-HL7.1^HEMATOVISION"
    obr = result.oru_r01_order_observation.obr
    assert obr.obr_3.to_er7() == "ACC-HL7.1^HEMATOVISION"
    assert obr.obr_4.to_er7() == "57023-4^Auto Differential panel - Blood^LN"
    assert obr.obr_25.to_er7() == "P"
    assert result.oru_r01_order_observation.oru_r01_specimen.spm.spm_2.to_er7() == "^ACC-HL7.1&HEMATOVISION"


def test_one_obx_per_class_numeric_percent_with_range_flag_and_status(api_client, user, specimen):
    api_client.force_authenticate(user)
    assert obx_rows(parse(fetch(api_client))) == [
        # the cell-class table's order: neutrophils first
        (
            "NM",
            "770-8^Neutrophils/100 leukocytes in Blood by Automated count^LN",
            "50",
            "%^percent^UCUM",
            "40-75",
            "N",
            "P",
        ),
        (
            "NM",
            "713-8^Eosinophils/100 leukocytes in Blood by Automated count^LN",
            "0",
            "%^percent^UCUM",
            "1-6",
            "L",
            "P",
        ),
        (
            "NM",
            "736-9^Lymphocytes/100 leukocytes in Blood by Automated count^LN",
            "25",
            "%^percent^UCUM",
            "20-45",
            "N",
            "P",
        ),
        (
            "NM",
            "5905-5^Monocytes/100 leukocytes in Blood by Automated count^LN",
            "25",
            "%^percent^UCUM",
            "2-10",
            "H",
            "P",
        ),
    ]


def test_final_status_after_sign_off(api_client, user, reviewer, specimen):
    for cell in specimen.cells.all():
        cell_review.classification_review(classification=cell, reviewer=reviewer, label=cell.predicted_label)
    signoff.specimen_sign(specimen=specimen, reviewer=reviewer)
    api_client.force_authenticate(user)
    message = parse(fetch(api_client))
    assert message.oru_r01_patient_result.oru_r01_order_observation.obr.obr_25.to_er7() == "F"
    assert {row[-1] for row in obx_rows(message)} == {"F"}


def test_classes_without_counted_cells_are_sent_without_value(api_client, user):
    specimen = SpecimenFactory(accession="ACC-NONE", created_by=user)
    ClassificationFactory(owner=user, specimen=specimen, unidentified=True)
    api_client.force_authenticate(user)
    rows = obx_rows(parse(fetch(api_client, "ACC-NONE")))
    assert [(value, flag, status) for _, _, value, _, _, flag, status in rows] == [("", "", "X")] * 4


def test_hl7_permissions_and_json_errors(api_client, other_user, reviewer, specimen):
    api_client.force_authenticate(other_user)
    hidden = fetch(api_client)
    assert hidden.status_code == 404
    assert hidden["Content-Type"] == "application/json"
    assert hidden.json() == {"detail": "No Specimen matches the given query.", "code": "not_found"}
    api_client.force_authenticate(reviewer)
    assert fetch(api_client).status_code == 200


# HEMATOVISION_LAB_NAME -> MSH-4 as sent: escaped, at most 20 characters (HD.1) counted as sent, cut at a
# word, never inside an escape sequence; control characters and runs of whitespace become one space.
LAB_NAMES = {
    "Hematology Laboratory": "Hematology",
    "ABCDEFGHIJKLMNOPQR&S": "ABCDEFGHIJKLMNOPQR",  # was ABCDEFGHIJKLMNOPQR\E\T: 22 characters, refused
    "ABCDEFGHIJKLMNOPQ&": "ABCDEFGHIJKLMNOPQ\\T\\",  # exactly 20 escaped
    "ABCDEFGHIJKLMNOPQRS&": "ABCDEFGHIJKLMNOPQRS",
    "Hematology Lab Ltd&Co": "Hematology Lab",
    "Heme|Onc Laboratory Services": "Heme\\F\\Onc",
    "Lab\\Hem": "Lab\\E\\Hem",
    "A^B Lab": "A\\S\\B Lab",
    "\\&|^~\\&|^~": "\\E\\\\T\\\\F\\\\S\\\\R\\\\E\\",  # six characters fit, escaped
    "Labo Hématologie": "Labo Hématologie",
    "Labo d'Hématologie & Cytologie": "Labo d'Hématologie",
    "  Lab\r\nName\t ": "Lab Name",  # a CR would end the segment
    "": "HEMATOVISION",
    "   ": "HEMATOVISION",
}


@pytest.mark.parametrize("lab_name", LAB_NAMES)
def test_every_message_parses_strictly_whatever_the_lab_name(api_client, user, reviewer, settings, lab_name):
    settings.HEMATOVISION_LAB_NAME = lab_name
    # Every kind of message the endpoint sends: preliminary with values, final, no counted cell.
    preliminary = SpecimenFactory(accession="LAB-P", created_by=user)
    ClassificationFactory(owner=user, specimen=preliminary, predicted_label="NEUTROPHIL")
    final = SpecimenFactory(accession="LAB-F", created_by=user)
    cell = ClassificationFactory(owner=user, specimen=final, predicted_label="MONOCYTE")
    cell_review.classification_review(classification=cell, reviewer=reviewer, label="MONOCYTE")
    signoff.specimen_sign(specimen=final, reviewer=reviewer)
    empty = SpecimenFactory(accession="LAB-E", created_by=user)
    ClassificationFactory(owner=user, specimen=empty, unidentified=True)
    api_client.force_authenticate(user)
    for accession, status in (("LAB-P", "P"), ("LAB-F", "F"), ("LAB-E", "P")):
        response = fetch(api_client, accession)
        assert response.status_code == 200
        message = parse(response)  # strict: MSH-4 within 20 characters, every escape sequence whole
        msh = response.content.decode("utf-8").split("\r")[0].split("|")
        assert msh == [
            "MSH",
            "^~\\&",
            "HEMATOVISION",
            LAB_NAMES[lab_name],
            "",
            "",
            message.msh.msh_7.to_er7(),
            "",
            "ORU^R01^ORU_R01",
            message.msh.msh_10.to_er7(),
            "P",
            "2.5.1",
            "",
            "",
            "",
            "",
            "",
            "UNICODE UTF-8",
        ]
        assert message.msh.msh_4.to_er7() == LAB_NAMES[lab_name]
        assert message.msh.msh_18.to_er7() == "UNICODE UTF-8"
        assert message.oru_r01_patient_result.oru_r01_order_observation.obr.obr_25.to_er7() == status
