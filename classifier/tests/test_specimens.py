"""Specimen pages and API: list, detail, sign-off, batch and whole-field uploads, jobs, reports."""

import io
import json
from pathlib import Path

import pytest
from django.urls import reverse
from PIL import Image
from rest_framework.authtoken.models import Token

from classifier.cells import review as cell_review
from classifier.cells import services as cell_services
from classifier.jobs import runner
from classifier.jobs import selectors as job_selectors
from classifier.jobs import services as job_services
from classifier.models import BatchJob, Classification, ReviewState, Specimen
from classifier.tests.specimen_helpers import (
    cell_png,
    field_jpeg,
    make_zip,
    media_files,
    sync_jobs,  # noqa: F401
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("sync_jobs")]


def upload(name, data, content_type="image/png"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data, content_type=content_type)


def specimen_with_cells(user, accession="S-1", labels=("EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE")):
    job = job_services.job_create(
        user=user,
        accession=accession,
        enqueue=False,
        files=[(f"{i}.png", cell_png(label, i)) for i, label in enumerate(labels)],
    )
    return runner.job_run(job_id=job.pk).specimen


def token_client(api_client, user):
    api_client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return api_client


# Portal -------------------------------------------------------------------------------------------


def test_batch_upload_page_runs_a_job_and_shows_progress(
    tech_client, user, django_capture_on_commit_callbacks
):
    page = tech_client.get(reverse("batch-upload"))
    assert page.status_code == 200
    assert b'enctype="multipart/form-data"' in page.content
    with django_capture_on_commit_callbacks(execute=True):
        response = tech_client.post(
            reverse("batch-upload"),
            {
                "accession": "WEB-1",
                "kind": "cells",
                "images": [
                    upload("a.png", cell_png("EOSINOPHIL", 1)),
                    upload("b.png", cell_png("MONOCYTE", 2)),
                ],
                "archive": upload(
                    "more.zip",
                    make_zip({"c.png": cell_png("LYMPHOCYTE", 3), "x.txt": b"x"}).getvalue(),
                    "application/zip",
                ),
            },
        )
    job = BatchJob.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("job-detail", args=[job.pk])
    page = tech_client.get(response["Location"])
    assert page.status_code == 200
    html = page.content.decode()
    assert f"Job {job.pk}" in html
    assert "WEB-1" in html
    assert "js/job_progress.js" in html
    assert "<script>" not in html  # CSP: no inline script
    assert "Not an image file" in html
    status = tech_client.get(reverse("job-status", args=[job.pk])).json()
    assert (status["state"], status["total"], status["counts"]) == (
        "done_with_errors",
        4,
        {"pending": 0, "done": 3, "failed": 1, "skipped": 0},
    )
    assert [i["label"] for i in status["items"]] == ["EOSINOPHIL", "MONOCYTE", "LYMPHOCYTE", None]


def test_batch_upload_errors_are_shown_and_store_nothing(tech_client, other_user, settings):
    cell_services.classification_create(user=other_user, data=cell_png("MONOCYTE", 5), accession="THEIRS")
    response = tech_client.post(reverse("batch-upload"), {"accession": "WEB-2", "kind": "cells"})
    assert response.status_code == 200
    assert "Choose some images or a ZIP archive." in response.content.decode()
    response = tech_client.post(
        reverse("batch-upload"),
        {"accession": "THEIRS", "kind": "cells", "images": [upload("a.png", cell_png())]},
    )
    assert response.status_code == 200
    assert "cannot be added to accession THEIRS" in response.content.decode()
    assert not BatchJob.objects.exists()
    assert media_files(settings, "batches") == []


def test_no_role_user_cannot_start_a_job(client, no_role_user):
    client.force_login(no_role_user)
    response = client.post(
        reverse("batch-upload"),
        {"accession": "NR-1", "kind": "cells", "images": [upload("a.png", cell_png())]},
    )
    assert response.status_code == 403
    assert not BatchJob.objects.exists()


def test_job_pages_of_other_users_are_404(client, user, other_user):
    specimen = specimen_with_cells(user)
    job = specimen.batch_jobs.get()
    client.force_login(other_user)
    for name, args in [
        ("job-detail", [job.pk]),
        ("job-status", [job.pk]),
        ("specimen-detail", ["S-1"]),
        ("specimen-report-pdf", ["S-1"]),
        ("specimen-report-csv", ["S-1"]),
    ]:
        assert client.get(reverse(name, args=args)).status_code == 404, name
    cell = specimen.cells.first()
    assert client.get(reverse("specimen-cell-image", args=["S-1", cell.pk])).status_code == 404


def test_technologist_opens_every_cell_of_own_specimen_only(client, user, other_user, reviewer):
    """A reviewer may add cells to a technologist's specimen; its gallery, differential and report
    show them, so the technologist may open them too (but not the reviewer's other results)."""
    mine = cell_services.classification_create(user=user, data=cell_png("EOSINOPHIL", 1), accession="S-9")
    added = cell_services.classification_create(user=reviewer, data=cell_png("MONOCYTE", 2), accession="S-9")
    elsewhere = cell_services.classification_create(user=reviewer, data=cell_png("MONOCYTE", 3))
    client.force_login(user)
    for cell in (mine, added):
        assert client.get(reverse("classification-detail", args=[cell.pk])).status_code == 200
        assert client.get(reverse("classification-image", args=[cell.pk])).status_code == 200
        assert client.get(reverse("specimen-cell-image", args=["S-9", cell.pk])).status_code == 200
    assert client.get(reverse("classification-detail", args=[elsewhere.pk])).status_code == 404
    history = client.get(reverse("classification-list")).context["page_obj"]
    assert [c.pk for c in history] == [mine.pk]  # history: their own results
    client.force_login(other_user)
    assert client.get(reverse("classification-detail", args=[added.pk])).status_code == 404


def test_job_progress_gives_unidentified_cells_no_class(user, settings):
    job = job_services.job_create(
        user=user, accession="S-U", files=[("flat.png", _flat_png())], enqueue=False
    )
    runner.job_run(job_id=job.pk)
    row = job_selectors.job_progress(job=BatchJob.objects.get(pk=job.pk))["items"][0]
    assert (row["state"], row["status"], row["label"]) == ("done", "unidentified", None)
    cell = Classification.objects.get()
    assert cell.predicted_label == "NEUTROPHIL"
    assert cell.label == ""


def _flat_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_specimen_list_detail_and_sign(reviewer_client, user, reviewer):
    from django.test import Client

    tech_client = Client()
    tech_client.force_login(user)
    specimen = specimen_with_cells(user)
    specimen_with_cells(user, accession="S-2", labels=("LYMPHOCYTE",))
    html = tech_client.get(reverse("specimen-list")).content.decode()
    assert "S-1" in html
    assert "S-2" in html
    assert "Preliminary" in html

    detail = reviewer_client.get(reverse("specimen-detail", args=["S-1"]))
    html = detail.content.decode()
    assert detail.context["differential"].counted_cells == 3
    assert [(r.label, r.count) for r in detail.context["differential"].classes] == [
        ("NEUTROPHIL", 0), ("EOSINOPHIL", 1), ("LYMPHOCYTE", 1), ("MONOCYTE", 1),
    ]
    assert 'id="sign-button"' in html
    assert "disabled" in html.split('id="sign-button"')[1].split(">")[0]
    cell = specimen.cells.first()
    image = reviewer_client.get(reverse("specimen-cell-image", args=["S-1", cell.pk]))
    assert image.status_code == 200
    assert b"".join(image.streaming_content)[:4] == b"\x89PNG"

    response = reviewer_client.post(reverse("specimen-sign", args=["S-1"]), follow=True)
    assert "3 cell(s) are not reviewed yet (0 unidentified)" in response.content.decode()
    assert not Specimen.objects.get(accession="S-1").is_signed

    for c in specimen.cells.all():
        cell_review.classification_review(classification=c, reviewer=reviewer, label=c.predicted_label)
    response = reviewer_client.post(reverse("specimen-sign", args=["S-1"]), follow=True)
    assert "Specimen S-1 is signed; the report is final." in response.content.decode()
    signed = Specimen.objects.get(accession="S-1")
    assert signed.signed_by == reviewer
    assert set(signed.cells.values_list("review_state", flat=True)) == {
        "signed"
    }

    # A technologist cannot sign (the service refuses: 403).
    specimen_with_cells(user, accession="S-3", labels=("MONOCYTE",))
    assert tech_client.post(reverse("specimen-sign", args=["S-3"])).status_code == 403


def test_reports_and_date_range_export(tech_client, user):
    specimen_with_cells(user)
    pdf = tech_client.get(reverse("specimen-report-pdf", args=["S-1"]))
    assert (
        pdf.status_code == 200
    )
    assert (
        pdf["Content-Type"] == "application/pdf"
    )
    assert (
        pdf.content.startswith(b"%PDF")
    )
    csv_response = tech_client.get(reverse("specimen-report-csv", args=["S-1"]))
    assert csv_response["Content-Disposition"] == 'attachment; filename="S-1-cells.csv"'
    assert len(csv_response.content.decode().strip().splitlines()) == 4
    export = tech_client.get(reverse("specimen-export"), {"start": "2000-01-01", "end": "2999-12-31"})
    assert export.status_code == 200
    assert export.content.decode().splitlines()[1].startswith('"S-1",')
    bad = tech_client.get(
        reverse("specimen-export"), {"start": "2020-02-01", "end": "2020-01-01"}, follow=True
    )
    assert "The start date is after the end date." in bad.content.decode()


def test_whole_field_upload_locates_classifies_and_draws_boxes(
    tech_client, user, settings, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = tech_client.post(
            reverse("field-upload"),
            {
                "accession": "FLD-1",
                "kind": "fields",
                "images": [
                    upload("field.jpg", field_jpeg(), "image/jpeg"),
                    upload("empty.jpg", field_jpeg(centres=()), "image/jpeg"),
                ],
            },
        )
    job = BatchJob.objects.get()
    assert response.status_code == 302
    assert job.kind == "fields"
    status = tech_client.get(reverse("job-status", args=[job.pk])).json()
    field, empty = status["items"]
    assert field["state"] == "done"
    assert [c["n"] for c in field["cells"]] == [1, 2]
    assert all(c["label"] and c["classification_id"] for c in field["cells"])
    # Boxes around the two synthetic nuclei (centres 160,120 and 480,330; radius 22).
    centres = sorted(((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in (c["box"] for c in field["cells"]))
    assert [(round(x / 10), round(y / 10)) for x, y in centres] == [(16, 12), (48, 33)]
    assert (empty["state"], empty["error_code"], empty["error"]) == (
        "failed",
        "no_cells_found",
        "No white cell was found in this field of view.",
    )
    assert Classification.objects.filter(specimen__accession="FLD-1").count() == 2
    page = tech_client.get(reverse("job-detail", args=[job.pk])).content.decode()
    assert reverse("job-field-image", args=[job.pk, 1]) in page
    png = tech_client.get(reverse("job-field-image", args=[job.pk, 1]))
    assert png["Content-Type"] == "image/png"
    assert png["Cache-Control"] == "private, no-store"  # PrivateResponsesMiddleware
    assert Image.open(io.BytesIO(png.content)).size == (640, 480)
    # A field where nothing was found is still shown, without boxes.
    assert tech_client.get(reverse("job-field-image", args=[job.pk, 2])).status_code == 200
    assert tech_client.get(reverse("job-field-image", args=[job.pk, 3])).status_code == 404
    # Re-running the same field adds no cells.
    runner.job_run(
        job_id=job_services.job_create(
            user=user, accession="FLD-1", kind="fields", enqueue=False, files=[("again.jpg", field_jpeg())]
        ).pk
    )
    assert Classification.objects.filter(specimen__accession="FLD-1").count() == 2


def test_field_on_a_real_original_image(user):
    path = Path(__file__).resolve().parents[3] / "shared/datasets/bccd-wbc/ORIGINAL/BloodImage_00000.jpg"
    if not path.exists():
        pytest.skip("the BCCD ORIGINAL folder is not mounted")
    job = job_services.job_create(
        user=user, accession="ORIG-0", kind="fields", enqueue=False, files=[(path.name, path.read_bytes())]
    )
    progress = job_selectors.job_progress(job=runner.job_run(job_id=job.pk))
    assert progress["items"][0]["state"] == "done"
    assert len(progress["items"][0]["cells"]) >= 1


# API ----------------------------------------------------------------------------------------------


def test_api_batch_202_then_job_progress(api_client, user, django_capture_on_commit_callbacks):
    client = token_client(api_client, user)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/api/v1/specimens/API-1/batch/",
            {
                "images": [
                    upload("a.png", cell_png("EOSINOPHIL", 1)),
                    upload("b.png", cell_png("LYMPHOCYTE", 2)),
                ],
            },
            format="multipart",
        )
    assert response.status_code == 202, response.content
    body = response.json()
    job = BatchJob.objects.get()
    assert body["id"] == job.pk
    assert body["accession"] == "API-1"
    assert body["state"] == "queued"
    assert response["Location"].endswith(f"/api/v1/jobs/{job.pk}/")
    progress = client.get(f"/api/v1/jobs/{job.pk}/").json()
    assert progress["state"] == "done"
    assert progress["counts"]["done"] == 2
    assert [(i["filename"], i["state"], i["label"]) for i in progress["items"]] == [
        ("a.png", "done", "EOSINOPHIL"),
        ("b.png", "done", "LYMPHOCYTE"),
    ]


def test_api_batch_archive_and_errors(
    api_client, user, other_user, settings, django_capture_on_commit_callbacks
):
    client = token_client(api_client, user)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/api/v1/specimens/API-2/batch/",
            {
                "archive": upload(
                    "x.zip",
                    make_zip({"d/a.png": cell_png(), "../b.png": cell_png("MONOCYTE", 5)}).getvalue(),
                    "application/zip",
                )
            },
            format="multipart",
        )
    assert response.status_code == 202
    job_id = response.json()["id"]
    items = client.get(f"/api/v1/jobs/{job_id}/").json()["items"]
    assert [(i["filename"], i["state"], i["error_code"]) for i in items] == [
        ("a.png", "done", None),
        ("b.png", "failed", "unsafe_path"),
    ]

    response = client.post("/api/v1/specimens/API-3/batch/", {}, format="multipart")
    assert response.status_code == 400
    assert response.json()["detail"] == "Send one or more `images` or one `archive` ZIP."
    response = client.post(
        "/api/v1/specimens/API-3/batch/",
        {"archive": upload("x.zip", b"not a zip", "application/zip")},
        format="multipart",
    )
    assert response.status_code == 400
    assert response.json() == {
        "detail": "The archive is not a readable ZIP file.",
        "code": "bad_archive",
    }
    response = client.post(
        "/api/v1/specimens/bad accession!/batch/",
        {"images": [upload("a.png", cell_png())]},
        format="multipart",
    )
    assert response.status_code == 400
    assert "accession number" in response.json()["detail"]
    assert BatchJob.objects.count() == 1
    assert media_files(settings, "batches") == []

    # Another technologist's job is 404.
    other = token_client(type(api_client)(), other_user)
    assert other.get(f"/api/v1/jobs/{job_id}/").status_code == 404
    assert api_client.__class__().get(f"/api/v1/jobs/{job_id}/").status_code == 401


def test_api_sign_reviewers_only_and_409_while_unreviewed(api_client, user, reviewer, other_user):
    specimen = specimen_with_cells(user, accession="SIGN-1")
    tech = token_client(api_client, user)
    response = tech.post("/api/v1/specimens/SIGN-1/sign/")
    assert response.status_code == 403
    assert response.json()["detail"] == "Only reviewers may sign specimens."
    other = token_client(type(api_client)(), other_user)
    assert other.post("/api/v1/specimens/SIGN-1/sign/").status_code == 404
    rev = token_client(type(api_client)(), reviewer)
    response = rev.post("/api/v1/specimens/SIGN-1/sign/")
    assert response.status_code == 409
    assert response.json() == {
        "detail": "3 cell(s) are not reviewed yet (0 unidentified); review every cell before signing.",
        "code": "unreviewed",
    }
    assert not Specimen.objects.get(accession="SIGN-1").is_signed
    for c in specimen.cells.all():
        cell_review.classification_review(classification=c, reviewer=reviewer, label=c.predicted_label)
    response = rev.post("/api/v1/specimens/SIGN-1/sign/")
    assert response.status_code == 200
    body = response.json()
    assert body["signed"] is True
    assert body["signed_by"] == "reviewer"
    assert body["counted_cells"] == 3
    assert set(Classification.objects.values_list("review_state", flat=True)) == {ReviewState.SIGNED}
    response = rev.post("/api/v1/specimens/SIGN-1/sign/")
    assert response.status_code == 409
    assert response.json()["detail"] == "Specimen SIGN-1 is already signed."


def test_api_reports(api_client, user, other_user):
    specimen_with_cells(user, accession="REP-1")
    client = token_client(api_client, user)
    pdf = client.get("/api/v1/specimens/REP-1/report.pdf")
    assert (
        pdf.status_code == 200
    )
    assert (
        pdf["Content-Type"] == "application/pdf"
    )
    assert (
        pdf.content.startswith(b"%PDF")
    )
    pdf = client.get("/api/v1/specimens/REP-1/report.pdf", HTTP_ACCEPT="application/pdf")
    assert pdf.status_code == 200
    assert pdf.content.startswith(b"%PDF")
    csv_response = client.get("/api/v1/specimens/REP-1/report.csv", HTTP_ACCEPT="text/csv")
    assert csv_response.status_code == 200
    header = csv_response.content.decode().splitlines()[0]
    assert header.startswith('"accession","cell_id","original_filename"')
    other = token_client(type(api_client)(), other_user)
    missing = other.get("/api/v1/specimens/REP-1/report.pdf", HTTP_ACCEPT="application/pdf")
    assert missing.status_code == 404
    assert json.loads(missing.content)["code"] == "not_found"


# Locator hit rate -----------------------------------------------------------------------------------
