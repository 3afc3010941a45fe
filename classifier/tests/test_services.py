"""The service layer: every write, its rules, and what a failure leaves behind."""

import io
from pathlib import Path

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from PIL import Image

from classifier.cells import heatmaps, pending
from classifier.cells import review as cell_review
from classifier.cells import services as cell_services
from classifier.cells.validation import ImageRejected
from classifier.models import Classification, ReviewEvent, ReviewState, Specimen, Status
from classifier.specimens import services as specimen_services
from classifier.specimens import signoff

FIXTURES = Path(__file__).resolve().parents[2] / "ml" / "tests" / "fixtures" / "cells"


def png(color=(200, 30, 40), size=(64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    # Add texture so the fake predictor does not call it a flat (non-smear) image.
    image = Image.open(io.BytesIO(buffer.getvalue()))
    image.putpixel((0, 0), (0, 0, 0))
    image.putpixel((1, 1), (255, 255, 255))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def stored_files(settings) -> list[Path]:
    root = Path(settings.MEDIA_ROOT)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.mark.django_db
def test_create_stores_image_heatmap_and_prediction(user, settings):
    c = cell_services.classification_create(user=user, data=png(), filename="../../etc/cell 1.png")
    assert c.status == Status.CLASSIFIED
    assert c.predicted_label == "EOSINOPHIL"
    assert c.label == "EOSINOPHIL"
    assert c.confidence == pytest.approx(0.88)
    assert c.probabilities == {"EOSINOPHIL": 0.88, "LYMPHOCYTE": 0.04, "MONOCYTE": 0.04, "NEUTROPHIL": 0.04}
    assert c.model_version == "fake-0001"
    assert c.original_filename == "cell 1.png"
    assert (c.width, c.height) == (64, 48)
    assert c.review_state == ReviewState.UNREVIEWED
    files = stored_files(settings)
    assert [p.parent.name for p in files] == ["cells"]  # no heat map until someone opens it
    assert not c.heatmap
    assert all(len(p.stem) == 32 for p in files)  # random names reveal nothing
    assert Path(c.image.path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stored = heatmaps.classification_heatmap(classification=c)
    assert [p.parent.name for p in stored_files(settings)] == ["cells", "heatmaps"]
    assert Classification.objects.get(pk=c.pk).heatmap.name == stored.name
    assert Path(stored.path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.django_db
def test_jpeg_is_stored_without_exif(user):
    source = Image.open(FIXTURES / sorted(p.name for p in FIXTURES.glob("*.jpeg"))[0])
    exif = Image.Exif()
    exif[0x010F] = "SecretScopeMaker"  # Make
    exif[0x0112] = 6  # orientation: rotate 90
    buffer = io.BytesIO()
    source.save(buffer, format="JPEG", exif=exif.tobytes())
    c = cell_services.classification_create(user=user, data=buffer.getvalue(), filename="a.jpg")
    stored = Path(c.image.path).read_bytes()
    assert b"SecretScopeMaker" not in stored
    assert Image.open(io.BytesIO(stored)).getexif() == {}
    assert (c.width, c.height) == (source.height, source.width)  # orientation applied


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty_file"),
        (b"hello, this is text", "not_an_image"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "unsupported_format"),
    ],
)
def test_bad_input_leaves_nothing(user, settings, data, code):
    with pytest.raises(ImageRejected) as excinfo:
        cell_services.classification_create(user=user, data=data, filename="x.jpg")
    assert excinfo.value.code == code
    assert Classification.objects.count() == 0
    assert stored_files(settings) == []


@pytest.mark.django_db
def test_truncated_jpeg_rejected(user, settings):
    data = next(FIXTURES.glob("*.jpeg")).read_bytes()
    with pytest.raises(ImageRejected) as excinfo:
        cell_services.classification_create(user=user, data=data[: len(data) // 2], filename="t.jpg")
    assert excinfo.value.code == "corrupt_image"
    assert "truncated or damaged" in excinfo.value.message
    assert Classification.objects.count() == 0
    assert stored_files(settings) == []


@pytest.mark.django_db
def test_bad_accession_rejected_before_storing(user, settings):
    with pytest.raises(ValidationError):
        cell_services.classification_create(user=user, data=png(), accession="../evil")
    assert Classification.objects.count() == 0
    assert Specimen.objects.count() == 0
    assert stored_files(settings) == []


@pytest.mark.django_db
def test_accession_of_another_technologist_is_refused_and_nothing_stored(user, other_user, settings):
    cell_services.classification_create(user=other_user, data=png(), accession="ACC-1")
    before = stored_files(settings)
    with pytest.raises(ValidationError, match="cannot be added to accession ACC-1 from your account"):
        cell_services.classification_create(user=user, data=png(), accession="ACC-1")
    assert Classification.objects.count() == 1
    assert stored_files(settings) == before


@pytest.mark.django_db
def test_external_id_makes_retries_safe(user, other_user):
    first = cell_services.classification_create(user=user, data=png(), external_id="LIS-42")
    again = cell_services.classification_create(user=user, data=png(), external_id=" LIS-42 ")
    assert again.pk == first.pk
    assert Classification.objects.count() == 1
    for data, accession in ((png((10, 200, 10)), None), (png(), "ACC-1")):  # another image, accession
        with pytest.raises(ValidationError) as err:
            cell_services.classification_create(
                user=user, data=data, external_id="LIS-42", accession=accession
            )
        assert err.value.code == "external_id_conflict"
        assert err.value.messages == [
            f"external_id 'LIS-42' was already used for another image or accession (result #{first.pk}); "
            "a retry must send the same image and accession, a new image needs a new id."
        ]
    assert Classification.objects.count() == 1
    assert not Specimen.objects.exists()
    theirs = cell_services.classification_create(user=other_user, data=png(), external_id="LIS-42")
    assert theirs.pk != first.pk  # unique per user, not across users


@pytest.mark.django_db
def test_user_without_role_cannot_submit(no_role_user, settings):
    with pytest.raises(PermissionDenied):
        cell_services.classification_create(user=no_role_user, data=png())
    assert stored_files(settings) == []


@pytest.mark.django_db
def test_model_unavailable_keeps_upload_pending_then_classifies_later(user, settings, tmp_path):
    settings.HEMATOVISION_PREDICTOR = "ml"
    settings.HEMATOVISION_MODEL_PATH = str(tmp_path / "missing.keras")
    c = cell_services.classification_create(user=user, data=png(), filename="p.png")
    assert c.status == Status.PENDING
    assert c.predicted_label == ""
    assert not c.heatmap
    assert Path(c.image.path).exists()
    assert pending.classification_classify_all_pending() == 0  # model still missing: stays pending
    settings.HEMATOVISION_PREDICTOR = "fake"
    assert pending.classification_classify_all_pending() == 1
    done = Classification.objects.get(pk=c.pk)
    assert done.status == Status.CLASSIFIED
    assert done.predicted_label == "EOSINOPHIL"
    assert not done.heatmap  # drawn when first opened
    assert pending.classification_classify_all_pending() == 0


@pytest.mark.django_db
def test_review_confirm_reclassify_sign_and_audit(user, reviewer):
    c = cell_services.classification_create(user=user, data=png(), accession="S-AUD")
    with pytest.raises(PermissionDenied):
        cell_review.classification_review(classification=c, reviewer=user, label="NEUTROPHIL")
    with pytest.raises(ValidationError, match="not reviewed yet"):
        signoff.specimen_sign(specimen=c.specimen, reviewer=reviewer)
    c = cell_review.classification_review(classification=c, reviewer=reviewer, label="EOSINOPHIL")
    assert c.review_state == ReviewState.CONFIRMED
    assert c.final_label == "EOSINOPHIL"
    c = cell_review.classification_review(classification=c, reviewer=reviewer, label="NEUTROPHIL")
    assert c.review_state == ReviewState.RECLASSIFIED
    assert c.label == "NEUTROPHIL"
    assert not hasattr(cell_review, "classification_sign")
    assert not hasattr(cell_services, "classification_sign")  # issue 16: no cell is signed on its own
    signoff.specimen_sign(specimen=c.specimen, reviewer=reviewer)
    c.refresh_from_db()
    assert c.is_signed
    assert c.signed_by == reviewer
    assert c.signed_at is not None
    with pytest.raises(ValidationError, match="signed and final"):
        cell_review.classification_review(classification=c, reviewer=reviewer, label="MONOCYTE")
    events = list(ReviewEvent.objects.values_list("actor__username", "action", "from_label", "to_label"))
    assert events == [
        ("reviewer", "confirm", "EOSINOPHIL", "EOSINOPHIL"),
        ("reviewer", "reclassify", "EOSINOPHIL", "NEUTROPHIL"),
        ("reviewer", "sign", "NEUTROPHIL", "NEUTROPHIL"),
    ]


@pytest.mark.django_db
def test_unknown_label_rejected(user, reviewer):
    c = cell_services.classification_create(user=user, data=png())
    with pytest.raises(ValidationError, match="Unknown cell class"):
        cell_review.classification_review(classification=c, reviewer=reviewer, label="MEGAKARYOCYTE")
    assert ReviewEvent.objects.count() == 0


@pytest.mark.django_db
def test_unidentified_cell_is_reclassified_not_confirmed(user, reviewer):
    flat = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(flat, format="PNG")
    c = cell_services.classification_create(user=user, data=flat.getvalue())
    assert c.status == Status.UNIDENTIFIED
    assert c.flag_reason == "not_blood_smear"
    c = cell_review.classification_review(classification=c, reviewer=reviewer, label=c.predicted_label)
    assert c.review_state == ReviewState.RECLASSIFIED


@pytest.mark.django_db
def test_specimen_sign_needs_every_cell_reviewed(user, reviewer):
    a = cell_services.classification_create(user=user, data=png(), accession="S-1")
    b = cell_services.classification_create(user=user, data=png((10, 10, 200)), accession="S-1")
    specimen = Specimen.objects.get(accession="S-1")
    cell_review.classification_review(classification=a, reviewer=reviewer, label="EOSINOPHIL")
    with pytest.raises(ValidationError, match="1 cell\\(s\\) are not reviewed yet"):
        signoff.specimen_sign(specimen=specimen, reviewer=reviewer)
    specimen.refresh_from_db()
    assert not specimen.is_signed
    cell_review.classification_review(classification=b, reviewer=reviewer, label="MONOCYTE")
    signed = signoff.specimen_sign(specimen=specimen, reviewer=reviewer)
    assert signed.is_signed
    assert signed.signed_by == reviewer
    assert set(specimen.cells.values_list("review_state", flat=True)) == {"signed"}
    with pytest.raises(ValidationError, match="is signed; to add images a reviewer opens an amendment"):
        cell_services.classification_create(user=user, data=png(), accession="S-1")


@pytest.mark.django_db
def test_delete_own_unreviewed_removes_files(user, other_user, settings, django_capture_on_commit_callbacks):
    c = cell_services.classification_create(user=user, data=png())
    with pytest.raises(PermissionDenied):
        cell_services.classification_delete(classification=c, user=other_user)
    with django_capture_on_commit_callbacks(execute=True):
        cell_services.classification_delete(classification=c, user=user)
    assert Classification.objects.count() == 0
    assert stored_files(settings) == []


@pytest.mark.django_db
def test_reviewed_result_cannot_be_deleted(user, reviewer):
    c = cell_services.classification_create(user=user, data=png())
    cell_review.classification_review(classification=c, reviewer=reviewer, label="EOSINOPHIL")
    with pytest.raises(ValidationError, match="cannot be deleted"):
        cell_services.classification_delete(classification=c, user=user)
    assert Classification.objects.count() == 1


@pytest.mark.django_db
def test_unknown_inference_backend_keeps_upload_pending(user, settings):
    settings.HEMATOVISION_PREDICTOR = "ml"
    settings.HEMATOVISION_INFERENCE_BACKEND = "turbo"
    c = cell_services.classification_create(user=user, data=png(), filename="p.png")
    assert c.status == Status.PENDING
    assert Path(c.image.path).exists()


# ------------------------------------------------- record integrity: one count per cell, no late cells


@pytest.mark.django_db
def test_accession_is_case_insensitive(user, other_user, reviewer, settings):
    first = cell_services.classification_create(user=user, data=png(), accession="ACC-77")
    before = stored_files(settings)
    # The refusal names the accession as typed, not as stored (nor who opened it).
    with pytest.raises(ValidationError, match="^\\['Images cannot be added to accession acc-77 from your"):
        cell_services.classification_create(user=other_user, data=png((20, 200, 30)), accession="acc-77")
    assert stored_files(settings) == before
    added = cell_services.classification_create(user=reviewer, data=png((20, 30, 200)), accession=" acc-77 ")
    assert added.specimen_id == first.specimen_id
    assert list(Specimen.objects.values_list("accession", flat=True)) == ["ACC-77"]  # first spelling kept
    from django.db import IntegrityError, transaction

    with pytest.raises(IntegrityError), transaction.atomic():  # the database enforces it too
        Specimen.objects.create(accession="Acc-77", created_by=user)


@pytest.mark.django_db
def test_the_same_image_counts_once_in_a_specimen(user, reviewer, settings):
    data = png()
    cell = cell_services.classification_create(user=user, data=data, filename="a.png", accession="ACC-5")
    before = stored_files(settings)
    for who in (user, reviewer):  # the same file again, by its submitter or by a reviewer
        with pytest.raises(ValidationError) as err:
            cell_services.classification_create(user=who, data=data, filename="b.png", accession="acc-5")
        assert err.value.code == "duplicate_image"
        assert err.value.messages == [
            f"This image is already in specimen ACC-5 (cell #{cell.pk}); a cell is counted once."
        ]
    assert Classification.objects.count() == 1
    assert stored_files(settings) == before
    other = cell_services.classification_create(user=user, data=data, accession="ACC-6")  # another specimen
    plain = cell_services.classification_create(user=user, data=data)  # no specimen: not a count
    assert other.pk != plain.pk
    assert Classification.objects.count() == 3


@pytest.mark.django_db
def test_a_cell_cannot_join_a_specimen_signed_while_it_was_uploaded(user, reviewer, settings, monkeypatch):
    """The upload reads the specimen, a reviewer signs it, then the upload saves: it must be refused
    (the upload locks the specimen and checks again; signing takes the same lock)."""
    first = cell_services.classification_create(user=user, data=png(), accession="RACE-1")
    cell_review.classification_review(classification=first, reviewer=reviewer, label="EOSINOPHIL")
    real = specimen_services.specimen_get_or_create

    def read_then_signed(**kwargs):
        specimen = real(**kwargs)  # passes its checks: not signed yet
        signoff.specimen_sign(specimen=specimen, reviewer=reviewer)
        return specimen

    monkeypatch.setattr(specimen_services, "specimen_get_or_create", read_then_signed)
    before = stored_files(settings)
    with pytest.raises(ValidationError, match="Specimen RACE-1 is signed; to add images a reviewer opens an"):
        cell_services.classification_create(user=user, data=png((30, 200, 30)), accession="RACE-1")
    # (one connection here: the sign-off rolled back with the refused upload; on two it stays)
    assert list(Classification.objects.values_list("pk", flat=True)) == [first.pk]
    assert stored_files(settings) == before


@pytest.mark.django_db
def test_retry_of_a_pending_upload_classifies_it_once_the_model_is_back(user, settings, tmp_path):
    settings.HEMATOVISION_PREDICTOR = "ml"
    settings.HEMATOVISION_MODEL_PATH = str(tmp_path / "missing.keras")
    c = cell_services.classification_create(user=user, data=png(), external_id="LIS-9")
    again = cell_services.classification_create(user=user, data=png(), external_id="LIS-9")
    assert (again.pk, again.status) == (c.pk, Status.PENDING)  # model still missing
    settings.HEMATOVISION_PREDICTOR = "fake"
    done = cell_services.classification_create(user=user, data=png(), external_id="LIS-9")
    assert (done.pk, done.status, done.predicted_label) == (c.pk, Status.CLASSIFIED, "EOSINOPHIL")
    assert Classification.objects.count() == 1
    assert not done.heatmap


@pytest.mark.django_db
def test_worker_start_finishes_pending_uploads(user, settings, tmp_path, monkeypatch):
    from classifier.jobs import tasks

    settings.HEMATOVISION_PREDICTOR = "ml"
    settings.HEMATOVISION_MODEL_PATH = str(tmp_path / "missing.keras")
    c = cell_services.classification_create(user=user, data=png())
    settings.HEMATOVISION_PREDICTOR = "fake"
    queued = []
    monkeypatch.setattr(tasks.finish_stored_uploads, "delay", lambda: queued.append("finish"))
    tasks._resume_unfinished_jobs()
    assert queued == ["finish"]
    assert tasks.finish_stored_uploads() == {"spooled": 0, "pending": 1}
    assert Classification.objects.get(pk=c.pk).status == Status.CLASSIFIED


@pytest.mark.django_db
def test_an_unidentified_cell_has_no_class_until_a_reviewer_gives_one(user, reviewer):
    from classifier.tests.factories import ClassificationFactory

    cell = ClassificationFactory(owner=user, unidentified=True, predicted_label="NEUTROPHIL")
    assert cell.label == ""
    assert str(cell) == f"#{cell.pk} unidentified"
    with pytest.raises(ValidationError, match="did not classify this cell"):
        cell_review.classification_confirm(classification=cell, reviewer=reviewer)
    assert Classification.objects.get(pk=cell.pk).review_state == ReviewState.UNREVIEWED
    done = cell_review.classification_review(classification=cell, reviewer=reviewer, label="MONOCYTE")
    assert (done.label, done.review_state) == ("MONOCYTE", ReviewState.RECLASSIFIED)
    event = ReviewEvent.objects.get(classification=cell)
    assert (event.action, event.from_label, event.to_label) == ("reclassify", "", "MONOCYTE")
    ok = ClassificationFactory(owner=user, predicted_label="LYMPHOCYTE")
    confirmed = cell_review.classification_confirm(classification=ok, reviewer=reviewer)
    assert confirmed.review_state == "confirmed"


@pytest.mark.django_db
def test_deleting_a_result_leaves_an_audit_record(user, django_capture_on_commit_callbacks):
    from django.contrib.admin.models import DELETION, LogEntry

    c = cell_services.classification_create(user=user, data=png(), filename="smear 3.png", accession="ACC-9")
    pk, sha = c.pk, c.image_sha256
    with django_capture_on_commit_callbacks(execute=True):
        cell_services.classification_delete(classification=c, user=user)
    entry = LogEntry.objects.get()
    assert (entry.user_id, entry.action_flag, entry.object_id) == (user.pk, DELETION, str(pk))
    assert entry.object_repr == f"#{pk} EOSINOPHIL"
    assert entry.change_message == (
        f"Deleted unreviewed result #{pk} (specimen ACC-9; file smear 3.png; image sha256 {sha}; "
        "model classified EOSINOPHIL)"
    )
