"""What a lab deployment relies on beyond Django's check --deploy (found by a security audit)."""

import os
import stat

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from classifier.tests.factories import ClassificationFactory, SpecimenFactory


def _token_client(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


@pytest.mark.django_db
def test_a_password_change_ends_the_api_token(client, user, password):
    token = Token.objects.create(user=user)
    client.force_login(user)  # a login saves last_login: the token stays
    assert _token_client(token.key).get("/api/v1/classifications/").status_code == 200
    response = client.post(
        reverse("password_change"),
        {
            "old_password": password,
            "new_password1": "another-horse-77-x",
            "new_password2": "another-horse-77-x",
        },
    )
    assert response.status_code == 302
    assert not Token.objects.filter(user=user).exists()
    assert _token_client(token.key).get("/api/v1/classifications/").status_code == 401


@pytest.mark.django_db
def test_a_password_set_by_an_administrator_ends_the_api_token(user, reviewer):
    mine, theirs = Token.objects.create(user=user), Token.objects.create(user=reviewer)
    user.set_password("set-by-the-admin-42")
    user.save()
    user.first_name = "Ann"
    user.save()  # saving other fields does not touch tokens
    assert list(Token.objects.values_list("key", flat=True)) == [theirs.key]
    assert _token_client(mine.key).get("/api/v1/classifications/").status_code == 401


@pytest.mark.django_db
def test_the_admin_does_not_list_api_tokens(admin_client, reviewer):
    Token.objects.create(user=reviewer)
    assert admin_client.get("/admin/authtoken/tokenproxy/").status_code == 404
    assert "tokenproxy" not in admin_client.get("/admin/").content.decode()


def test_production_never_prints_reset_links():
    from hematovision_site.settings import email_settings

    assert email_settings({}, debug=False) == {
        "EMAIL_BACKEND": "django.core.mail.backends.dummy.EmailBackend"
    }
    assert email_settings({}, debug=True) == {
        "EMAIL_BACKEND": "django.core.mail.backends.console.EmailBackend"
    }
    smtp = email_settings({"DJANGO_EMAIL_URL": "smtp+tls://lab:secret@mail.example:587"}, debug=False)
    assert {k: smtp[k] for k in ("EMAIL_BACKEND", "EMAIL_HOST", "EMAIL_PORT", "EMAIL_USE_TLS")} == {
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": "mail.example",
        "EMAIL_PORT": 587,
        "EMAIL_USE_TLS": True,
    }


@pytest.mark.django_db
def test_patient_data_and_tokens_are_never_cached(tech_client, user):
    cell = ClassificationFactory(owner=user)
    token = Token.objects.create(user=user)
    for url in (
        reverse("classification-detail", args=[cell.pk]),
        reverse("classification-list"),
        "/accounts/profile/",
    ):
        assert tech_client.get(url)["Cache-Control"] == "private, no-store", url
    api = _token_client(token.key)
    for url in (f"/api/v1/classifications/{cell.pk}/", "/api/v1/classifications/"):
        assert api.get(url)["Cache-Control"] == "private, no-store", url


@pytest.mark.django_db
def test_patient_downloads_are_never_cached_by_the_middleware(tech_client, user):
    """Files, images and reports set no Cache-Control of their own: PrivateResponsesMiddleware marks
    them, for a session (portal) and a token (API) alike."""
    specimen = SpecimenFactory(accession="NS-1", created_by=user)
    cell = ClassificationFactory(owner=user, specimen=specimen)
    api = _token_client(Token.objects.create(user=user).key)
    portal = (
        reverse("classification-image", args=[cell.pk]),
        reverse("classification-heatmap", args=[cell.pk]),
        reverse("classification-export"),
        reverse("specimen-cell-image", args=["NS-1", cell.pk]),
        reverse("specimen-cell-thumb", args=["NS-1", cell.pk]),
        reverse("specimen-report-pdf", args=["NS-1"]),
        reverse("specimen-report-csv", args=["NS-1"]),
        reverse("specimen-export"),
    )
    lis = (
        f"/api/v1/classifications/{cell.pk}/image/",
        f"/api/v1/classifications/{cell.pk}/heatmap/",
        "/api/v1/specimens/NS-1/report.pdf",
        "/api/v1/specimens/NS-1/report.csv",
    )
    for client, urls in ((tech_client, portal), (api, lis)):
        for url in urls:
            response = client.get(url, HTTP_ACCEPT="*/*")
            assert response.status_code == 200, url
            assert response["Cache-Control"] == "private, no-store", url
            if response.streaming:
                b"".join(response.streaming_content)


def test_var_folder_is_private(tmp_path):
    from hematovision_site.settings import _private_dir

    target = tmp_path / "var"
    _private_dir(target)
    _private_dir(target)  # again: no error
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o700


@pytest.mark.django_db
def test_too_many_files_never_redirects_off_site(settings, tech_client):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 2
    files = [SimpleUploadedFile(f"{i}.png", b"x") for i in range(3)]
    # Signed in: an anonymous body is no longer parsed early (issue 18), so only users get the message.
    response = tech_client.post("/x/", {"images": files}, PATH_INFO="//evil.example/")
    assert (response.status_code, response["Location"]) == (302, "/")
