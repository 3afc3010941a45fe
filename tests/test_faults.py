"""Faults answer clearly: a locked or missing database gives 503, not a 500."""

import io
import json

import pytest
from django.db import OperationalError

from classifier.cells import selectors as cell_selectors


@pytest.mark.django_db
def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_database_locked_gives_503_page(tech_client, monkeypatch):

    def locked(**kwargs):
        raise OperationalError("database is locked")

    monkeypatch.setattr(cell_selectors, "dashboard_stats", locked)
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


def test_database_settings_for_the_engine_in_use(settings):
    """Embedded SQLite: WAL and a busy timeout; PostgreSQL (DATABASE_URL): pooled, health-checked."""
    db = settings.DATABASES["default"]
    if db["ENGINE"] == "django.db.backends.sqlite3":
        assert db["OPTIONS"]["timeout"] == 20
        assert "journal_mode=WAL" in db["OPTIONS"]["init_command"]
    else:
        assert db["ENGINE"] == "django.db.backends.postgresql"
        assert db["CONN_HEALTH_CHECKS"] is True
        assert db["CONN_MAX_AGE"] == 60



@pytest.mark.django_db
def test_database_failure_mid_upload_keeps_the_upload_and_resume_classifies_it(
    tech_client, user, settings, monkeypatch
):
    """A locked database answers 503, the image is spooled, and `resume_jobs` files it once."""
    from pathlib import Path

    from django.core.management import call_command

    from classifier.models import Classification
    from classifier.tests.specimen_helpers import cell_png

    real_save = Classification.save

    def locked(self, *args, **kwargs):
        raise OperationalError("database is locked")

    monkeypatch.setattr(Classification, "save", locked)
    data = cell_png("MONOCYTE")
    response = tech_client.post(
        "/api/v1/classifications/",
        {"image": _upload("m.png", data), "accession": "ACC-9", "external_id": "LIS-9"},
    )
    assert response.status_code == 503
    body = json.loads(response.content)
    reference = body["reference"]
    assert body == {
        "detail": "The database is busy or unavailable. Your upload was kept and will be classified "
        f"when it is back (reference {reference}); do not send it again.",
        "code": "database_unavailable",
        "reference": reference,
    }
    spool = Path(settings.MEDIA_ROOT) / "spool"
    assert sorted(p.name for p in spool.iterdir()) == [f"{reference}.bin", f"{reference}.json"]
    assert (spool / f"{reference}.bin").read_bytes() == data
    assert not (Path(settings.MEDIA_ROOT) / "cells").exists() or not any(
        (Path(settings.MEDIA_ROOT) / "cells").iterdir()
    )

    monkeypatch.setattr(Classification, "save", real_save)
    out = io.StringIO()
    call_command("resume_jobs", stdout=out)
    call_command("resume_jobs", stdout=out)  # twice: nothing is classified again
    assert out.getvalue().startswith("classified 1 spooled upload(s)\n")
    assert "classified 0 spooled upload(s)" in out.getvalue()
    cell = Classification.objects.get()
    assert (cell.owner, cell.external_id, cell.specimen.accession, cell.predicted_label) == (
        user, "LIS-9", "ACC-9", "MONOCYTE"
    )
    assert list(spool.iterdir()) == []


def _upload(name, data):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data, content_type="image/png")
