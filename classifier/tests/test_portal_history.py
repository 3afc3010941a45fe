"""An invalid history filter is refused, never dropped: django-filter leaves an invalid value out of
the query, so ``created_after=2026-13-45`` alone used to list and export every result."""

import pytest
from django.core.cache import cache
from django.urls import reverse
from django.utils import timezone

from classifier.tests.factories import ClassificationFactory

pytestmark = pytest.mark.django_db

BAD_DATE = "created_after: Enter a valid date."
BAD_STATUS = "status: Select a valid choice. x is not one of the available choices."


@pytest.fixture
def three_results(user):
    return [ClassificationFactory(owner=user) for _ in range(3)]


@pytest.mark.parametrize(
    ("query", "errors"),
    [
        ("created_after=2026-13-45", [BAD_DATE]),
        ("status=x&created_after=2026-13-45", [BAD_STATUS, BAD_DATE]),
    ],
)
def test_export_with_an_invalid_filter_is_400_and_exports_nothing(tech_client, three_results, query, errors):
    response = tech_client.get(f"{reverse('classification-export')}?{query}")
    assert response.status_code == 400
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert "Content-Disposition" not in response
    assert (
        response.content.decode()
        == "\n".join(["The filter is not valid; nothing was exported.", *errors]) + "\n"
    )


def test_export_with_a_valid_filter_still_exports(tech_client, three_results):
    today = timezone.localdate().isoformat()
    response = tech_client.get(f"{reverse('classification-export')}?created_after={today}")
    assert response.status_code == 200
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert lines[0].startswith('"accession","cell_id",')
    assert len(lines) == 1 + 3


def test_history_page_with_an_invalid_filter_shows_the_error_and_no_results(tech_client, three_results):
    response = tech_client.get(f"{reverse('classification-list')}?created_after=2026-13-45")
    assert response.status_code == 200  # the page itself is fine: its form says what to correct
    assert response.context["page_obj"].paginator.count == 0
    html = response.content.decode()
    assert 'id="filter-errors"' in html
    assert "From (created_after): Enter a valid date." in html
    assert 'class="invalid-feedback" id="err_created_after">Enter a valid date.</div>' in html
    assert "No results match." in html
    assert not any(f'data-id="{cell.pk}"' in html for cell in three_results)


def test_history_page_without_filters_lists_everything(tech_client, three_results):
    response = tech_client.get(reverse("classification-list"))
    assert response.status_code == 200
    assert response.context["page_obj"].paginator.count == 3
    assert 'id="filter-errors"' not in response.content.decode()


def test_api_list_refuses_the_same_invalid_filter(api_client, user, three_results):
    """The portal now answers as the API always has: 400 naming the field."""
    cache.clear()
    api_client.force_authenticate(user)
    response = api_client.get("/api/v1/classifications/?created_after=2026-13-45")
    assert response.status_code == 400
    assert response.json() == {
        "detail": BAD_DATE,
        "code": "invalid",
        "errors": {"created_after": ["Enter a valid date."]},
    }
