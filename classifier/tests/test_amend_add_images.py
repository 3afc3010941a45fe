"""Issue 19 leftover (d): images added to a signed specimen through an amendment.

A reviewer opens an amendment with a reason (``POST .../amend/`` with ``add_images``, or "Open the
amendment to add images" in the portal): the specimen is reopened, uploads to its accession are
accepted through every door, the new cells are reviewed, and signing it again releases a corrected
report version (HL7 ``C``, FHIR ``corrected``, queued to the LIS); the earlier version stays readable.
Without an open amendment uploads are refused with a message that says how to amend.
"""

from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from fhir.resources.R4B.bundle import Bundle

from classifier.cells import review as cell_review
from classifier.jobs import runner
from classifier.models import BatchJob, Classification, OutboundMessage, ReportVersion, Specimen
from classifier.tests.factories import ClassificationFactory, SpecimenFactory
from classifier.tests.pdf_helpers import pdf_text
from classifier.tests.specimen_helpers import cell_png
from classifier.tests.test_lis import client_for, sign_all, strict

ACC = "ACC-AMD-1"
REFUSAL = (
    f"Specimen {ACC} is signed; to add images a reviewer opens an amendment (POST "
    f'/api/v1/specimens/{ACC}/amend/ with "add_images": true, or "Amend" on the specimen page), then '
    "the new cells are reviewed and the specimen signed again."
)
REASON = "Slide rescanned: two monocytes were missed."


def media(settings) -> list[str]:
    root = Path(settings.MEDIA_ROOT)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def api_upload(api, seed: int, label: str = "MONOCYTE", **fields):
    image = SimpleUploadedFile(f"cell-{seed}.png", cell_png(label, seed), "image/png")
    body = {"image": image, "accession": ACC, **fields}
    return api.post("/api/v1/classifications/", body, format="multipart")


@pytest.fixture
def signed(settings, user, reviewer):
    """A signed specimen of three cells (version 1 released and queued to one LIS destination)."""
    settings.HEMATOVISION_LIS_DESTINATIONS = ["127.0.0.1:2576"]
    settings.HEMATOVISION_JOBS_IN_THREAD = False
    specimen = SpecimenFactory(accession=ACC, created_by=user)
    for label in ("NEUTROPHIL", "NEUTROPHIL", "LYMPHOCYTE"):
        ClassificationFactory(owner=user, specimen=specimen, predicted_label=label)
    sign_all(specimen, reviewer)
    return Specimen.objects.get(pk=specimen.pk)


def state(specimen: Specimen) -> tuple:
    """What a refused request must leave as it was."""
    specimen.refresh_from_db()
    return (
        specimen.signed_at, specimen.amendment_reason, specimen.amendment_opened_at,
        sorted(specimen.cells.values_list("pk", "final_label", "review_state")),
        ReportVersion.objects.count(), OutboundMessage.objects.count(), BatchJob.objects.count(),
    )


@pytest.mark.django_db
def test_api_upload_to_a_signed_specimen_says_how_to_amend(signed, tech_api, settings):
    before, files = state(signed), media(settings)
    response = api_upload(tech_api, 1)
    assert response.status_code == 400
    assert response.json() == {"detail": REFUSAL, "code": "specimen_signed"}
    batch = tech_api.post(
        f"/api/v1/specimens/{ACC}/batch/",
        {"images": [SimpleUploadedFile("b.png", cell_png("MONOCYTE", 2), "image/png")]},
        format="multipart",
    )
    assert batch.status_code == 400
    assert batch.json() == {"detail": REFUSAL, "code": "specimen_signed"}
    assert state(signed) == before
    assert media(settings) == files


@pytest.mark.django_db
def test_bad_amendment_requests_change_nothing(signed, reviewer, user, settings):
    api = client_for(reviewer)
    before, files = state(signed), media(settings)
    url = f"/api/v1/specimens/{ACC}/amend/"
    cell = signed.cells.first()
    cases = [
        ({"reason": "  ", "add_images": True}, 400, "This field may not be blank."),
        ({"reason": REASON, "add_images": True, "labels": {"999999": "MONOCYTE"}}, 400, "not_in_specimen"),
        ({"reason": REASON, "add_images": True, "labels": {str(cell.pk): "DRAGON"}}, 400, "invalid"),
        ({"reason": "x" * 2001, "add_images": True}, 400, "max_length"),
    ]
    for body, status, code in cases:
        response = api.post(url, body, format="json")
        assert response.status_code == status, (body, response.json())
        assert code in str(response.json()), (body, response.json())
        assert (state(signed), media(settings)) == (before, files)
    assert api.post(url, cases[1][0], format="json").json() == {
        "detail": f"Cell(s) #999999 are not in specimen {ACC}.", "code": "not_in_specimen",
    }
    assert api.post(url, {"reason": REASON, "add_images": True}, format="json").status_code == 201
    signed.refresh_from_db()
    assert signed.amendment_is_open  # the one good request
    # A technologist may not open one: 403, and the open amendment is unchanged.
    forbidden = client_for(user).post(url, {"reason": "mine", "add_images": True}, format="json")
    assert forbidden.status_code == 403
    assert forbidden.json() == {
        "detail": "Only reviewers may amend a signed specimen.", "code": "permission_denied"
    }
    signed.refresh_from_db()
    assert signed.amendment_reason == REASON
    assert (before[4:], media(settings)) == (state(signed)[4:], files)


@pytest.mark.django_db
def test_api_amendment_adds_images_and_the_re_sign_releases_a_corrected_version(
    signed, reviewer, tech_api, settings
):
    api = client_for(reviewer)
    first = ReportVersion.objects.get()
    opened = api.post(
        f"/api/v1/specimens/{ACC}/amend/", {"reason": f" {REASON} ", "add_images": True}, format="json"
    )
    assert opened.status_code == 201, opened.json()
    signed.refresh_from_db()
    assert opened.json() == {
        "accession": ACC, "reason": REASON, "opened_by": "reviewer",
        "opened_at": signed.amendment_opened_at.isoformat().replace("+00:00", "Z"),
    }
    assert (signed.signed_at, signed.amendment_opened_by) == (None, reviewer)
    assert (ReportVersion.objects.count(), OutboundMessage.objects.count()) == (1, 1)  # nothing released yet
    # The PDF says it is not released and why it was reopened.
    pdf = " ".join(pdf_text(api.get(f"/api/v1/specimens/{ACC}/report.pdf").content).split())
    assert "PRELIMINARY — not signed" in pdf
    assert "AMENDMENT IN PROGRESS — opened" in pdf
    assert f"to add images. Reason: {REASON}" in pdf
    # While open: the LIS keeps reading version 1, byte for byte; a second amendment is refused.
    assert api.get(f"/api/v1/specimens/{ACC}/hl7/").content.decode() == first.hl7
    again = api.post(f"/api/v1/specimens/{ACC}/amend/", {"reason": "more"}, format="json")
    assert again.status_code == 409
    assert again.json() == {
        "detail": f"An amendment of specimen {ACC} is open ({REASON}); add its images, review them and sign "
        "the specimen to release the corrected report.",
        "code": "amendment_open",
    }
    # Uploads are accepted and enter review; a bad one stores nothing.
    files = media(settings)
    bad = tech_api.post(
        "/api/v1/classifications/",
        {"image": SimpleUploadedFile("x.png", b"not an image"), "accession": ACC},
        format="multipart",
    )
    assert bad.status_code == 415
    assert (signed.cells.count(), media(settings)) == (3, files)
    added = api_upload(tech_api, 1, external_id="LIS-AMD-1")
    assert added.status_code == 201, added.json()
    assert (added.json()["label"], added.json()["review_state"]) == ("MONOCYTE", "unreviewed")
    detail = api.get(f"/api/v1/specimens/{ACC}/").json()
    assert (detail["signed"], detail["review_state"]) == (False, "in_review")
    assert detail["amendment"] == opened.json()
    assert detail["differential"]["unreviewed"] == 1
    unreviewed = api.post(f"/api/v1/specimens/{ACC}/sign/", {}, format="json")
    assert unreviewed.status_code == 409
    assert ReportVersion.objects.count() == 1
    # Review the new cell and sign again: version 2, corrected, with the reason, queued to the LIS.
    cell = Classification.objects.get(pk=added.json()["id"])
    review = api.post(
        f"/api/v1/specimens/{ACC}/cells/{cell.pk}/review/",
        {"label": "MONOCYTE", "seen": cell.review_version},
        format="json",
    )
    assert review.status_code == 200, review.json()
    assert api.post(f"/api/v1/specimens/{ACC}/sign/", {}, format="json").status_code == 200
    signed.refresh_from_db()
    assert (signed.is_signed, signed.amendment_is_open, signed.amendment_reason) == (True, False, "")
    second = ReportVersion.objects.get(number=2)
    assert (second.kind, second.reason, second.released_by) == ("corrected", REASON, reviewer)
    assert list(OutboundMessage.objects.order_by("id").values_list("control_id", "payload")) == [
        (first.control_id, first.hl7), (second.control_id, second.hl7),
    ]
    group = strict(second.hl7).oru_r01_patient_result.oru_r01_order_observation
    assert group.obr.obr_25.to_er7() == "C"
    assert {o.obx.obx_11.to_er7() for o in group.oru_r01_observation} == {"C"}
    assert group.nte.nte_3.to_er7() == f"Corrected report (version 2): {REASON}"
    values = {o.obx.obx_3.obx_3_1.to_er7(): o.obx.obx_5.to_er7() for o in group.oru_r01_observation}
    counted = (values["769-0"], values["737-7"], values["744-3"], values["WBC-COUNTED"])
    assert counted == ("50", "25", "25", "4")
    bundle = Bundle.model_validate(second.fhir)
    assert bundle.entry[0].resource.status == "corrected"
    assert REASON in bundle.entry[0].resource.conclusion
    # Both versions readable; the history lists them; the accession is closed again.
    assert api.get(f"/api/v1/specimens/{ACC}/hl7/?version=1").content.decode() == first.hl7
    assert api.get(f"/api/v1/specimens/{ACC}/hl7/").content.decode() == second.hl7
    history = api.get(f"/api/v1/specimens/{ACC}/versions/").json()
    assert [(v["number"], v["kind"], v["reason"]) for v in history] == [
        (1, "final", ""), (2, "corrected", REASON),
    ]
    assert api_upload(tech_api, 2).json() == {"detail": REFUSAL, "code": "specimen_signed"}


@pytest.mark.django_db
def test_api_batch_during_an_amendment(signed, reviewer, tech_api):
    body = {"reason": REASON, "add_images": True}
    opened = client_for(reviewer).post(f"/api/v1/specimens/{ACC}/amend/", body, format="json")
    assert opened.status_code == 201
    images = [SimpleUploadedFile(f"b{n}.png", cell_png("MONOCYTE", 10 + n), "image/png") for n in range(2)]
    response = tech_api.post(f"/api/v1/specimens/{ACC}/batch/", {"images": images}, format="multipart")
    assert response.status_code == 202, response.json()
    job = runner.job_run(job_id=response.json()["id"])  # the runner files each image as an upload does
    assert (job.state, job.specimen_id) == ("done", signed.pk)
    assert sorted(signed.cells.values_list("predicted_label", "review_state")) == [
        ("LYMPHOCYTE", "signed"), ("MONOCYTE", "unreviewed"), ("MONOCYTE", "unreviewed"),
        ("NEUTROPHIL", "signed"), ("NEUTROPHIL", "signed"),
    ]


@pytest.mark.django_db
def test_portal_amendment_to_add_images(signed, client, reviewer, user, settings):
    client.force_login(user)
    refused = client.post("/upload/", {"images": [SimpleUploadedFile("a.png", cell_png("MONOCYTE", 1))],
                                       "accession": ACC})
    assert refused.status_code == 400
    assert REFUSAL.replace('"', "&quot;") in refused.content.decode()
    assert signed.cells.count() == 3
    client.force_login(reviewer)
    page = client.get(f"/specimens/{ACC}/amend/").content.decode()
    assert 'id="open-amendment"' in page
    no_reason = client.post(f"/specimens/{ACC}/amend/", {"reason": "", "action": "add-images"})
    assert no_reason.status_code == 302
    signed.refresh_from_db()
    assert (signed.is_signed, signed.amendment_is_open) == (True, False)
    opened = client.post(f"/specimens/{ACC}/amend/", {"reason": REASON, "action": "add-images"}, follow=True)
    assert "amendment opened. Add the images, review the new cells and sign" in opened.content.decode()
    detail = opened.content.decode()
    assert 'id="specimen-state">Amendment open<' in detail
    assert f"to add images: {REASON}" in detail
    assert ReportVersion.objects.count() == 1
    client.force_login(user)
    done = client.post("/upload/", {"images": [SimpleUploadedFile("a.png", cell_png("MONOCYTE", 1))],
                                    "accession": ACC})
    assert done.status_code == 302
    batch = client.post("/batch/", {"images": [SimpleUploadedFile("b.png", cell_png("MONOCYTE", 2))],
                                    "accession": ACC, "kind": "cells"})
    assert batch.status_code == 302, batch.content.decode()[:2000]
    runner.job_run(job_id=BatchJob.objects.get().pk)
    new = list(signed.cells.filter(review_state="unreviewed").order_by("id"))
    assert [c.predicted_label for c in new] == ["MONOCYTE", "MONOCYTE"]
    client.force_login(reviewer)
    for cell in new:
        cell_review.classification_review(classification=cell, reviewer=reviewer, label="MONOCYTE")
    signed_page = client.post(f"/specimens/{ACC}/sign/", {"comment": ""}, follow=True).content.decode()
    assert f"Specimen {ACC} is signed; corrected report version 2 released." in signed_page
    assert [(v.number, v.kind, v.reason) for v in ReportVersion.objects.order_by("number")] == [
        (1, "final", ""), (2, "corrected", REASON),
    ]
