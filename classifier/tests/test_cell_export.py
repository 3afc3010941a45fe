"""The per-cell CSV (``cells.export``): the portal's history export and a specimen's report.csv are
one table, the same columns in the same order, the same row for the same cell."""

import csv
import io

import pytest
from django.urls import reverse
from django.utils import timezone

from classifier.cells import export
from classifier.cells import review as cell_review
from classifier.models import Classification, ReviewState
from classifier.tests.bad_input import jpeg, post_file
from classifier.tests.factories import ClassificationFactory, SpecimenFactory

pytestmark = pytest.mark.django_db


def _rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_history_and_report_csv_have_the_same_columns_and_rows(tech_client, user, reviewer):
    specimen = SpecimenFactory(accession="CSV-7", created_by=user)
    plain = ClassificationFactory(
        owner=user, specimen=specimen, external_id="LIS-7", original_filename="=x.jpg"
    )
    reviewed = ClassificationFactory(owner=user, specimen=specimen, predicted_label="NEUTROPHIL")
    cell_review.classification_review(classification=reviewed, reviewer=reviewer, label="MONOCYTE")
    history = _rows(b"".join(tech_client.get(reverse("classification-export")).streaming_content).decode())
    report = _rows(tech_client.get(reverse("specimen-report-csv", args=["CSV-7"])).content.decode())
    assert history[0] == report[0] == export.HEADER
    assert sorted(history[1:]) == sorted(report[1:])
    rows = {line[1]: dict(zip(report[0], line, strict=True)) for line in report[1:]}
    assert rows[str(plain.pk)] | {"created_at": ""} == {
        "accession": "CSV-7",
        "cell_id": str(plain.pk),
        "original_filename": "'=x.jpg",
        "created_at": "",
        "status": "classified",
        "predicted_label": "EOSINOPHIL",
        "confidence": "0.8800",
        "flag_reason": "",
        "final_label": "",
        "label": "EOSINOPHIL",
        "review_state": "unreviewed",
        "reviewed_by": "",
        "reviewed_at": "",
        "signed_at": "",
        "model_version": "fake-0001",
        "external_id": "LIS-7",
        "owner": "tech",
        "signed_by": "",
    }
    reviewed.refresh_from_db()
    assert reviewed.review_state == ReviewState.RECLASSIFIED
    assert (rows[str(reviewed.pk)]["final_label"], rows[str(reviewed.pk)]["label"],
            rows[str(reviewed.pk)]["reviewed_by"], rows[str(reviewed.pk)]["reviewed_at"]) == (
        "MONOCYTE", "MONOCYTE", "reviewer", timezone.localtime(reviewed.reviewed_at).isoformat())


def test_every_value_of_a_row_is_defused(user):
    cell = ClassificationFactory.build(owner=user, pk=3, original_filename="a;=1+1", flag_reason="@x",
                                       model_version="-1", external_id="+2")
    row = dict(zip(export.HEADER, export.cell_row(cell), strict=True))
    assert (row["original_filename"], row["flag_reason"], row["model_version"], row["external_id"],
            row["owner"], row["created_at"]) == ("a;'=1+1", "'@x", "'-1", "'+2", "tech", "")


@pytest.mark.usefixtures("bad_input_settings")
def test_formula_in_a_file_name_is_kept_but_defused_in_csv_exports(clients, settings):
    response = post_file("api", clients, "=1+2*cmd|A0.jpg", jpeg())
    assert response.status_code == 201
    assert Classification.objects.get().original_filename == "=1+2*cmd|A0.jpg"
    history = clients.portal.get("/classifications/export.csv")
    text = b"".join(history.streaming_content).decode()
    assert "\"'=1+2*cmd|A0.jpg\"" in text
    assert ",=1+2*cmd" not in text
    assert '"=1+2*cmd' not in text
