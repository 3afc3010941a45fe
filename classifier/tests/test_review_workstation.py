"""Issue 16, the reviewer's workstation, without a browser: the worklist, the gallery's JSON
endpoints (audit rows, the two-reviewer conflict check), thumbnails, the one sign-off, the report,
the model's readiness and the smaller defects the issue lists (one test each)."""

import io
import json
import threading
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from PIL import Image

from classifier import inference
from classifier.cells import references
from classifier.cells import review as cell_review
from classifier.cells import services as cell_services
from classifier.models import Classification, ReviewEvent, Specimen
from classifier.specimens import report_pdf, signoff
from classifier.specimens import selectors as specimen_selectors
from classifier.tests.factories import ClassificationFactory, ReviewerFactory, SpecimenFactory, image_bytes
from classifier.tests.pdf_helpers import pdf_text

pytestmark = pytest.mark.django_db


def _specimen(user, accession="S-16", **cells):
    """A specimen with cells per predicted class, e.g. NEUTROPHIL=3, unidentified=1."""
    specimen = SpecimenFactory(created_by=user, accession=accession)
    made = []
    for label, n in cells.items():
        for _ in range(n):
            if label == "unidentified":
                made.append(ClassificationFactory(owner=user, specimen=specimen, unidentified=True))
            else:
                made.append(ClassificationFactory(owner=user, specimen=specimen, predicted_label=label))
    return specimen, made


def _post(client, accession, cells, label=None):
    body = {"cells": {str(c.pk): c.review_version for c in cells}, "label": label}
    return client.post(
        reverse("specimen-review-cells", args=[accession]), json.dumps(body), content_type="application/json"
    )


# ---------------------------------------------------------------- the worklist


def test_worklist_lists_unsigned_specimens_oldest_first_with_counts_and_flags(
    reviewer_client, user, reviewer
):
    new, _ = _specimen(user, "S-NEW", NEUTROPHIL=2)
    old, old_cells = _specimen(user, "S-OLD", NEUTROPHIL=2, unidentified=1)
    Specimen.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=1))
    cell_review.classification_review(classification=old_cells[0], reviewer=reviewer, label="NEUTROPHIL")
    signed, signed_cells = _specimen(user, "S-SIGNED", NEUTROPHIL=1)
    cell_review.classification_review(classification=signed_cells[0], reviewer=reviewer, label="NEUTROPHIL")
    signoff.specimen_sign(specimen=signed, reviewer=reviewer)
    SpecimenFactory(created_by=user, accession="S-EMPTY")
    response = reviewer_client.get(reverse("review-worklist"))
    assert [s.accession for s in response.context["specimens"]] == ["S-OLD", "S-NEW"]
    first = response.context["specimens"][0]
    assert (first.n_cells, first.n_unreviewed, first.n_unidentified, first.n_reviewed, first.progress) == (
        3,
        2,
        1,
        1,
        33,
    )
    html = response.content.decode()
    assert "1 unidentified</span>" in html
    assert "1 of 3 reviewed" in html
    assert 'href="/specimens/S-OLD/review/"' in html
    assert "S-SIGNED" not in html


def test_worklist_and_gallery_are_for_reviewers_only(tech_client, user):
    _specimen(user, NEUTROPHIL=1)
    assert tech_client.get(reverse("review-worklist")).status_code == 403
    assert tech_client.get(reverse("specimen-review", args=["S-16"])).status_code == 403
    assert tech_client.get(reverse("specimen-review-state", args=["S-16"])).status_code == 403


def test_gallery_groups_unidentified_first_and_links_the_worklist_neighbours(reviewer_client, user):
    older, _ = _specimen(user, "S-A", NEUTROPHIL=1)
    Specimen.objects.filter(pk=older.pk).update(created_at=timezone.now() - timedelta(hours=2))
    specimen, cells = _specimen(user, "S-B", MONOCYTE=1, unidentified=1, NEUTROPHIL=2)
    response = reviewer_client.get(reverse("specimen-review", args=["S-B"]))
    sections = [(key, [c.pk for c in members]) for key, _, members in response.context["sections"] if members]
    assert sections == [
        ("UNIDENTIFIED", [cells[1].pk]),
        ("NEUTROPHIL", [cells[2].pk, cells[3].pk]),
        ("MONOCYTE", [cells[0].pk]),
    ]
    html = response.content.decode()
    assert html.count('class="gallery-section') == len(response.context["sections"])  # every class, for drops
    assert f'src="/specimens/S-B/cells/{cells[0].pk}/thumb.jpg" width="144" height="144"' in html
    assert 'id="prev-specimen" title="S-A"' in html
    assert "js/specimen_review.js" in html
    table = json.loads(
        html.split('<script id="class-table" type="application/json">')[1].split("</script>")[0]
    )
    assert [c["code"] for c in table][:2] == ["NEUTROPHIL", "EOSINOPHIL"]
    assert len(table[0]["references"]) == 3
    assert table[9]["code"] == "BLAST"
    assert table[9]["references"] == []


def test_reference_images_exist_for_the_model_classes_and_bands_with_their_licence():
    from django.conf import settings

    for code in (
        "NEUTROPHIL",
        "EOSINOPHIL",
        "BASOPHIL",
        "LYMPHOCYTE",
        "MONOCYTE",
        "IG",
        "ERYTHROBLAST",
        "PLATELET",
        "BAND",
    ):
        paths = references.for_class(code)
        assert len(paths) == 3, code
        for path in paths:
            with Image.open(settings.BASE_DIR / "static" / path) as image:
                assert image.size == (160, 160)
    assert references.for_class("BLAST") == ()
    assert references.for_class("ARTEFACT") == ()
    readme = (settings.BASE_DIR / "static" / "reference" / "README.md").read_text()
    assert "CC BY 4.0" in readme
    assert "Data in Brief* 30 (2020)" in readme
    assert "105474" in readme


# ---------------------------------------------------------------- the gallery's JSON endpoints


def test_reclassify_many_cells_at_once_keeps_one_audit_row_each(reviewer_client, reviewer, user):
    specimen, cells = _specimen(user, NEUTROPHIL=3, EOSINOPHIL=1)
    response = _post(reviewer_client, "S-16", cells[:2], "BAND")
    assert response.status_code == 200
    body = response.json()
    assert [(c["id"], c["group"], c["review_state"]) for c in body["cells"]] == [
        (cells[0].pk, "BAND", "reclassified"),
        (cells[1].pk, "BAND", "reclassified"),
    ]
    rows = {r["label"]: (r["count"], r["value"]) for r in body["differential"]["classes"]}
    assert rows["BAND"] == (2, 50.0)
    assert rows["NEUTROPHIL"] == (1, 25.0)
    assert 'data-label="BAND"' in body["differential_html"]
    assert (body["reviewed"], body["total"]) == (2, 4)
    assert list(
        ReviewEvent.objects.values_list("classification", "actor", "action", "from_label", "to_label")
    ) == [
        (cells[0].pk, reviewer.pk, "reclassify", "NEUTROPHIL", "BAND"),
        (cells[1].pk, reviewer.pk, "reclassify", "NEUTROPHIL", "BAND"),
    ]


def test_accept_confirms_each_cells_model_class(reviewer_client, user):
    specimen, cells = _specimen(user, NEUTROPHIL=2, EOSINOPHIL=1)
    response = _post(reviewer_client, "S-16", cells)
    assert response.status_code == 200
    assert response.json()["differential"]["ready_to_sign"] is True
    assert list(Classification.objects.order_by("pk").values_list("review_state", "final_label")) == [
        ("confirmed", "NEUTROPHIL"),
        ("confirmed", "NEUTROPHIL"),
        ("confirmed", "EOSINOPHIL"),
    ]


def test_a_cell_another_reviewer_changed_refuses_the_whole_change_with_409(client, reviewer, user):
    specimen, cells = _specimen(user, NEUTROPHIL=2)
    stale = {str(c.pk): c.review_version for c in cells}
    cell_review.classification_review(classification=cells[1], reviewer=reviewer, label="MONOCYTE")  # A
    other = ReviewerFactory(username="reviewer2")
    client.force_login(other)
    response = client.post(
        reverse("specimen-review-cells", args=["S-16"]),
        json.dumps({"cells": stale, "label": "BAND"}),
        content_type="application/json",
    )
    assert response.status_code == 409
    assert response.json() == {
        "error": f"#{cells[1].pk}: This cell changed after your page was loaded (now reclassified as "
        "Monocyte by reviewer); look at it again before you decide.",
        "code": "changed",
    }
    assert list(Classification.objects.order_by("pk").values_list("final_label", flat=True)) == [
        "",
        "MONOCYTE",
    ]
    assert ReviewEvent.objects.count() == 1  # A's only: B's first cell was rolled back too
    state = client.get(reverse("specimen-review-state", args=["S-16"])).json()
    assert {c["id"]: c["version"] for c in state["cells"]}[cells[1].pk] == Classification.objects.get(
        pk=cells[1].pk
    ).review_version


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ("not json", 400, "invalid"),
        ({"cells": {"abc": "x"}}, 400, "invalid"),
        ({"cells": {}}, 400, "no_cells"),
        ({"label": "MEGAKARYOCYTE"}, 400, "invalid_label"),
    ],
)
def test_bad_requests_change_nothing(reviewer_client, user, body, status, code):
    specimen, cells = _specimen(user, NEUTROPHIL=1)
    if isinstance(body, dict) and "cells" not in body:
        body = {"cells": {str(cells[0].pk): cells[0].review_version}, **body}
    data = body if isinstance(body, str) else json.dumps(body)
    response = reviewer_client.post(
        reverse("specimen-review-cells", args=["S-16"]), data, content_type="application/json"
    )
    assert (response.status_code, response.json()["code"]) == (status, code)
    assert ReviewEvent.objects.count() == 0


def test_cells_of_another_specimen_unidentified_accepts_and_signed_specimens_are_refused(
    reviewer_client, reviewer, user
):
    _specimen(user, "S-1", NEUTROPHIL=1)
    _, foreign = _specimen(user, "S-2", NEUTROPHIL=1)
    response = _post(reviewer_client, "S-1", foreign, "BAND")
    assert response.status_code == 400
    assert response.json()["code"] == "not_in_specimen"
    _, odd = _specimen(user, "S-3", unidentified=1)
    response = _post(reviewer_client, "S-3", odd)
    assert response.json()["code"] == "unidentified"
    signed, cells = _specimen(user, "S-4", NEUTROPHIL=1)
    cell_review.classification_review(classification=cells[0], reviewer=reviewer, label="NEUTROPHIL")
    signoff.specimen_sign(specimen=signed, reviewer=reviewer)
    cells[0].refresh_from_db()
    response = _post(reviewer_client, "S-4", cells, "BAND")
    assert (response.status_code, response.json()["code"]) == (400, "signed")


def test_technologist_cannot_post_reviews(tech_client, user):
    _, cells = _specimen(user, NEUTROPHIL=1)
    assert _post(tech_client, "S-16", cells, "BAND").status_code == 403
    assert ReviewEvent.objects.count() == 0


def test_thumbnail_is_the_located_cell_at_192_px(reviewer_client, user):
    cell = cell_services.classification_create(
        user=user, data=image_bytes((200, 60, 60), size=(320, 240)), accession="S-T"
    )
    response = reviewer_client.get(reverse("specimen-cell-thumb", args=["S-T", cell.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "image/jpeg"
    assert response["Cache-Control"] == "private, no-store"
    assert Image.open(io.BytesIO(response.content)).size == (192, 192)
    assert cell.cell_box == [80, 60, 240, 180]  # the fake's box: the centre half, cropped with a margin
    other = SpecimenFactory(created_by=user, accession="S-OTHER")
    assert (
        reviewer_client.get(reverse("specimen-cell-thumb", args=[other.accession, cell.pk])).status_code
        == 404
    )


def test_thumbnail_crop_keeps_the_cell_large():
    """The box is the nucleus; a cell 1.6 times its nucleus across spans >= 128 px of the 192."""
    from PIL import ImageDraw

    image = Image.new("RGB", (640, 480), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.ellipse((288, 188, 352, 252), fill=(200, 160, 210))  # the cell, 64 px
    draw.ellipse((300, 200, 340, 240), fill=(90, 40, 140))  # its nucleus, 40 px: the box
    thumb = Image.open(io.BytesIO(review_thumbnail(image, [300, 200, 340, 240])))
    assert thumb.size == (192, 192)
    row = [thumb.getpixel((x, 96)) for x in range(192)]
    cell = [x for x, px in enumerate(row) if px[1] < 200]
    assert cell[-1] - cell[0] + 1 >= 128
    assert cell[0] > 0
    assert cell[-1] < 191


def review_thumbnail(image, box):
    from classifier.portal.views.review import cell_thumbnail

    return cell_thumbnail(image, box)


# ---------------------------------------------------------------- one sign-off


def test_sign_off_confirmation_shows_the_differential_and_signs_with_a_comment(
    reviewer_client, reviewer, user
):
    reviewer.first_name, reviewer.last_name = "Grace", "Hopper"
    reviewer.save()
    specimen, cells = _specimen(user, NEUTROPHIL=3, EOSINOPHIL=1)
    _post(reviewer_client, "S-16", [Classification.objects.get(pk=c.pk) for c in cells])
    page = reviewer_client.get(reverse("specimen-sign", args=["S-16"]))
    html = page.content.decode()
    assert 'id="differential"' in html
    assert "100 cells" not in html
    assert "<strong>4 cells</strong>" in html
    assert f'name="seen" value="{specimen_selectors.specimen_review_version(specimen.cells.all())}"' in html
    seen = page.context["seen"]
    response = reviewer_client.post(
        reverse("specimen-sign", args=["S-16"]), {"seen": seen, "comment": "  Smear well stained.  "}
    )
    assert response["Location"] == reverse("specimen-detail", args=["S-16"])
    specimen.refresh_from_db()
    assert specimen.is_signed
    assert specimen.review_comment == "Smear well stained."
    assert (specimen.signed_by_name, specimen.signed_by_role) == ("Grace Hopper", "Reviewer")
    assert set(Classification.objects.values_list("review_state", flat=True)) == {"signed"}
    detail = reviewer_client.get(reverse("specimen-detail", args=["S-16"])).content.decode()
    assert 'id="signed-by">Grace Hopper</strong> (Reviewer)' in detail
    assert "Smear well stained." in detail


def test_sign_off_is_refused_when_a_cell_changed_after_the_confirmation(reviewer_client, reviewer, user):
    specimen, cells = _specimen(user, NEUTROPHIL=2)
    _post(reviewer_client, "S-16", cells)
    seen = reviewer_client.get(reverse("specimen-sign", args=["S-16"])).context["seen"]
    fresh = Classification.objects.get(pk=cells[0].pk)
    cell_review.classification_review(classification=fresh, reviewer=reviewer, label="BAND")
    response = reviewer_client.post(reverse("specimen-sign", args=["S-16"]), {"seen": seen}, follow=True)
    assert "changed after the confirmation was shown" in response.content.decode()
    assert response.redirect_chain[-1][0] == reverse("specimen-sign", args=["S-16"])
    specimen.refresh_from_db()
    assert not specimen.is_signed


def test_sign_off_of_an_unreviewed_specimen_is_refused(reviewer_client, user):
    specimen, _ = _specimen(user, NEUTROPHIL=1)
    html = reviewer_client.get(reverse("specimen-sign", args=["S-16"])).content.decode()
    assert 'id="not-ready"' in html
    assert 'id="confirm-sign" disabled' in html
    response = reviewer_client.post(reverse("specimen-sign", args=["S-16"]), follow=True)
    assert "1 cell(s) are not reviewed yet" in response.content.decode()
    specimen.refresh_from_db()
    assert not specimen.is_signed


def test_technologists_cannot_sign(tech_client, user):
    specimen, _ = _specimen(user, NEUTROPHIL=1)
    assert tech_client.get(reverse("specimen-sign", args=["S-16"])).status_code == 403
    assert tech_client.post(reverse("specimen-sign", args=["S-16"])).status_code == 403
    specimen.refresh_from_db()
    assert not specimen.is_signed


# ---------------------------------------------------------------- the report


def test_pdf_has_comment_signer_name_and_role_page_numbers_address_and_the_portals_order(
    reviewer, user, settings
):
    settings.HEMATOVISION_LAB_NAME = "City Hospital Haematology"
    settings.HEMATOVISION_LAB_ADDRESS = "2 Lab Road|Sample City 1234"
    reviewer.first_name, reviewer.last_name = "Grace", "Hopper"
    reviewer.save()
    specimen, cells = _specimen(user, NEUTROPHIL=20, EOSINOPHIL=2, unidentified=1)
    text = pdf_text(report_pdf.specimen_report_pdf(specimen=specimen))
    assert text.index("Unidentified — 1 cell(s)") < text.index("Neutrophil — 20 cell(s)")  # as the portal
    assert "2 Lab Road" in text
    assert "Sample City 1234" in text
    for cell in cells[:22]:
        cell_review.classification_review(classification=cell, reviewer=reviewer, label=cell.predicted_label)
    cell_review.classification_review(classification=cells[22], reviewer=reviewer, label="ARTEFACT")
    signoff.specimen_sign(specimen=specimen, reviewer=reviewer, comment="Platelets clumped <b>x</b>.")
    specimen.refresh_from_db()
    text = pdf_text(report_pdf.specimen_report_pdf(specimen=specimen))
    assert "FINAL — signed by Grace Hopper (Reviewer)" in text
    assert "Reviewer's comment: Platelets clumped <b>x</b>." in text  # text, not markup
    assert "Reviewed by: Grace Hopper" in text
    total = int(text.split("Page 1 of ")[1].split()[0])
    assert total >= 1
    assert f"Page {total} of {total}" in text


# ---------------------------------------------------------------- the smaller defects


def test_review_queue_follows_the_specimen_and_keeps_the_selection_after_an_action(reviewer_client, user):
    """?accession= was ignored and the selection jumped to the top after each action."""
    _, mine = _specimen(user, "S-Q", NEUTROPHIL=3)
    _specimen(user, "S-OTHER", NEUTROPHIL=2)
    response = reviewer_client.get(reverse("review-queue"), {"accession": "s-q"})
    assert [c.pk for c in response.context["page_obj"]] == [c.pk for c in mine]
    html = response.content.decode()
    here = "/review/cells/?accession=s-q"
    assert f'name="next" value="{here}#cell-{mine[1].pk}"' in html  # reviewing the first selects the second


def test_unidentified_confidence_says_what_it_is_a_percentage_of(reviewer_client, user):
    """'Unidentified 99 %' did not say 99 % of what."""
    ClassificationFactory(owner=user, unidentified=True, predicted_label="MONOCYTE", confidence=0.99)
    for url in (reverse("review-queue"), reverse("classification-list")):
        html = reviewer_client.get(url).content.decode()
        assert "top guess Monocyte 99%, not trusted" in html


def test_upload_answer_does_not_call_an_unidentified_image_by_its_top_class(tech_client):
    """The upload page said 'Monocyte (needs review)' for an image its result page calls unidentified."""
    flat = image_bytes((128, 128, 128), size=(96, 96), fmt="PNG", noise=False)
    response = tech_client.post(
        reverse("upload"), {"images": [_file("flat.png", flat)]}, HTTP_ACCEPT="application/json"
    )
    body = response.json()
    assert (body["status"], body["label"]) == ("unidentified", "")
    assert body["top_guess"] == Classification.objects.get().get_predicted_label_display()


def _file(name, data):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data, content_type="image/png")


def test_a_64_character_accession_wraps_in_the_specimen_table(tech_client, user):
    """A 64-character accession pushed the State column off screen: the cell may wrap anywhere."""
    accession = "A" * 64
    SpecimenFactory(created_by=user, accession=accession)
    html = tech_client.get(reverse("specimen-list")).content.decode()
    assert f'<td class="accession-cell"><a href="/specimens/{accession}/">{accession}</a></td>' in html
    from django.conf import settings

    css = (settings.BASE_DIR / "static" / "css" / "hematovision.css").read_text()
    assert ".accession-cell { max-width: 18rem; overflow-wrap: anywhere;" in css


# ---------------------------------------------------------------- the model at server start


def test_warm_up_loads_the_model_in_the_background_and_the_header_shows_readiness(
    tech_client, settings, monkeypatch
):
    settings.HEMATOVISION_PREDICTOR = "fake"  # a fresh cache: nothing loaded yet
    assert inference.readiness()["state"] == "idle"
    html = tech_client.get(reverse("dashboard")).content.decode()
    assert 'data-state="idle"' in html
    assert 'title="The model loads with the first image.">' in html
    release = threading.Event()
    real_build = inference._build

    def slow_build(*args):
        release.wait(10)
        return real_build(*args)

    slow_build.cache_clear = real_build.cache_clear  # setting_changed clears it on teardown
    monkeypatch.setattr(inference, "_build", slow_build)
    thread = inference.warm_up_in_background()
    assert inference.readiness()["state"] == "loading"
    assert tech_client.get(reverse("model-ready")).json() == {"state": "loading", "detail": ""}
    assert "Model loading…" in tech_client.get(reverse("dashboard")).content.decode()
    release.set()
    thread.join(10)
    assert inference.readiness() == {"state": "ready", "detail": ""}
    assert 'data-state="ready"' in tech_client.get(reverse("dashboard")).content.decode()


def test_warm_up_reports_an_unavailable_model(settings, tmp_path):
    settings.HEMATOVISION_PREDICTOR = "nonsense"
    inference.warm_up_in_background().join(10)
    state = inference.readiness()
    assert state["state"] == "unavailable"
    assert "Unknown HEMATOVISION_PREDICTOR" in state["detail"]


def test_server_start_hooks_warm_the_model_up(monkeypatch):
    """gunicorn's post_worker_init and `manage.py serve` (make run) start the warm-up; nothing else
    (AppConfig.ready, imports) loads the model."""
    import importlib.util
    from pathlib import Path

    calls = []
    monkeypatch.setattr(inference, "warm_up_in_background", lambda: calls.append("warm"))
    conf = Path(__file__).resolve().parents[2] / "deploy" / "gunicorn.conf.py"
    spec = importlib.util.spec_from_file_location("gunicorn_conf", conf)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.post_worker_init(worker=None)
    assert calls == ["warm"]

    from classifier.management.commands import serve

    monkeypatch.setattr(serve._Runserver, "inner_run", lambda self, *a, **k: calls.append("served"))
    serve.Command().inner_run()
    assert calls == ["warm", "warm", "served"]
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    assert "$(MANAGE) serve $(HOST):$(PORT)" in makefile
