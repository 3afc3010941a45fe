"""The specimen gallery's cell image (portal): a patient image, served like every other one."""

from pathlib import Path

import pytest
from django.urls import reverse

from classifier.tests.factories import ClassificationFactory, SpecimenFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def cell(user):
    specimen = SpecimenFactory(accession="GAL-1", created_by=user)
    return ClassificationFactory(owner=user, specimen=specimen)


def url(cell, accession="GAL-1"):
    return reverse("specimen-cell-image", args=[accession, cell.pk])


def test_cell_image_is_never_cached(tech_client, cell, settings):
    response = tech_client.get(url(cell))
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == (Path(settings.MEDIA_ROOT) / cell.image.name).read_bytes()
    assert {
        name: response[name]
        for name in ("Content-Type", "Content-Disposition", "Cache-Control", "X-Content-Type-Options")
    } == {
        "Content-Type": "image/jpeg",
        "Content-Disposition": f'inline; filename="cell-{cell.pk}.jpg"',
        "Cache-Control": "private, no-store",
        "X-Content-Type-Options": "nosniff",
    }


def test_cell_image_whose_file_is_gone_is_404(tech_client, cell, settings):
    (Path(settings.MEDIA_ROOT) / cell.image.name).unlink()
    tech_client.raise_request_exception = False  # a 500 would come back as a response, not raise
    response = tech_client.get(url(cell))
    assert response.status_code == 404


def test_cell_image_of_another_specimen_or_user_is_404(client, cell, other_user, user):
    client.force_login(user)
    assert client.get(url(cell, accession="GAL-2")).status_code == 404
    client.force_login(other_user)
    assert client.get(url(cell)).status_code == 404
