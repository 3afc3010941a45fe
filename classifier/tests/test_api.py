"""The LIS API through APIClient: tokens, uploads, retries, errors, lists, downloads, specimens."""

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image
from rest_framework.authtoken.models import Token

from classifier.api.throttling import TokenRateThrottle, UploadRateThrottle
from classifier.cells import review as cell_review
from classifier.cells import services as cell_services
from classifier.models import Classification, ReviewState, Specimen, Status
from classifier.specimens import signoff
from classifier.tests.factories import ClassificationFactory, SpecimenFactory, image_bytes, png_declaring

pytestmark = pytest.mark.django_db

CLASSES = ["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"]
RED, GREEN, BLUE = (200, 60, 60), (60, 200, 60), (60, 60, 200)


@pytest.fixture
def other_api(other_user):
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=other_user).key}")
    return client


@pytest.fixture
def reviewer_api(reviewer):
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(reviewer)
    return client


@pytest.fixture
def norole_api(no_role_user):
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(no_role_user)
    return client


def post_image(client, data=None, name="cell.jpg", **fields):
    body = {**fields}
    if data is not False:
        body["image"] = SimpleUploadedFile(name, image_bytes(RED) if data is None else data)
    return client.post("/api/v1/classifications/", body, format="multipart")


def stored_files(settings) -> list[str]:
    root = settings.MEDIA_ROOT
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []




# ------------------------------------------------------------------ tokens and authentication


def test_token_for_username_and_password(api_client, user, password):
    credentials = {"username": "tech", "password": password}
    response = api_client.post("/api/v1/auth/token/", credentials, format="json")
    assert response.status_code == 200
    assert response.json() == {"token": Token.objects.get(user=user).key}
    again = api_client.post("/api/v1/auth/token/", {"username": "tech", "password": password})
    assert again.json() == response.json()  # the same token, form-encoded this time


def test_token_refused_for_wrong_password_or_missing_fields(api_client, user):
    response = api_client.post("/api/v1/auth/token/", {"username": "tech", "password": "nope"}, format="json")
    assert response.status_code == 400
    assert response.json() == {
        "detail": "Unable to log in with provided credentials.",
        "code": "authorization",
        "errors": {"non_field_errors": ["Unable to log in with provided credentials."]},
    }
    missing = api_client.post("/api/v1/auth/token/", {"username": "tech"}, format="json")
    assert missing.status_code == 400
    assert missing.json() == {
        "detail": "password: This field is required.",
        "code": "required",
        "errors": {"password": ["This field is required."]},
    }
    assert not Token.objects.exists()


def test_token_endpoint_locks_out_after_repeated_failures(api_client, user, password, settings):
    """django-axes sees the request (DRF passes it to authenticate()) and locks the username."""
    settings.AXES_ENABLED = True
    settings.AXES_FAILURE_LIMIT = 2
    assert api_client.post("/api/v1/auth/token/", {"username": "tech", "password": "x"}).status_code == 400
    second = api_client.post("/api/v1/auth/token/", {"username": "tech", "password": "y"})
    locked = api_client.post("/api/v1/auth/token/", {"username": "tech", "password": password})
    for response in (second, locked):
        assert response.status_code == 429
        assert response.json() == {
            "detail": "Too many failed sign-in attempts; try again later.", "code": "locked_out"
        }
    assert not Token.objects.exists()


def test_token_endpoint_is_throttled_per_address(api_client, user, password, monkeypatch):
    monkeypatch.setattr(TokenRateThrottle, "rate", "2/min", raising=False)
    for _ in range(2):
        response = api_client.post("/api/v1/auth/token/", {"username": "tech", "password": password})
        assert response.status_code == 200
    response = api_client.post("/api/v1/auth/token/", {"username": "tech", "password": password})
    assert response.status_code == 429
    body = response.json()
    assert body["code"] == "throttled"
    assert body["detail"].startswith("Request was throttled.")
    assert int(response["Retry-After"]) > 0


@pytest.mark.parametrize("url", [
    "/api/v1/classifications/", "/api/v1/classifications/1/", "/api/v1/classifications/1/image/",
    "/api/v1/specimens/", "/api/v1/specimens/ACC-1/", "/api/v1/specimens/ACC-1/fhir/",
    "/api/v1/specimens/ACC-1/hl7/", "/api/v1/model/",
])
def test_every_endpoint_needs_authentication(api_client, url):
    response = api_client.get(url)
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "detail": "Authentication credentials were not provided.", "code": "not_authenticated"
    }
    assert response["WWW-Authenticate"] == "Token"


def test_bad_token_is_401(api_client):
    api_client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    response = api_client.get("/api/v1/classifications/")
    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid token.", "code": "authentication_failed"}


def test_session_authentication_works_too(api_client, user):
    ClassificationFactory(owner=user)
    api_client.force_login(user)
    assert api_client.get("/api/v1/classifications/").json()["count"] == 1


def test_reads_are_throttled_per_user(tech_api, monkeypatch):
    from rest_framework.throttling import UserRateThrottle

    monkeypatch.setattr(UserRateThrottle, "rate", "2/min", raising=False)
    assert [tech_api.get("/api/v1/classifications/").status_code for _ in range(3)] == [200, 200, 429]


# ------------------------------------------------------------------ POST /classifications/


def test_upload_returns_the_classification(tech_api, user, settings):
    response = post_image(tech_api, image_bytes(RED), "cell_7.jpg", accession="ACC-9", external_id="LIS-1")
    assert response.status_code == 201, response.json()
    cell = Classification.objects.get()
    body = response.json()
    base = "http://testserver/api/v1/classifications"
    assert body == {
        "id": cell.pk,
        "label": "EOSINOPHIL",
        "predicted_label": "EOSINOPHIL",
        "final_label": None,
        "confidence": 0.88,
        "probabilities": {"EOSINOPHIL": 0.88, "LYMPHOCYTE": 0.04, "MONOCYTE": 0.04, "NEUTROPHIL": 0.04},
        "status": "classified",
        "review_state": "unreviewed",
        "flag_reason": "",
        "flag_message": "",
        "cell_box": [16, 12, 48, 36],
        "model_version": "fake-0001",
        "accession": "ACC-9",
        "external_id": "LIS-1",
        "original_filename": "cell_7.jpg",
        "width": 64,
        "height": 48,
        "created_at": cell.created_at.isoformat().replace("+00:00", "Z"),
        "reviewed_by": None,
        "reviewed_at": None,
        "signed_by": None,
        "signed_at": None,
        "image_url": f"{base}/{cell.pk}/image/",
        "heatmap_url": f"{base}/{cell.pk}/heatmap/",
    }
    assert response["Location"] == f"{base}/{cell.pk}/"
    assert cell.owner == user
    assert cell.specimen.accession == "ACC-9"
    assert cell.specimen.created_by == user
    # The upload stores the image; the heat map is drawn on its first download and kept.
    assert stored_files(settings) == [cell.image.name]
    first = tech_api.get(body["heatmap_url"])
    assert first.status_code == 200
    first_png = b"".join(first.streaming_content)
    assert first_png.startswith(b"\x89PNG\r\n\x1a\n")
    cell.refresh_from_db()
    assert cell.heatmap.name.startswith("heatmaps/")
    assert stored_files(settings) == sorted([cell.image.name, cell.heatmap.name])
    again = tech_api.get(f"{base}/{cell.pk}/heatmap/")
    assert b"".join(again.streaming_content) == first_png == cell.heatmap.read()


def test_flat_image_is_unidentified(tech_api):
    response = post_image(tech_api, image_bytes((128, 128, 128), noise=False))
    assert response.status_code == 201
    body = response.json()
    assert (body["status"], body["flag_reason"]) == ("unidentified", "not_blood_smear")
    assert body["cell_box"] is None
    assert body["flag_message"] == "This does not look like a stained blood smear."
    assert set(body["probabilities"]) == set(CLASSES)


def test_same_external_id_returns_the_stored_result(tech_api, settings):
    first = post_image(tech_api, image_bytes(RED), external_id="LIS-42")
    files = stored_files(settings)
    retry = post_image(tech_api, image_bytes(RED), external_id="LIS-42")
    assert (first.status_code, retry.status_code) == (201, 200)
    assert retry.json() == first.json()
    assert Classification.objects.count() == 1
    assert stored_files(settings) == files
    assert "Location" not in retry
    # The same id with another image (or another accession) is a client's mistake, not a retry.
    for fields in ({"data": image_bytes(BLUE)}, {"accession": "ACC-1"}):
        reused = post_image(tech_api, external_id="LIS-42", **{"data": image_bytes(RED), **fields})
        assert reused.status_code == 409
        assert reused.json() == {
            "detail": f"external_id 'LIS-42' was already used for another image or accession "
            f"(result #{first.json()['id']}); a retry must send the same image and accession, a new "
            "image needs a new id.",
            "code": "external_id_conflict",
        }
    assert Classification.objects.count() == 1
    assert stored_files(settings) == files


def test_external_ids_are_per_user(tech_api, other_api):
    assert post_image(tech_api, external_id="LIS-1").status_code == 201
    assert post_image(other_api, external_id="LIS-1").status_code == 201
    assert Classification.objects.count() == 2


def test_model_unavailable_keeps_the_image_pending_and_answers_503(tech_api, settings):
    settings.HEMATOVISION_PREDICTOR = "missing"
    response = post_image(tech_api, external_id="LIS-5")
    cell = Classification.objects.get()
    assert response.status_code == 503
    assert response.json() == {
        "detail": "The model is unavailable; the image is stored as pending and will be classified later.",
        "code": "model_unavailable",
        "id": cell.pk,
        "url": f"http://testserver/api/v1/classifications/{cell.pk}/",
    }
    assert response["Retry-After"] == "60"
    assert cell.status == Status.PENDING
    assert cell.image
    assert not cell.heatmap
    detail = tech_api.get(f"/api/v1/classifications/{cell.pk}/").json()
    assert (detail["status"], detail["label"], detail["confidence"], detail["probabilities"]) == (
        "pending", None, None, {})
    assert detail["heatmap_url"] is None
    heatmap = tech_api.get(f"/api/v1/classifications/{cell.pk}/heatmap/")
    assert heatmap.status_code == 404
    assert heatmap.json() == {
        "detail": "This result has no heat map yet (the model has not run).", "code": "not_found"
    }
    # A retry while still unavailable: the same stored row, still 503.
    retry = post_image(tech_api, external_id="LIS-5")
    assert (retry.status_code, retry.json()["id"]) == (503, cell.pk)
    assert Classification.objects.count() == 1
    # The model is back: the retry classifies the stored image and answers 200 with the result.
    settings.HEMATOVISION_PREDICTOR = "fake"
    done = post_image(tech_api, external_id="LIS-5")
    assert done.status_code == 200
    body = done.json()
    assert (body["id"], body["status"], body["label"]) == (cell.pk, "classified", "EOSINOPHIL")
    assert done.json()["heatmap_url"] == f"http://testserver/api/v1/classifications/{cell.pk}/heatmap/"
    assert not Classification.objects.get().heatmap  # drawn when first downloaded
    assert Classification.objects.count() == 1


REJECTIONS = {
    "empty": ("cell.jpg", b"", 400, "empty_file", "The file is empty."),
    "text_as_jpg": ("notes.jpg", b"just some text, not pixels\n" * 20, 415, "not_an_image",
                    "notes.jpg is not an image that can be read (JPEG, PNG, TIFF, BMP or WebP)."),
    "svg": ("cell.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>", 415, "unsupported_format",
            "SVG and other text formats are not accepted; upload a raster image."),
    "gif": ("cell.gif", None, 415, "unsupported_format",
            "GIF images are not accepted; upload JPEG, PNG, TIFF, BMP or WebP."),
    "tiny": ("cell.png", image_bytes(RED, size=(16, 16), fmt="PNG"), 400, "image_too_small",
             "The image is 16x16 pixels; a cell image needs at least 32 pixels a side."),
}


@pytest.mark.parametrize("case", REJECTIONS, ids=list(REJECTIONS))
def test_rejected_files_answer_a_clear_error_and_store_nothing(tech_api, settings, case):
    name, data, status, code, message = REJECTIONS[case]
    if data is None:
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), RED).save(buffer, format="GIF")
        data = buffer.getvalue()
    response = post_image(tech_api, data, name, accession="ACC-1", external_id="LIS-1")
    assert response.status_code == status
    assert response.json() == {"detail": message, "code": code}
    assert not Classification.objects.exists()
    assert not Specimen.objects.exists()
    assert stored_files(settings) == []


def test_truncated_jpeg_is_rejected(tech_api, settings):
    data = image_bytes(RED, size=(200, 150))
    response = post_image(tech_api, data[: len(data) // 2], "cut.jpg")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "corrupt_image"
    assert body["detail"].startswith("The image could not be read completely (truncated or damaged)")
    assert not Classification.objects.exists()
    assert stored_files(settings) == []


def test_decompression_bomb_is_413(tech_api, settings):
    response = post_image(tech_api, png_declaring(100_000, 100_000), "bomb.png")
    assert response.status_code == 413
    assert response.json()["code"] == "too_many_pixels"
    over_limit = post_image(tech_api, png_declaring(8000, 8000), "big.png")
    assert over_limit.status_code == 413
    assert over_limit.json() == {
        "detail": "The image is 8000x8000 pixels; the limit is 40 megapixels.", "code": "too_many_pixels"
    }
    assert not Classification.objects.exists()
    assert stored_files(settings) == []


def test_oversize_file_is_413_before_it_is_read(tech_api, settings, monkeypatch):
    settings.HEMATOVISION_MAX_UPLOAD_BYTES = 1_000_000
    data = image_bytes(RED, size=(1200, 1000), fmt="BMP")  # 3.4 MiB
    monkeypatch.setattr(
        cell_services, "classification_get_or_create", lambda **kw: pytest.fail("read an oversize upload")
    )
    response = post_image(tech_api, data, "big.bmp")
    assert response.status_code == 413
    assert response.json() == {
        "detail": "The file is 3.4 MB; the limit is 976.6 KB.",
        "code": "file_too_large",
    }
    assert not Classification.objects.exists()
    assert stored_files(settings) == []


def test_missing_image_field_is_400(tech_api):
    response = post_image(tech_api, False, accession="ACC-1")
    assert response.status_code == 400
    assert response.json() == {
        "detail": "image: No file was submitted.",
        "code": "required",
        "errors": {"image": ["No file was submitted."]},
    }


def test_image_field_that_is_not_a_file_is_400(tech_api):
    response = tech_api.post("/api/v1/classifications/", {"image": "hello"}, format="multipart")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert response.json()["errors"] == {
        "image": ["The submitted data was not a file. Check the encoding type on the form."]
    }


def test_json_body_is_415(tech_api):
    response = tech_api.post("/api/v1/classifications/", {"image": "x"}, format="json")
    assert response.status_code == 415
    assert response.json() == {
        "detail": 'Unsupported media type "application/json" in request.', "code": "unsupported_media_type"
    }


def test_bad_accession_is_400(tech_api, settings):
    response = post_image(tech_api, accession="no spaces/allowed")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert response.json()["detail"].startswith("accession: An accession number is 1-64 letters")
    assert not Classification.objects.exists()
    assert stored_files(settings) == []


def test_accession_of_another_technologist_is_refused(tech_api, other_user, settings):
    theirs = SpecimenFactory(accession="ACC-2", created_by=other_user)
    ClassificationFactory(owner=other_user, specimen=theirs)
    before = stored_files(settings)
    response = post_image(tech_api, accession="acc-2")
    assert response.status_code == 400
    assert response.json() == {  # names the accession as sent; not its stored spelling, owner or state
        "detail": "Images cannot be added to accession acc-2 from your account; ask a reviewer to add "
        "them, or to assign the specimen to you.",
        "code": "accession_taken",
    }
    assert Classification.objects.count() == 1
    assert stored_files(settings) == before


def test_the_same_image_twice_in_a_specimen_is_400_and_stores_nothing(tech_api, settings):
    first = post_image(tech_api, accession="ACC-D")
    assert first.status_code == 201
    files = stored_files(settings)
    again = post_image(tech_api, accession="acc-d")  # same bytes; the accession in another case
    assert again.status_code == 400
    assert again.json() == {
        "detail": f"This image is already in specimen ACC-D (cell #{first.json()['id']}); "
        "a cell is counted once.",
        "code": "duplicate_image",
    }
    assert Classification.objects.count() == 1
    assert stored_files(settings) == files


def test_signed_specimen_takes_no_more_images(tech_api, user, reviewer, settings):
    specimen = SpecimenFactory(accession="ACC-3", created_by=user)
    cell = ClassificationFactory(owner=user, specimen=specimen)
    cell_review.classification_review(classification=cell, reviewer=reviewer, label="EOSINOPHIL")
    signoff.specimen_sign(specimen=specimen, reviewer=reviewer)
    files = stored_files(settings)
    response = post_image(tech_api, accession="ACC-3")
    assert response.status_code == 400
    assert response.json() == {
        "detail": "Specimen ACC-3 is signed; to add images a reviewer opens an amendment (POST "
        '/api/v1/specimens/ACC-3/amend/ with "add_images": true, or "Amend" on the specimen page), then '
        "the new cells are reviewed and the specimen signed again.",
        "code": "specimen_signed",
    }
    assert Classification.objects.count() == 1
    assert stored_files(settings) == files


def test_user_without_a_role_cannot_upload(norole_api, settings):
    response = post_image(norole_api)
    assert response.status_code == 403
    assert response.json() == {
        "detail": "Only technologists and reviewers may submit images.", "code": "permission_denied"
    }
    assert not Classification.objects.exists()
    assert stored_files(settings) == []


def test_uploads_have_their_own_tighter_throttle(tech_api, monkeypatch):
    monkeypatch.setattr(UploadRateThrottle, "rate", "1/min", raising=False)
    assert post_image(tech_api).status_code == 201
    response = post_image(tech_api)
    assert response.status_code == 429
    assert response.json()["code"] == "throttled"
    assert Classification.objects.count() == 1
    assert tech_api.get("/api/v1/classifications/").status_code == 200  # reads are not affected


# ------------------------------------------------------------------ GET /classifications/


def test_list_shows_own_results_to_technologists_and_all_to_reviewers(
    tech_api, reviewer_api, norole_api, user, other_user
):
    mine = ClassificationFactory(owner=user)
    theirs = ClassificationFactory(owner=other_user)
    body = tech_api.get("/api/v1/classifications/").json()
    assert body["count"] == 1
    assert body["next"] is None
    assert body["previous"] is None
    assert [r["id"] for r in body["results"]] == [mine.pk]
    assert [r["id"] for r in reviewer_api.get("/api/v1/classifications/").json()["results"]] == [
        theirs.pk, mine.pk]
    assert norole_api.get("/api/v1/classifications/").json() == {
        "count": 0, "next": None, "previous": None, "results": []}


def test_list_is_paginated(tech_api, user, settings):
    ClassificationFactory.create_batch(3, owner=user)
    from rest_framework.pagination import PageNumberPagination

    PageNumberPagination.page_size = 2
    try:
        page = tech_api.get("/api/v1/classifications/").json()
    finally:
        PageNumberPagination.page_size = 50
    assert page["count"] == 3
    assert len(page["results"]) == 2
    assert page["next"] == "http://testserver/api/v1/classifications/?page=2"
    assert tech_api.get("/api/v1/classifications/?page=9").status_code == 404


def test_list_filters(tech_api, user):
    import datetime

    from django.utils import timezone

    specimen = SpecimenFactory(accession="ACC-77", created_by=user)
    eos = ClassificationFactory(owner=user, specimen=specimen)
    mono = ClassificationFactory(owner=user, predicted_label="MONOCYTE", final_label="LYMPHOCYTE",
                                 review_state=ReviewState.RECLASSIFIED)
    odd = ClassificationFactory(owner=user, unidentified=True)
    Classification.objects.filter(pk=eos.pk).update(created_at=timezone.now() - datetime.timedelta(days=10))
    today = timezone.now().date()

    def ids(query):
        response = tech_api.get(f"/api/v1/classifications/?{query}")
        assert response.status_code == 200, response.json()
        return sorted(r["id"] for r in response.json()["results"])

    assert ids("label=LYMPHOCYTE") == [mono.pk]
    # odd's top class is EOSINOPHIL, but the model did not trust it: it has no class until reviewed.
    assert ids("label=EOSINOPHIL") == [eos.pk]
    odd_json = tech_api.get(f"/api/v1/classifications/{odd.pk}/").json()
    assert (odd_json["status"], odd_json["label"], odd_json["predicted_label"]) == (
        "unidentified", None, "EOSINOPHIL"
    )
    assert ids("status=unidentified") == [odd.pk]
    assert ids("review_state=reclassified") == [mono.pk]
    assert ids("accession=acc-77") == [eos.pk]
    assert ids(f"created_after={today}") == sorted([mono.pk, odd.pk])
    assert ids(f"created_before={today - datetime.timedelta(days=5)}") == [eos.pk]


def test_list_rejects_bad_filter_values(tech_api):
    response = tech_api.get("/api/v1/classifications/?status=bogus")
    assert response.status_code == 400
    assert response.json() == {
        "detail": "status: Select a valid choice. bogus is not one of the available choices.",
        "code": "invalid_choice",
        "errors": {"status": ["Select a valid choice. bogus is not one of the available choices."]},
    }
    assert tech_api.get("/api/v1/classifications/?created_after=yesterday").status_code == 400


def test_detail_and_permissions(tech_api, other_api, reviewer_api, norole_api, user):
    cell = ClassificationFactory(owner=user, external_id="LIS-3")
    url = f"/api/v1/classifications/{cell.pk}/"
    mine = tech_api.get(url)
    assert mine.status_code == 200
    assert mine.json()["external_id"] == "LIS-3"
    assert reviewer_api.get(url).json() == mine.json()
    for client in (other_api, norole_api):
        hidden = client.get(url)
        assert hidden.status_code == 404
        assert hidden.json() == {"detail": "No Classification matches the given query.", "code": "not_found"}
    assert tech_api.get("/api/v1/classifications/999999/").status_code == 404
    assert tech_api.get("/api/v1/classifications/99999999999999999999999/").status_code == 404


def test_reviewed_result_shows_reviewer_and_final_label(tech_api, user, reviewer):
    cell = ClassificationFactory(owner=user)
    cell_review.classification_review(classification=cell, reviewer=reviewer, label="MONOCYTE")
    body = tech_api.get(f"/api/v1/classifications/{cell.pk}/").json()
    assert (body["label"], body["predicted_label"], body["final_label"], body["review_state"],
            body["reviewed_by"]) == ("MONOCYTE", "EOSINOPHIL", "MONOCYTE", "reclassified", "reviewer")


def test_image_and_heatmap_downloads(tech_api, other_api, reviewer_api, user):
    cell = ClassificationFactory(owner=user)
    image = tech_api.get(f"/api/v1/classifications/{cell.pk}/image/")
    assert image.status_code == 200
    assert image["Content-Type"] == "image/jpeg"
    assert image["Cache-Control"] == "private, no-store"
    assert b"".join(image.streaming_content) == cell.image.open("rb").read()
    heatmap = reviewer_api.get(f"/api/v1/classifications/{cell.pk}/heatmap/", HTTP_ACCEPT="image/png")
    assert heatmap.status_code == 200
    assert heatmap["Content-Type"] == "image/png"
    assert b"".join(heatmap.streaming_content).startswith(b"\x89PNG")
    assert heatmap["Cache-Control"] == "private, no-store"
    for which in ("image", "heatmap"):
        hidden = other_api.get(f"/api/v1/classifications/{cell.pk}/{which}/", HTTP_ACCEPT="image/png")
        assert hidden.status_code == 404
        assert hidden["Content-Type"] == "application/json"
        assert hidden.json()["code"] == "not_found"


def test_image_and_heatmap_downloads_are_never_cached(tech_api, tech_client, user):
    """The views set no Cache-Control: PrivateResponsesMiddleware does, for a token and a session."""
    cell = ClassificationFactory(owner=user)
    for client in (tech_api, tech_client):
        for which in ("image", "heatmap"):
            response = client.get(f"/api/v1/classifications/{cell.pk}/{which}/", HTTP_ACCEPT="image/*")
            assert response.status_code == 200, which
            assert response["Cache-Control"] == "private, no-store", which
            b"".join(response.streaming_content)


# ------------------------------------------------------------------ specimens


def _specimen_with_cells(user):
    specimen = SpecimenFactory(accession="ACC-100", created_by=user)
    cells = [ClassificationFactory(owner=user, specimen=specimen, predicted_label=label)
             for label in ("NEUTROPHIL", "NEUTROPHIL", "LYMPHOCYTE", "EOSINOPHIL")]
    cells.append(ClassificationFactory(owner=user, specimen=specimen, unidentified=True))
    return specimen, cells


def test_specimen_detail_has_cells_differential_and_state(tech_api, user, reviewer):
    specimen, cells = _specimen_with_cells(user)
    # A reviewer adds one: its creator's view lists every cell the differential counts (in order).
    added = ClassificationFactory(owner=reviewer, specimen=specimen, predicted_label="NEUTROPHIL")
    response = tech_api.get("/api/v1/specimens/ACC-100/")
    assert response.status_code == 200
    body = response.json()
    listed = body.pop("cells")
    assert [c["id"] for c in listed] == [c.pk for c in cells] + [added.pk]
    assert tech_api.get(f"/api/v1/classifications/{added.pk}/").json()["id"] == added.pk
    assert tech_api.get(f"/api/v1/classifications/{added.pk}/image/").status_code == 200
    assert [c["id"] for c in tech_api.get("/api/v1/classifications/").json()["results"]] == [
        c.pk for c in reversed(cells)
    ]  # the list: their own results
    assert body == {
        "accession": "ACC-100",
        "created_by": "tech",
        "created_at": specimen.created_at.isoformat().replace("+00:00", "Z"),
        "signed": False,
        "signed_by": None,
        "signed_at": None,
        "url": "http://testserver/api/v1/specimens/ACC-100/",
        "review_state": "in_review",
        "ready_to_sign": False,
        "amendment": None,
        "differential": {
            "total_cells": 6, "counted_cells": 5, "unidentified": 1, "pending": 0, "unreviewed": 6,
            "classes": [  # the four-class model's classes, in the cell-class table's order
                {"label": "NEUTROPHIL", "name": "Neutrophil", "count": 3, "percent": 60.0,
                 "reference_low": 40.0, "reference_high": 75.0, "flag": None},
                {"label": "EOSINOPHIL", "name": "Eosinophil", "count": 1, "percent": 20.0,
                 "reference_low": 1.0, "reference_high": 6.0, "flag": "H"},
                {"label": "LYMPHOCYTE", "name": "Lymphocyte", "count": 1, "percent": 20.0,
                 "reference_low": 20.0, "reference_high": 45.0, "flag": None},
                {"label": "MONOCYTE", "name": "Monocyte", "count": 0, "percent": 0.0,
                 "reference_low": 2.0, "reference_high": 10.0, "flag": "L"},
            ],
            "per_100_white_cells": [],
            "not_counted": [],
            "flag_comment": "",
            "reference_note": "Adult reference ranges (the patient's age is not known).",
            "wbc_count": None,  # no order with a white-cell count: no absolute counts
            "absolute": [],
            # 6 cells read, 1 flagged: too few for the specimen check to judge (test_specimen_check.py)
            "specimen_check": {
                "cells": 6, "flagged": 1, "flagged_share": 0.1667, "alarm_at": None, "alarm": False,
            },
        },
    }


def test_signed_specimen_shows_sign_off(tech_api, user, reviewer):
    specimen, cells = _specimen_with_cells(user)
    for cell in cells:
        cell_review.classification_review(classification=cell, reviewer=reviewer, label=cell.predicted_label)
    assert tech_api.get("/api/v1/specimens/ACC-100/").json()["review_state"] == "ready_to_sign"
    signoff.specimen_sign(specimen=specimen, reviewer=reviewer)
    body = tech_api.get("/api/v1/specimens/ACC-100/").json()
    assert (body["review_state"], body["signed"], body["signed_by"]) == ("signed", True, "reviewer")
    assert {c["review_state"] for c in body["cells"]} == {"signed"}


def test_specimen_permissions(tech_api, other_api, reviewer_api, norole_api, user):
    _specimen_with_cells(user)
    assert reviewer_api.get("/api/v1/specimens/ACC-100/").status_code == 200
    for client in (other_api, norole_api):
        response = client.get("/api/v1/specimens/ACC-100/")
        assert response.status_code == 404
        assert response.json() == {"detail": "No Specimen matches the given query.", "code": "not_found"}
    assert tech_api.get("/api/v1/specimens/NOPE/").status_code == 404


def test_specimen_list(tech_api, reviewer_api, user, other_user):
    SpecimenFactory(accession="ACC-1", created_by=user)
    SpecimenFactory(accession="ACC-2", created_by=other_user)
    mine = tech_api.get("/api/v1/specimens/").json()
    assert [s["accession"] for s in mine["results"]] == ["ACC-1"]
    assert mine["results"][0]["url"] == "http://testserver/api/v1/specimens/ACC-1/"
    assert sorted(s["accession"] for s in reviewer_api.get("/api/v1/specimens/").json()["results"]) == [
        "ACC-1", "ACC-2"]


# ------------------------------------------------------------------ the model


def test_model_endpoint_describes_the_serving_model(tech_api):
    """The fake predictor's card has only its name, version and classes: the rest is null."""
    response = tech_api.get("/api/v1/model/")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "name": "fake predictor for tests",
        "version": "fake-0001",
        "classes": CLASSES,
        "backbone": None,
        "input_size": None,
        "tta_views": None,
        "trained_at": None,
        "training_sources": None,
        "calibration": {
            "method": "softmax(log p / temperature + class_bias)",
            "temperature": None,
            "class_bias": None,
            "training_class_fractions": None,
        },
        "thresholds": None,
        "ood_score": None,
        "validation": None,
        "test": None,
    }
    # The version is the one each result carries.
    cell = post_image(tech_api).json()
    assert cell["model_version"] == response.json()["version"]


def test_model_endpoint_answers_503_when_the_model_cannot_load(tech_api, settings):
    settings.HEMATOVISION_PREDICTOR = "missing"
    response = tech_api.get("/api/v1/model/")
    assert response.status_code == 503
    assert response.json() == {
        "detail": "The model is unavailable; uploads are kept as pending until it loads.",
        "code": "model_unavailable",
    }
