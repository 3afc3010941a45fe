"""Portal pages: upload, result, private images, history, CSV, delete, review and sign."""

import csv
import io
from pathlib import Path

import pytest
from django.urls import reverse
from PIL import Image

from classifier import inference
from classifier.cells import review as cell_review
from classifier.models import CellClass, Classification, ReviewEvent, ReviewState, Specimen, Status
from classifier.specimens import signoff
from classifier.tests.factories import ClassificationFactory, SpecimenFactory, image_bytes, png_declaring

pytestmark = pytest.mark.django_db

FIXTURES = Path(__file__).resolve().parents[2] / "ml" / "tests" / "fixtures" / "cells"


def media_files(settings) -> list[Path]:
    root = Path(settings.MEDIA_ROOT)
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def upload(client, name, data, *, accession="", json=False):
    from django.core.files.uploadedfile import SimpleUploadedFile

    files = [SimpleUploadedFile(n, d) for n, d in (name if isinstance(name, list) else [(name, data)])]
    headers = {"HTTP_ACCEPT": "application/json"} if json else {}
    return client.post(reverse("upload"), {"images": files, "accession": accession}, **headers)




# ---------------------------------------------------------------- upload


def test_upload_page_renders_form_with_picker_and_drop_zone(tech_client):
    response = tech_client.get(reverse("upload"))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'type="file" name="images"' in html
    assert "multiple" in html
    assert 'id="drop-zone"' in html
    assert "js/upload.js" in html
    assert "<script>" not in html


def test_upload_one_real_cell_image_redirects_to_its_result(tech_client, user, settings):
    data = (FIXTURES / "EOSINOPHIL_1.jpeg").read_bytes()
    response = upload(tech_client, "EOSINOPHIL_1.jpeg", data, accession="ACC-1")
    cell = Classification.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("classification-detail", args=[cell.pk])
    assert cell.owner == user
    assert cell.specimen.accession == "ACC-1"
    assert cell.original_filename == "EOSINOPHIL_1.jpeg"
    assert cell.status in (Status.CLASSIFIED, Status.UNIDENTIFIED)
    assert cell.model_version == "fake-0001"
    assert cell.predicted_label
    stored = sorted(p.relative_to(settings.MEDIA_ROOT).as_posix() for p in media_files(settings))
    assert stored == [cell.image.name]  # the heat map is drawn when first opened
    assert "EOSINOPHIL" not in cell.image.name  # stored names reveal nothing


def test_upload_many_files_at_once_without_js(tech_client, user):
    files = [("red.jpg", image_bytes((200, 60, 60))), ("green.png", image_bytes((60, 200, 60), fmt="PNG"))]
    response = upload(tech_client, files, None)
    assert response.status_code == 302
    assert response["Location"] == reverse("classification-list")
    assert sorted(Classification.objects.values_list("original_filename", "predicted_label")) == [
        ("green.png", "LYMPHOCYTE"), ("red.jpg", "EOSINOPHIL"),
    ]


def test_upload_many_with_one_bad_file_keeps_good_ones_and_names_the_bad(tech_client):
    files = [("red.jpg", image_bytes((200, 60, 60))), ("notes.jpg", b"just some text")]
    response = upload(tech_client, files, None)
    assert response.status_code == 302
    assert list(Classification.objects.values_list("original_filename", flat=True)) == ["red.jpg"]
    page = tech_client.get(response["Location"]).content.decode()
    assert "notes.jpg: notes.jpg is not an image that can be read" in page


def test_upload_json_answer_for_the_progress_script(tech_client):
    response = upload(tech_client, "blue.jpg", image_bytes((60, 60, 200)), json=True)
    cell = Classification.objects.get()
    assert response.status_code == 201
    assert response.json() == {
        "id": cell.pk, "url": f"/classifications/{cell.pk}/", "status": "classified", "label": "Monocyte",
        "top_guess": "", "confidence": 0.88, "errors": [],
    }


def test_upload_json_rejection(tech_client, settings):
    response = upload(tech_client, "x.jpg", b"", json=True)
    assert response.status_code == 400
    assert response.json() == {"error": "The file is empty.", "filename": "x.jpg"}
    assert Classification.objects.count() == 0
    assert media_files(settings) == []


BAD_FILES = {
    "text_renamed_jpg": ("report.jpg", b"This is a text file, not a JPEG.\n" * 10, 415,
                         "report.jpg is not an image that can be read (JPEG, PNG, TIFF, BMP or WebP)."),
    "empty": ("empty.jpg", b"", 400, "The file is empty."),
    "truncated_jpeg": ("cut.jpg", None, 400, "The image could not be read completely (truncated or damaged)"),
    "bomb_over_limit": ("bomb.png", png_declaring(8000, 8000), 413,
                        "The image is 8000x8000 pixels; the limit is 40 megapixels."),
    "bomb_huge": ("bomb.png", png_declaring(100_000, 100_000), 413,
                  "The image declares too many pixels (a decompression bomb?); the limit is 40 megapixels."),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_upload_shows_clear_error_and_leaves_no_row_and_no_file(tech_client, settings, case):
    name, data, status, message = BAD_FILES[case]
    if data is None:
        whole = (FIXTURES / "NEUTROPHIL_1.jpeg").read_bytes()
        data = whole[: len(whole) // 2]
    assert len(data) < 100_000  # the bombs really are small files
    response = upload(tech_client, name, data)
    assert response.status_code == status
    html = response.content.decode()
    assert 'id="upload-errors"' in html
    assert "Nothing was stored" in html
    assert message in html
    assert Classification.objects.count() == 0
    assert Specimen.objects.count() == 0
    assert media_files(settings) == []


def test_oversized_upload_is_refused_with_its_size(tech_client, settings):
    settings.HEMATOVISION_MAX_UPLOAD_BYTES = 1_000_000
    response = upload(tech_client, "big.png", image_bytes(size=(1200, 1000), fmt="BMP"))
    assert response.status_code == 413
    assert "<strong>big.png</strong>: The file is 3.4 MB; the limit is 976.6 KB." in response.content.decode()
    assert Classification.objects.count() == 0
    assert media_files(settings) == []


def test_upload_with_no_file_asks_for_one(tech_client):
    response = tech_client.post(reverse("upload"), {"accession": ""})
    assert response.status_code == 400
    assert "This field is required." in response.content.decode()


def test_upload_with_bad_accession_is_refused_before_storing(tech_client, settings):
    response = upload(tech_client, "red.jpg", image_bytes(), accession="bad accession!")
    assert response.status_code == 400
    assert "An accession number is 1-64 letters" in response.content.decode()
    assert Classification.objects.count() == 0
    assert media_files(settings) == []


def test_user_without_role_gets_403_with_a_clear_message(client, no_role_user, settings):
    client.force_login(no_role_user)
    for response in (client.get(reverse("upload")), upload(client, "red.jpg", image_bytes())):
        assert response.status_code == 403
        assert "Your account has no lab role yet" in response.content.decode()
    assert Classification.objects.count() == 0
    assert media_files(settings) == []
    dashboard = client.get(reverse("dashboard")).content.decode()
    assert "Your account has no lab role yet" in dashboard


# ---------------------------------------------------------------- result page and private files


def test_result_page_shows_prediction_probabilities_heatmap_and_version(tech_client, user):
    cell = ClassificationFactory(owner=user, predicted_label="MONOCYTE", confidence=0.88)
    html = tech_client.get(reverse("classification-detail", args=[cell.pk])).content.decode()
    assert '<div class="h3 mb-1" id="predicted-label">Monocyte</div>' in html
    assert "Calibrated confidence <strong>88%</strong>" in html
    for name in ("Monocyte", "Eosinophil", "Lymphocyte", "Neutrophil"):
        assert f'aria-label="{name}"' in html
    assert 'style="width: 88.0%"' in html
    assert 'style="width: 4.0%"' in html
    assert f'src="/classifications/{cell.pk}/image/"' in html
    assert f'src="/classifications/{cell.pk}/heatmap/"' in html
    assert 'id="heatmap-toggle"' in html
    assert '<code id="model-version">fake-0001</code>' in html
    assert "Unreviewed" in html
    assert "unidentified-badge" not in html
    assert "classification-review" not in html
    assert "/review/" not in html


def test_result_page_unidentified_badge_and_flag_message(tech_client, user):
    cell = ClassificationFactory(owner=user, unidentified=True)
    html = tech_client.get(reverse("classification-detail", args=[cell.pk])).content.decode()
    assert 'id="unidentified-badge"' in html
    assert "Unidentified: needs review." in html
    assert "The model is unsure which class this cell belongs to." in html
    # Its top class is shown as what it is (not trusted, not counted), never as the cell's class.
    assert '<div class="h3 mb-1" id="predicted-label">Unidentified</div>' in html
    assert (
        '<div id="confidence">Top class <span id="top-class">Eosinophil</span>, <strong>31%</strong>: '
        "not trusted, not counted</div>"
    ) in html
    assert "Calibrated confidence" not in html


def test_review_of_an_unidentified_cell_has_no_confirm_shortcut(reviewer_client, user):
    odd = ClassificationFactory(owner=user, unidentified=True, predicted_label="NEUTROPHIL")
    for url in (reverse("classification-detail", args=[odd.pk]), reverse("review-queue")):
        html = reviewer_client.get(url).content.decode()
        assert 'data-key="4"' in html, url
        assert "data-confirm" not in html, url
        assert "btn-success" not in html, url


def test_private_image_and_heatmap_served_with_no_store(tech_client, user):
    cell = ClassificationFactory(owner=user)
    cases = (("image", cell.image, "image/jpeg"), ("heatmap", cell.heatmap, "image/png"))
    for name, field, content_type in cases:
        response = tech_client.get(reverse(f"classification-{name}", args=[cell.pk]))
        assert response.status_code == 200
        assert response["Content-Type"] == content_type
        assert response["Cache-Control"] == "private, no-store"
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response["Content-Disposition"].startswith("inline;")
        field.open("rb")
        assert b"".join(response.streaming_content) == field.read()
        field.close()


def test_heatmap_is_drawn_on_first_open_and_kept(tech_client, user, settings):
    cell = ClassificationFactory(owner=user, heatmap="", image__data=image_bytes((120, 40, 160), fmt="PNG"))
    page = tech_client.get(reverse("classification-detail", args=[cell.pk])).content.decode()
    assert f'src="/classifications/{cell.pk}/heatmap/" loading="lazy"' in page
    assert "(drawn when first shown)" in page
    assert not Classification.objects.get(pk=cell.pk).heatmap  # the page itself draws nothing
    first = tech_client.get(reverse("classification-heatmap", args=[cell.pk]))
    assert (first.status_code, first["Content-Type"]) == (200, "image/png")
    drawn = b"".join(first.streaming_content)
    stored = Classification.objects.get(pk=cell.pk).heatmap
    assert stored.name.startswith("heatmaps/")
    assert (Path(settings.MEDIA_ROOT) / stored.name).read_bytes() == drawn
    # The fake model's overlay of this image: the image's size, its red channel raised to >= 200.
    overlay = Image.open(io.BytesIO(drawn))
    assert overlay.size == Image.open(cell.image.path).size
    assert overlay.getextrema()[0][0] >= 200
    second = tech_client.get(reverse("classification-heatmap", args=[cell.pk]))
    assert b"".join(second.streaming_content) == drawn
    assert Classification.objects.get(pk=cell.pk).heatmap.name == stored.name  # not drawn again


def test_no_heatmap_while_pending_or_from_a_model_no_longer_served(tech_client, user, settings):
    pending = ClassificationFactory(owner=user, heatmap="", status=Status.PENDING, predicted_label="",
                                    confidence=None, probabilities={}, model_version="")
    old = ClassificationFactory(owner=user, heatmap="", model_version="c4b786827a603412")
    inference.get_predictor()  # loaded: the page can tell the served version apart
    for cell, note in (
        (pending, "No heat map (the model has not run on this image)."),
        (old, "No heat map: this cell was classified by model c4b786827a603412, which is no longer served."),
    ):
        page = tech_client.get(reverse("classification-detail", args=[cell.pk])).content.decode()
        assert note in page
        assert 'id="heatmap-toggle" autocomplete="off" disabled' in page
        assert "heatmap-image" not in page
        assert tech_client.get(reverse("classification-heatmap", args=[cell.pk])).status_code == 404
        assert not Classification.objects.get(pk=cell.pk).heatmap
    assert sorted(p.parent.name for p in media_files(settings)) == ["cells", "cells"]


@pytest.mark.parametrize("name", ["classification-detail", "classification-image", "classification-heatmap",
                                  "classification-delete"])
def test_another_technologist_gets_404(client, other_user, user, name):
    cell = ClassificationFactory(owner=user)
    client.force_login(other_user)
    assert client.get(reverse(name, args=[cell.pk])).status_code == 404
    assert client.get(reverse(name, args=[cell.pk + 1000])).status_code == 404


@pytest.mark.parametrize("name", ["classification-detail", "classification-image", "classification-heatmap"])
def test_anonymous_is_sent_to_login(client, user, name):
    cell = ClassificationFactory(owner=user)
    url = reverse(name, args=[cell.pk])
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={url}"


def test_no_role_user_gets_404_for_results(client, no_role_user, user):
    cell = ClassificationFactory(owner=user)
    client.force_login(no_role_user)
    assert client.get(reverse("classification-image", args=[cell.pk])).status_code == 404


def test_reviewer_sees_anyones_result_and_files(reviewer_client, user):
    cell = ClassificationFactory(owner=user)
    assert reviewer_client.get(reverse("classification-detail", args=[cell.pk])).status_code == 200
    assert reviewer_client.get(reverse("classification-image", args=[cell.pk])).status_code == 200


# ---------------------------------------------------------------- history, CSV, delete


def test_history_shows_own_results_newest_first(tech_client, user, other_user):
    first = ClassificationFactory(owner=user, original_filename="first.jpg")
    second = ClassificationFactory(owner=user, original_filename="second.jpg")
    ClassificationFactory(owner=other_user, original_filename="someone-else.jpg")
    response = tech_client.get(reverse("classification-list"))
    assert [c.pk for c in response.context["page_obj"]] == [second.pk, first.pk]
    assert "someone-else.jpg" not in response.content.decode()


def test_history_for_reviewer_shows_everyone(reviewer_client, user, other_user):
    ClassificationFactory(owner=user)
    ClassificationFactory(owner=other_user)
    assert reviewer_client.get(reverse("classification-list")).context["page_obj"].paginator.count == 2


def test_history_filters_search_and_paginates(tech_client, user):
    specimen = SpecimenFactory(accession="ACC-9", created_by=user)
    wanted = ClassificationFactory(owner=user, predicted_label="LYMPHOCYTE", specimen=specimen,
                                   original_filename="wanted.jpg")
    ClassificationFactory.create_batch(30, owner=user)
    response = tech_client.get(reverse("classification-list"), {"label": "LYMPHOCYTE", "accession": "ACC-9"})
    assert [c.pk for c in response.context["page_obj"]] == [wanted.pk]
    searched = tech_client.get(reverse("classification-list"), {"q": "wanted"})
    assert [c.pk for c in searched.context["page_obj"]] == [wanted.pk]
    page1 = tech_client.get(reverse("classification-list"))
    assert len(page1.context["page_obj"]) == 25
    assert page1.context["page_obj"].paginator.num_pages == 2
    page2 = tech_client.get(reverse("classification-list"), {"page": 2, "review_state": "unreviewed"})
    assert len(page2.context["page_obj"]) == 6
    assert "review_state=unreviewed&amp;page=1" in page2.content.decode()


def test_history_bad_date_filter_reports_error(tech_client, user):
    ClassificationFactory(owner=user)
    response = tech_client.get(reverse("classification-list"), {"created_after": "not-a-date"})
    assert response.status_code == 200
    assert "Enter a valid date." in response.content.decode()


def test_csv_export_of_filtered_history(tech_client, user, other_user):
    keep = ClassificationFactory(owner=user, predicted_label="NEUTROPHIL", original_filename="=cmd.jpg",
                                 external_id="LIS-1")
    ClassificationFactory(owner=user, predicted_label="EOSINOPHIL")
    ClassificationFactory(owner=other_user, predicted_label="NEUTROPHIL")
    response = tech_client.get(reverse("classification-export"), {"label": "NEUTROPHIL"})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="hematovision-results.csv"'
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0][:4] == ["accession", "cell_id", "original_filename", "created_at"]  # as report.csv
    assert len(rows) == 2
    row = dict(zip(rows[0], rows[1], strict=True))
    assert row["cell_id"] == str(keep.pk)
    assert row["original_filename"] == "'=cmd.jpg"
    assert row["external_id"] == "LIS-1"
    assert row["predicted_label"] == "NEUTROPHIL"
    assert row["owner"] == "tech"
    assert row["confidence"] == "0.8800"
    assert row["review_state"] == "unreviewed"


def test_delete_asks_for_confirmation_then_removes_row_and_files(
    tech_client, user, settings, django_capture_on_commit_callbacks
):
    cell = ClassificationFactory(owner=user)
    url = reverse("classification-delete", args=[cell.pk])
    page = tech_client.get(url)
    assert page.status_code == 200
    assert "Yes, delete" in page.content.decode()
    assert Classification.objects.count() == 1
    with django_capture_on_commit_callbacks(execute=True):  # files go once the delete commits
        response = tech_client.post(url)
    assert response.status_code == 302
    assert response["Location"] == reverse("classification-list")
    assert Classification.objects.count() == 0
    assert media_files(settings) == []


def test_reviewed_result_cannot_be_deleted(tech_client, user):
    cell = ClassificationFactory(owner=user, review_state=ReviewState.CONFIRMED, final_label="EOSINOPHIL")
    response = tech_client.post(reverse("classification-delete", args=[cell.pk]), follow=True)
    html = response.content.decode()
    assert "Reviewed or signed results are part of the record and cannot be deleted." in html
    assert Classification.objects.filter(pk=cell.pk).exists()


def test_reviewer_cannot_delete_someone_elses_result(reviewer_client, user):
    cell = ClassificationFactory(owner=user)
    assert reviewer_client.post(reverse("classification-delete", args=[cell.pk])).status_code == 403
    assert Classification.objects.filter(pk=cell.pk).exists()


# ---------------------------------------------------------------- review and sign


def test_review_queue_lists_unidentified_first_with_shortcuts(reviewer_client, user):
    plain = ClassificationFactory(owner=user)
    odd = ClassificationFactory(owner=user, unidentified=True)
    ClassificationFactory(owner=user, review_state=ReviewState.SIGNED, final_label="EOSINOPHIL")
    response = reviewer_client.get(reverse("review-queue"))
    assert response.status_code == 200
    assert [c.pk for c in response.context["page_obj"]] == [odd.pk, plain.pk]
    html = response.content.decode()
    assert "js/review.js" in html
    assert 'data-key="1"' in html
    assert "data-confirm" in html


def test_review_queue_lists_only_cells_awaiting_review(reviewer_client, user):
    """Issue 16: a reviewed cell leaves the queue (it is signed with its specimen), so the count goes
    down with every review instead of counting unsigned results."""
    ClassificationFactory(
        owner=user, unidentified=True, review_state=ReviewState.RECLASSIFIED, final_label="MONOCYTE"
    )
    plain = ClassificationFactory(owner=user)
    odd = ClassificationFactory(owner=user, unidentified=True)
    response = reviewer_client.get(reverse("review-queue"))
    assert [c.pk for c in response.context["page_obj"]] == [odd.pk, plain.pk]
    assert '<span class="text-muted small" id="queue-count">2 cells awaiting review</span>' in (
        response.content.decode()
    )


def test_review_queue_is_for_reviewers_only(tech_client):
    response = tech_client.get(reverse("review-queue"))
    assert response.status_code == 403
    assert "Only reviewers see the review queue." in response.content.decode()


def test_confirm_then_sign_the_specimen_keeps_audit_trail(reviewer_client, reviewer, user):
    specimen = SpecimenFactory(created_by=user, accession="S-AUDIT")
    cell = ClassificationFactory(owner=user, specimen=specimen, predicted_label="EOSINOPHIL")
    queue = reverse("review-queue")
    response = reviewer_client.post(reverse("classification-review", args=[cell.pk]),
                                    {"label": "EOSINOPHIL", "next": queue})
    assert response.status_code == 302
    assert response["Location"] == queue
    cell.refresh_from_db()
    assert (cell.review_state, cell.final_label, cell.reviewed_by) == ("confirmed", "EOSINOPHIL", reviewer)
    response = reviewer_client.post(reverse("specimen-sign", args=["S-AUDIT"]))
    assert response["Location"] == reverse("specimen-detail", args=["S-AUDIT"])
    cell.refresh_from_db()
    assert cell.review_state == "signed"
    assert cell.signed_by == reviewer
    assert list(cell.events.values_list("actor__username", "action", "from_label", "to_label")) == [
        ("reviewer", "confirm", "EOSINOPHIL", "EOSINOPHIL"), ("reviewer", "sign", "EOSINOPHIL", "EOSINOPHIL"),
    ]
    html = reviewer_client.get(reverse("classification-detail", args=[cell.pk])).content.decode()
    assert 'id="audit-trail"' in html
    assert "Signed" in html
    assert 'data-key="' not in html


def test_a_cell_page_has_no_sign_button_and_no_sign_url(reviewer_client, user):
    """Issue 16: cells are no longer signed one by one (S on a cell signed it at once)."""
    from django.urls import NoReverseMatch

    cell = ClassificationFactory(owner=user, predicted_label="EOSINOPHIL", review_state="confirmed",
                                 final_label="EOSINOPHIL")
    html = reviewer_client.get(reverse("classification-detail", args=[cell.pk])).content.decode()
    assert "data-sign" not in html
    assert "<kbd>S</kbd>" not in html
    with pytest.raises(NoReverseMatch):
        reverse("classification-sign", args=[cell.pk])
    assert reviewer_client.post(f"/classifications/{cell.pk}/sign/").status_code == 404
    cell.refresh_from_db()
    assert cell.review_state == "confirmed"


def test_a_second_reviewer_on_an_old_page_cannot_overwrite_unseen(client, reviewer, user):
    """Reviewers A and B open the same cell; A reclassifies it. B's click, made on the page drawn
    before A's change, is refused with what changed, instead of silently undoing it."""
    from classifier.tests.factories import ReviewerFactory

    other = ReviewerFactory(username="reviewer2")
    cell = ClassificationFactory(owner=user, predicted_label="NEUTROPHIL")
    page = reverse("classification-detail", args=[cell.pk])
    client.force_login(other)
    html = client.get(page).content.decode()
    seen = cell.review_version
    assert html.count(f'<input type="hidden" name="seen" value="{seen}">') == len(CellClass)  # one per class
    cell_review.classification_review(classification=cell, reviewer=reviewer, label="MONOCYTE")  # A
    response = client.post(
        reverse("classification-review", args=[cell.pk]), {"label": "NEUTROPHIL", "seen": seen}, follow=True
    )
    cell.refresh_from_db()
    assert (cell.final_label, cell.reviewed_by) == ("MONOCYTE", reviewer)
    refusal = (
        f"#{cell.pk}: This cell changed after your page was loaded (now reclassified as Monocyte by "
        "reviewer); look at it again before you decide."
    )
    assert [str(m) for m in response.context["messages"]] == [refusal]
    # With the page as it is now, B may decide.
    client.post(reverse("classification-review", args=[cell.pk]),
                {"label": "LYMPHOCYTE", "seen": cell.review_version})
    cell.refresh_from_db()
    assert (cell.final_label, cell.reviewed_by) == ("LYMPHOCYTE", other)


def test_reclassify_and_changes_after_signing_are_refused(reviewer_client, reviewer, user):
    specimen = SpecimenFactory(created_by=user)
    cell = ClassificationFactory(owner=user, specimen=specimen, predicted_label="EOSINOPHIL")
    review = reverse("classification-review", args=[cell.pk])
    reviewer_client.post(review, {"label": "MONOCYTE"})
    cell.refresh_from_db()
    assert (cell.review_state, cell.final_label) == ("reclassified", "MONOCYTE")
    signoff.specimen_sign(specimen=specimen, reviewer=reviewer)
    response = reviewer_client.post(review, {"label": "NEUTROPHIL"}, follow=True)
    assert "This result is signed and final; it cannot be changed." in response.content.decode()
    cell.refresh_from_db()
    assert (cell.review_state, cell.final_label) == ("signed", "MONOCYTE")


def test_bad_label_and_offsite_next_are_ignored(reviewer_client, user):
    cell = ClassificationFactory(owner=user)
    response = reviewer_client.post(reverse("classification-review", args=[cell.pk]),
                                    {"label": "MEGAKARYOCYTE", "next": "https://evil.example/"})
    assert response["Location"] == reverse("classification-detail", args=[cell.pk])
    cell.refresh_from_db()
    assert cell.review_state == "unreviewed"


def test_technologist_cannot_review_or_sign_own_result(tech_client, user):
    specimen = SpecimenFactory(created_by=user, accession="S-TECH")
    cell = ClassificationFactory(owner=user, specimen=specimen)
    review = tech_client.post(reverse("classification-review", args=[cell.pk]), {"label": "EOSINOPHIL"})
    assert review.status_code == 403
    assert tech_client.post(reverse("specimen-sign", args=["S-TECH"])).status_code == 403
    cell.refresh_from_db()
    assert cell.review_state == "unreviewed"
    assert ReviewEvent.objects.count() == 0


def test_review_endpoints_are_post_only(reviewer_client, user):
    cell = ClassificationFactory(owner=user)
    assert reviewer_client.get(reverse("classification-review", args=[cell.pk])).status_code == 405


# ---------------------------------------------------------------- dashboard


def test_dashboard_counts_latest_queue_and_chart_data(reviewer_client, user):
    ClassificationFactory(owner=user, predicted_label="EOSINOPHIL")
    ClassificationFactory(owner=user, predicted_label="MONOCYTE", unidentified=True)
    response = reviewer_client.get(reverse("dashboard"))
    html = response.content.decode()
    assert '<div class="display-6" id="stat-total">2</div>' in html
    assert 'id="stat-queue"><a href="/review/" class="text-decoration-none">2</a>' in html
    assert 'id="stat-unidentified">1</div>' in html
    assert (  # the unidentified cell has no class: the chart counts classified cells only, in the
        # table's colours, and shows the classes that have results
        '<script id="class-chart-data" type="application/json">{"labels": '
        '["Eosinophil"], "counts": [1], "colours": ["#c0392b"]}</script>'
    ) in html
    assert '<tbody><tr><td>Eosinophil</td><td class="text-end">1</td></tr></tbody>' in html
    assert "vendor/chartjs/chart.umd.min.js" in html
    assert "js/dashboard.js" in html
    assert html.count("cell-thumb") == 2


# ---------------------------------------------------------------- the model page


def test_model_page_needs_login(client):
    response = client.get(reverse("model-info"))
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/model/"


def test_model_page_with_a_card_that_has_only_its_identity(tech_client):
    """The fake predictor's card: version and classes shown, figures missing shown as dashes."""
    html = tech_client.get(reverse("model-info")).content.decode()
    assert '<dd class="col-7"><code>fake-0001</code></dd>' in html
    assert 'id="nav-model"' in html
    assert "pre-classifies" in html
    rows = html.split('<table class="table table-sm mb-2" id="model-classes">')[1].split("</table>")[0]
    assert rows.count("<tr>") == 5
    assert rows.count("—") == 16


def test_model_page_when_the_model_cannot_load(tech_client, settings):
    settings.HEMATOVISION_PREDICTOR = "missing"
    response = tech_client.get(reverse("model-info"))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="model-unavailable"' in html
    assert 'id="model-classes"' not in html
