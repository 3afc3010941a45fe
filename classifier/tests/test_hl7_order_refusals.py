"""Every refusal of an HL7 order, pinned: the ACK code (table 0008), the ERR-3 code (table 0357)
and the reason, in the order the checks run; and the ORC-12/OBR-16 choice of the ordering provider.
``orders.parse_order`` alone: no database."""

import pytest

from classifier.interop import orders
from classifier.tests.test_lis import OML

PID3 = "MRN-42^^^HOSP^MR~999^^^SSA^SS"


def _without(segment: str, message: str = OML) -> str:
    return "\r".join(line for line in message.split("\r") if not line.startswith(segment + "|"))


@pytest.mark.parametrize(
    ("message", "code", "error_code", "reason"),
    [
        ("not an hl7 message", "AR", "100", None),
        (
            OML.replace("OML^O21^OML_O21", "ADT^A01^ADT_A01"),
            "AR",
            "200",
            "Unsupported message type ADT^A01; send OML^O21 or ORM^O01.",
        ),
        (OML.replace("|P|2.5.1", "|P|2.2"), "AR", "203", "Unsupported HL7 version '2.2'."),
        (_without("PID"), "AE", "100", "No PID segment: an order needs its patient."),
        (_without("ORC"), "AE", "100", "No ORC segment."),
        (
            OML.replace("ORC|NW|", "ORC|CA|"),
            "AR",
            "201",
            "Order control 'CA' is not supported; only NW (new order).",
        ),
        (
            OML.replace(PID3, ""),
            "AE",
            "101",
            "PID-3 needs the patient's identifier and its assigning authority (CX.1, CX.4).",
        ),
        (
            OML.replace(PID3, "MRN-42^^^^MR"),
            "AE",
            "101",
            "PID-3 needs the patient's identifier and its assigning authority (CX.1, CX.4).",
        ),
        (
            OML.replace("ORC|NW|PO-1001^SIMLIS|", "ORC|NW||").replace("OBR|1|PO-1001^SIMLIS|", "OBR|1||"),
            "AE",
            "101",
            "No placer order number (ORC-2 or OBR-2).",
        ),
        (
            _without("SPM"),
            "AE",
            "101",
            "No accession: send the specimen id in SPM-2 or the filler order number in ORC-3.",
        ),
        (OML.replace("||19800229|F", "||19801399|F"), "AE", "102", None),
        (OML.replace("||||||||||||20261125084000", "||||||||||||2026XX"), "AE", "102", None),
    ],
    ids=["not-er7", "type", "version", "no-pid", "no-orc", "control", "no-mrn", "no-authority",
         "no-placer", "no-accession", "birth-date", "collected"],
)
def test_each_refusal_has_its_ack_code_error_code_and_reason(message, code, error_code, reason):
    with pytest.raises(orders.Refused) as refused:
        orders.parse_order(message)
    assert (refused.value.code, refused.value.error_code) == (code, error_code)
    if reason is not None:
        assert refused.value.reason == reason
    assert str(refused.value) == refused.value.reason


def test_the_first_failing_check_is_the_one_reported():
    """No PID and no ORC: the PID is reported; a bad control and no MRN: the control."""
    with pytest.raises(orders.Refused, match="No PID segment"):
        orders.parse_order(_without("ORC", _without("PID")))
    with pytest.raises(orders.Refused, match="Order control"):
        orders.parse_order(OML.replace("ORC|NW|", "ORC|XO|").replace(PID3, ""))


def test_a_whole_order_is_read_field_by_field():
    fields = orders.parse_order(OML)
    assert fields.pop("patient_birth_date").isoformat() == "1980-02-29"
    assert fields.pop("collected_at").isoformat().startswith("2026-11-25T08:40:00")
    assert fields == {
        "accession": "ACC-LIS-1",
        "placer_order_number": "PO-1001",
        "placer_namespace": "SIMLIS",
        "patient_id": "MRN-42",
        "patient_id_authority": "HOSP",
        "patient_family_name": "Doe",
        "patient_given_name": "Jane",
        "patient_sex": "F",
        "ordering_provider_id": "D123",
        "ordering_provider_family_name": "House",
        "ordering_provider_given_name": "Greg",
        "wbc_count": None,
        "source": "hl7",
        "message_control_id": "ORD0001",
    }
    assert list(orders.parse_order(OML)) == [
        "accession", "placer_order_number", "placer_namespace", "patient_id", "patient_id_authority",
        "patient_family_name", "patient_given_name", "patient_birth_date", "patient_sex",
        "ordering_provider_id", "ordering_provider_family_name", "ordering_provider_given_name",
        "collected_at", "wbc_count", "source", "message_control_id",
    ]


def test_without_orc_12_the_provider_is_obr_16_and_odd_sex_is_unknown():
    message = (
        OML.replace("||||||||||D123^House^Greg", "")
        .replace("||20261125084000\rSPM", "||20261125084000|||||||||D9^Wilson^James\rSPM")
        .replace("||19800229|F", "||19800229|X")
    )
    fields = orders.parse_order(message)
    assert (
        fields["ordering_provider_id"],
        fields["ordering_provider_family_name"],
        fields["ordering_provider_given_name"],
        fields["patient_sex"],
    ) == ("D9", "Wilson", "James", "U")


def test_the_mr_identifier_is_chosen_and_the_authority_may_be_a_universal_id():
    message = OML.replace(PID3, "999^^^SSA^SS~MRN-7^^^&1.2.3.4&ISO^MR")
    fields = orders.parse_order(message)
    assert (fields["patient_id"], fields["patient_id_authority"]) == ("MRN-7", "1.2.3.4")
    fields = orders.parse_order(OML.replace(PID3, "ONLY-1^^^HOSP2"))
    assert (fields["patient_id"], fields["patient_id_authority"]) == ("ONLY-1", "HOSP2")
