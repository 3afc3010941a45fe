"""The API token endpoint (``POST /api/v1/auth/token/``) with bad credentials."""

import json

import pytest

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("bad_input_settings")]


@pytest.mark.parametrize("axes", [True, False])
@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"username": "u" * 151, "password": "x"}, "username",
         "Ensure this field has no more than 150 characters."),
        ({"username": "tech", "password": "p" * 4097}, "password",
         "Ensure this field has no more than 4096 characters."),
        ({"username": "\udfff", "password": "x"}, "username",
         "Surrogate characters are not allowed: U+DFFF."),
    ],
)
def test_token_endpoint_refuses_unstorable_credentials(api_client, settings, axes, body, field, message):
    """Found by Schemathesis on PostgreSQL: axes stored a 300-character username -> 500."""
    from axes.models import AccessAttempt

    settings.AXES_ENABLED = axes
    raw = json.dumps(body)  # ASCII with \uXXXX escapes: lone surrogates survive to the parser
    response = api_client.post("/api/v1/auth/token/", raw, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["errors"] == {field: [message]}
    assert AccessAttempt.objects.count() == 0
