"""What goes out to other systems at the edges: odd lab names in HL7 and FHIR, report downloads' errors."""

import random
import re

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from rest_framework.authentication import SessionAuthentication
from rest_framework.test import APIClient

from classifier.api.views.jobs import SpecimenReportCsvView, SpecimenReportPdfView
from classifier.interop import fhir, hl7
from classifier.interop.result import ResultReport
from classifier.specimens import selectors as specimen_selectors
from classifier.tests.factories import ClassificationFactory, SpecimenFactory

pytestmark = pytest.mark.django_db

UNESCAPE = {"E": "\\", "F": "|", "S": "^", "T": "&", "R": "~"}


def unescape(er7: str) -> str:
    return re.sub(r"\\([EFSTR])\\", lambda m: UNESCAPE[m.group(1)], er7)


def test_any_lab_name_gives_a_strictly_valid_message_and_bundle(user, settings):
    """Random names full of delimiters, spaces, accents and control characters, built and parsed back."""
    specimen = SpecimenFactory(accession="EDGE-1", created_by=user)
    ClassificationFactory(owner=user, specimen=specimen, predicted_label="NEUTROPHIL")
    differential = specimen_selectors.specimen_differential(specimen=specimen)
    alphabet = "abcXYZ  \\|^&~éß\r\n\t\x00"
    rng = random.Random(7)
    for _ in range(40):
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        settings.HEMATOVISION_LAB_NAME = name
        one_line = " ".join(re.sub(r"[\x00-\x1f]", " ", name).split())
        report = ResultReport(specimen=specimen, differential=differential)
        message = parse_message(hl7.oru_r01(report), validation_level=VALIDATION_LEVEL.STRICT)
        assert message.validate() is True
        sent = message.msh.msh_4.to_er7()
        assert len(sent) <= 20, repr(name)
        assert message.msh.msh_18.to_er7() == "UNICODE UTF-8", repr(name)
        if one_line:
            assert one_line.startswith(unescape(sent)), repr(name)
            assert unescape(sent) == unescape(sent).strip(), repr(name)
        else:
            assert sent == "HEMATOVISION"
        bundle = fhir.specimen_bundle(report)
        assert bundle["entry"][0]["resource"]["performer"] == [{"display": one_line or "HEMATOVISION"}]


# Report downloads: errors are JSON whatever file type the client asked for.

REPORTS = [("report.pdf", "application/pdf"), ("report.csv", "text/csv")]


@pytest.mark.parametrize(("name", "media_type"), REPORTS)
def test_report_404_is_json(api_client, user, other_user, name, media_type):
    SpecimenFactory(accession="REP-9", created_by=user)
    api_client.force_authenticate(other_user)
    for accession in ("REP-9", "NOPE"):  # another user's specimen is answered like a missing one
        response = api_client.get(f"/api/v1/specimens/{accession}/{name}", HTTP_ACCEPT=media_type)
        assert response.status_code == 404
        assert response["Content-Type"] == "application/json"
        assert response.json() == {"detail": "No such specimen.", "code": "not_found"}


@pytest.mark.parametrize(("name", "media_type"), REPORTS)
def test_report_401_is_json(name, media_type, user):
    SpecimenFactory(accession="REP-9", created_by=user)
    response = APIClient().get(f"/api/v1/specimens/REP-9/{name}", HTTP_ACCEPT=media_type)
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "detail": "Authentication credentials were not provided.",
        "code": "not_authenticated",
    }


@pytest.mark.parametrize(("name", "media_type"), REPORTS)
def test_report_403_is_json(monkeypatch, name, media_type, user):
    """With session authentication only (no token scheme to name in WWW-Authenticate) DRF answers 403."""
    for view in (SpecimenReportPdfView, SpecimenReportCsvView):
        monkeypatch.setattr(view, "authentication_classes", [SessionAuthentication])
    SpecimenFactory(accession="REP-9", created_by=user)
    response = APIClient().get(f"/api/v1/specimens/REP-9/{name}", HTTP_ACCEPT=media_type)
    assert response.status_code == 403
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "detail": "Authentication credentials were not provided.",
        "code": "not_authenticated",
    }


@pytest.mark.parametrize(("name", "media_type"), REPORTS)
def test_report_is_still_the_file_when_asked_for(tech_api, user, name, media_type):
    specimen = SpecimenFactory(accession="REP-9", created_by=user)
    ClassificationFactory(owner=user, specimen=specimen, predicted_label="NEUTROPHIL")
    # A token, as an LIS sends it (force_authenticate would hide the request from the middleware).
    response = tech_api.get(f"/api/v1/specimens/REP-9/{name}", HTTP_ACCEPT=media_type)
    assert response.status_code == 200
    assert response["Content-Type"].split(";")[0] == media_type
    assert response["Cache-Control"] == "private, no-store"
