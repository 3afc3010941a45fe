"""The service layer: every write, its rules, and what a failure leaves behind."""

import io
from pathlib import Path

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from PIL import Image

from classifier import services
from classifier.models import Classification, ReviewEvent, ReviewState, Specimen, Status
from classifier.validation import ImageRejected

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
    c = services.classification_create(user=user, data=png(), filename="../../etc/cell 1.png")
    assert c.status == Status.CLASSIFIED
    assert c.predicted_label == "EOSINOPHIL" and c.label == "EOSINOPHIL"
    assert c.confidence == pytest.approx(0.88)
    assert c.probabilities == {"EOSINOPHIL": 0.88, "LYMPHOCYTE": 0.04, "MONOCYTE": 0.04, "NEUTROPHIL": 0.04}
    assert c.model_version == "fake-0001"
    assert c.original_filename == "cell 1.png"
    assert (c.width, c.height) == (64, 48)
    assert c.review_state == ReviewState.UNREVIEWED
    files = stored_files(settings)
    assert [p.parent.name for p in files] == sorted(["cells", "heatmaps"])
    assert all(len(p.stem) == 32 for p in files)  # random names reveal nothing
    assert Path(c.image.path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.django_db
def test_jpeg_is_stored_without_exif(user):
    source = Image.open(FIXTURES / sorted(p.name for p in FIXTURES.glob("*.jpeg"))[0])
    exif = Image.Exif()
    exif[0x010F] = "SecretScopeMaker"  # Make
    exif[0x0112] = 6  # orientation: rotate 90
    buffer = io.BytesIO()
    source.save(buffer, format="JPEG", exif=exif.tobytes())
    c = services.classification_create(user=user, data=buffer.getvalue(), filename="a.jpg")
    stored = Path(c.image.path).read_bytes()
    assert b"SecretScopeMaker" not in stored
    assert Image.open(io.BytesIO(stored)).getexif() == {}
    assert (c.width, c.height) == (source.height, source.width)  # orientation applied


@pytest.mark.django_db
@pytest.mark.parametrize(
    "data,code",
    [
        (b"", "empty_file"),
        (b"hello, this is text", "not_an_image"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "unsupported_format"),
    ],
)
def test_bad_input_leaves_nothing(user, settings, data, code):
    with pytest.raises(ImageRejected) as excinfo:
        services.classification_create(user=user, data=data, filename="x.jpg")
    assert excinfo.value.code == code
    assert Classification.objects.count() == 0 and stored_files(settings) == []


@pytest.mark.django_db
def test_truncated_jpeg_rejected(user, settings):
    data = next(FIXTURES.glob("*.jpeg")).read_bytes()
    with pytest.raises(ImageRejected) as excinfo:
        services.classification_create(user=user, data=data[: len(data) // 2], filename="t.jpg")
    assert excinfo.value.code == "corrupt_image"
    assert "truncated or damaged" in excinfo.value.message
    assert Classification.objects.count() == 0 and stored_files(settings) == []


@pytest.mark.django_db
def test_bad_accession_rejected_before_storing(user, settings):
    with pytest.raises(ValidationError):
        services.classification_create(user=user, data=png(), accession="../evil")
    assert Classification.objects.count() == 0 and Specimen.objects.count() == 0
    assert stored_files(settings) == []


@pytest.mark.django_db
def test_accession_of_another_technologist_is_refused_and_nothing_stored(user, other_user, settings):
    services.classification_create(user=other_user, data=png(), accession="ACC-1")
    before = stored_files(settings)
    with pytest.raises(ValidationError, match="opened by another user"):
        services.classification_create(user=user, data=png(), accession="ACC-1")
    assert Classification.objects.count() == 1
    assert stored_files(settings) == before


@pytest.mark.django_db
def test_external_id_makes_retries_safe(user, other_user):
    first = services.classification_create(user=user, data=png(), external_id="LIS-42")
    again = services.classification_create(user=user, data=png((10, 200, 10)), external_id="LIS-42")
    assert again.pk == first.pk and Classification.objects.count() == 1
    theirs = services.classification_create(user=other_user, data=png(), external_id="LIS-42")
    assert theirs.pk != first.pk  # unique per user, not across users


@pytest.mark.django_db
def test_user_without_role_cannot_submit(no_role_user, settings):
    with pytest.raises(PermissionDenied):
        services.classification_create(user=no_role_user, data=png())
    assert stored_files(settings) == []


@pytest.mark.django_db
def test_model_unavailable_keeps_upload_pending_then_classifies_later(user, settings, tmp_path):
    settings.HEMATOVISION_PREDICTOR = "ml"
    settings.HEMATOVISION_MODEL_PATH = str(tmp_path / "missing.keras")
    c = services.classification_create(user=user, data=png(), filename="p.png")
    assert c.status == Status.PENDING and c.predicted_label == "" and not c.heatmap
    assert Path(c.image.path).exists()
    assert services.classification_classify_all_pending() == 0  # model still missing: stays pending
    settings.HEMATOVISION_PREDICTOR = "fake"
    assert services.classification_classify_all_pending() == 1
    done = Classification.objects.get(pk=c.pk)
    assert done.status == Status.CLASSIFIED and done.predicted_label == "EOSINOPHIL"
    assert Path(done.heatmap.path).exists()
    assert services.classification_classify_all_pending() == 0


@pytest.mark.django_db
def test_review_confirm_reclassify_sign_and_audit(user, reviewer):
    c = services.classification_create(user=user, data=png())
    with pytest.raises(PermissionDenied):
        services.classification_review(classification=c, reviewer=user, label="NEUTROPHIL")
    with pytest.raises(ValidationError, match="before signing"):
        services.classification_sign(classification=c, reviewer=reviewer)
    c = services.classification_review(classification=c, reviewer=reviewer, label="EOSINOPHIL")
    assert c.review_state == ReviewState.CONFIRMED and c.final_label == "EOSINOPHIL"
    c = services.classification_review(classification=c, reviewer=reviewer, label="NEUTROPHIL")
    assert c.review_state == ReviewState.RECLASSIFIED and c.label == "NEUTROPHIL"
    c = services.classification_sign(classification=c, reviewer=reviewer)
    assert c.is_signed and c.signed_by == reviewer and c.signed_at is not None
    with pytest.raises(ValidationError, match="signed and final"):
        services.classification_review(classification=c, reviewer=reviewer, label="MONOCYTE")
    events = list(ReviewEvent.objects.values_list("actor__username", "action", "from_label", "to_label"))
    assert events == [
        ("reviewer", "confirm", "EOSINOPHIL", "EOSINOPHIL"),
        ("reviewer", "reclassify", "EOSINOPHIL", "NEUTROPHIL"),
        ("reviewer", "sign", "NEUTROPHIL", "NEUTROPHIL"),
    ]


@pytest.mark.django_db
def test_unknown_label_rejected(user, reviewer):
    c = services.classification_create(user=user, data=png())
    with pytest.raises(ValidationError, match="Unknown cell class"):
        services.classification_review(classification=c, reviewer=reviewer, label="BASOPHIL")
    assert ReviewEvent.objects.count() == 0


@pytest.mark.django_db
def test_unidentified_cell_is_reclassified_not_confirmed(user, reviewer):
    flat = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(flat, format="PNG")
    c = services.classification_create(user=user, data=flat.getvalue())
    assert c.status == Status.UNIDENTIFIED and c.flag_reason == "not_blood_smear"
    c = services.classification_review(classification=c, reviewer=reviewer, label=c.predicted_label)
    assert c.review_state == ReviewState.RECLASSIFIED


@pytest.mark.django_db
def test_specimen_sign_needs_every_cell_reviewed(user, reviewer):
    a = services.classification_create(user=user, data=png(), accession="S-1")
    b = services.classification_create(user=user, data=png((10, 10, 200)), accession="S-1")
    specimen = Specimen.objects.get(accession="S-1")
    services.classification_review(classification=a, reviewer=reviewer, label="EOSINOPHIL")
    with pytest.raises(ValidationError, match="1 cell\\(s\\) are not reviewed yet"):
        services.specimen_sign(specimen=specimen, reviewer=reviewer)
    specimen.refresh_from_db()
    assert not specimen.is_signed
    services.classification_review(classification=b, reviewer=reviewer, label="MONOCYTE")
    signed = services.specimen_sign(specimen=specimen, reviewer=reviewer)
    assert signed.is_signed and signed.signed_by == reviewer
    assert set(specimen.cells.values_list("review_state", flat=True)) == {"signed"}
    with pytest.raises(ValidationError, match="is signed; no images can be added"):
        services.classification_create(user=user, data=png(), accession="S-1")


@pytest.mark.django_db
def test_delete_own_unreviewed_removes_files(
    user, other_user, settings, django_capture_on_commit_callbacks
):
    c = services.classification_create(user=user, data=png())
    with pytest.raises(PermissionDenied):
        services.classification_delete(classification=c, user=other_user)
    with django_capture_on_commit_callbacks(execute=True):
        services.classification_delete(classification=c, user=user)
    assert Classification.objects.count() == 0 and stored_files(settings) == []


@pytest.mark.django_db
def test_reviewed_result_cannot_be_deleted(user, reviewer):
    c = services.classification_create(user=user, data=png())
    services.classification_review(classification=c, reviewer=reviewer, label="EOSINOPHIL")
    with pytest.raises(ValidationError, match="cannot be deleted"):
        services.classification_delete(classification=c, user=user)
    assert Classification.objects.count() == 1


@pytest.mark.django_db
def test_unknown_inference_backend_keeps_upload_pending(user, settings):
    settings.HEMATOVISION_PREDICTOR = "ml"
    settings.HEMATOVISION_INFERENCE_BACKEND = "turbo"
    c = services.classification_create(user=user, data=png(), filename="p.png")
    assert c.status == Status.PENDING and Path(c.image.path).exists()
