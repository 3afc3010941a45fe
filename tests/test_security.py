"""Security settings that a lab deployment relies on."""

import pytest
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.test import Client


@pytest.mark.django_db
def test_pages_send_csp_and_hardening_headers(tech_client):
    response = tech_client.get("/")
    csp = response["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
    assert "object-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"


@pytest.mark.django_db
def test_login_form_enforces_csrf(user, password):
    client = Client(enforce_csrf_checks=True)
    response = client.post("/accounts/login/", {"username": "tech", "password": password})
    assert response.status_code == 403
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
def test_repeated_failed_logins_lock_the_account(settings, user, password):
    settings.AXES_ENABLED = True
    settings.AXES_FAILURE_LIMIT = 3
    client = Client()
    for _ in range(3):
        client.post("/accounts/login/", {"username": "tech", "password": "wrong-password"})
    response = client.post("/accounts/login/", {"username": "tech", "password": password})
    assert response.status_code == 429
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
@pytest.mark.parametrize("num_proxies", [0, 1])
def test_login_lockout_counts_the_client_address_the_throttles_count(settings, user, password, num_proxies):
    """Behind a trusted proxy (HEMATOVISION_NUM_PROXIES=1) every request comes from the proxy's
    address: a lockout must hit the client that failed, not lock the username for every client.
    With no trusted proxy, a forged X-Forwarded-For must not escape the lockout."""
    settings.AXES_ENABLED = True
    settings.AXES_FAILURE_LIMIT = 3
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": num_proxies}
    proxy = {"REMOTE_ADDR": "10.0.0.2"}
    attacker = Client(**proxy, HTTP_X_FORWARDED_FOR="203.0.113.9")
    for _ in range(3):
        attacker.post("/accounts/login/", {"username": "tech", "password": "wrong-password"})
    assert attacker.post("/accounts/login/", {"username": "tech", "password": password}).status_code == 429
    lab = Client(**proxy, HTTP_X_FORWARDED_FOR="198.51.100.7")  # the real user, another client
    response = lab.post("/accounts/login/", {"username": "tech", "password": password})
    if num_proxies:
        assert response.status_code == 302
        assert "_auth_user_id" in lab.session
    else:  # both are 10.0.0.2: the header is the client's own word, not trusted
        assert response.status_code == 429
        assert "_auth_user_id" not in lab.session


@pytest.mark.parametrize("weak", ["short", "password123", "12345678901", "tech"])
@pytest.mark.django_db
def test_weak_passwords_are_refused(user, weak):
    with pytest.raises(ValidationError):
        validate_password(weak, user=user)


def test_no_secret_key_in_repository_settings():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "hematovision_site" / "settings.py").read_text()
    assert "django-insecure" not in text


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/api/v1/specimens/ACC-5/report.pdf", "/api/v1/specimens/ACC-5/report.csv",
                                 "/specimens/ACC-5/report.pdf", "/specimens/ACC-5/report.csv"])
def test_patient_reports_are_never_cached(tech_client, user, url):
    from classifier.cells import services as cell_services
    from classifier.tests.specimen_helpers import cell_png

    cell_services.classification_create(user=user, data=cell_png("MONOCYTE"), accession="ACC-5")
    response = tech_client.get(url)
    assert response.status_code == 200
    assert response["Cache-Control"] == "private, no-store"
    assert 'filename="ACC-5-' in response["Content-Disposition"]  # the portal PDF opens inline
