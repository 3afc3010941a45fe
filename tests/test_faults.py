"""Faults answer clearly: a locked or missing database gives 503, not a 500."""

import json

import pytest
from django.db import OperationalError


@pytest.mark.django_db
def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_database_locked_gives_503_page(tech_client, monkeypatch):
    from classifier import selectors

    def locked(**kwargs):
        raise OperationalError("database is locked")

    monkeypatch.setattr(selectors, "dashboard_stats", locked)
    response = tech_client.get("/")
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert "The database is busy or unavailable; nothing was changed." in response.content.decode()


@pytest.mark.django_db
def test_database_error_on_api_gives_json_503(client, user, monkeypatch):
    from hematovision_site.middleware import DatabaseUnavailableMiddleware

    class Request:
        path = "/api/v1/classifications/"

    response = DatabaseUnavailableMiddleware(lambda r: None).process_exception(
        Request(), OperationalError("unable to open database file")
    )
    assert response.status_code == 503
    assert json.loads(response.content) == {
        "detail": "The database is busy or unavailable; nothing was changed. Please try again shortly.",
        "code": "database_unavailable",
    }


def test_sqlite_runs_in_wal_mode_with_busy_timeout(settings):
    options = settings.DATABASES["default"]["OPTIONS"]
    assert options["timeout"] == 20
    assert "journal_mode=WAL" in options["init_command"]
