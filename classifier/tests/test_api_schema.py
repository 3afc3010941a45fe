"""The OpenAPI schema: served to signed-in users, valid, warning-free; Swagger UI from local assets."""

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.django_db


def test_schema_validates_without_warnings(tmp_path):
    """`manage.py spectacular --validate --fail-on-warn` (the CI command) passes."""
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    text = out.read_text()
    for path in ("/api/v1/auth/token/", "/api/v1/classifications/", "/api/v1/classifications/{id}/image/",
                 "/api/v1/specimens/{accession}/fhir/", "/api/v1/specimens/{accession}/hl7/"):
        assert f"  {path}:" in text


def test_schema_needs_authentication_and_documents_errors(api_client, user):
    assert api_client.get("/api/schema/").status_code == 401
    api_client.force_authenticate(user)
    response = api_client.get("/api/schema/?format=json")
    assert response.status_code == 200
    schema = response.json()
    create = schema["paths"]["/api/v1/classifications/"]["post"]
    assert set(create["responses"]) == {"200", "201", "400", "401", "403", "413", "415", "429", "503"}
    assert list(create["requestBody"]["content"]) == ["multipart/form-data"]
    assert create["responses"]["415"]["content"]["application/json"]["examples"]
    assert set(schema["components"]["schemas"]["Error"]["required"]) == {"detail", "code"}
    fhir = schema["paths"]["/api/v1/specimens/{accession}/fhir/"]["get"]["responses"]["200"]["content"]
    assert "application/fhir+json" in fhir
    hl7 = schema["paths"]["/api/v1/specimens/{accession}/hl7/"]["get"]["responses"]["200"]["content"]
    assert "x-application/hl7-v2+er7" in hl7
    # Every field of a result is described.
    result = schema["components"]["schemas"]["Classification"]["properties"]
    assert {"id", "label", "confidence", "probabilities", "status", "review_state", "model_version",
            "created_at", "image_url", "heatmap_url"} <= set(result)
    model = schema["paths"]["/api/v1/model/"]["get"]
    assert set(model["responses"]) == {"200", "401", "503"} and model["tags"] == ["model"]
    example = model["responses"]["200"]["content"]["application/json"]["examples"]["Model"]["value"]
    from ml.predictor import model_summary

    summary = model_summary({"classes": ["A"], "version": "v"})
    assert set(example) == set(summary) and set(example["calibration"]) == set(summary["calibration"])


def test_swagger_ui_uses_local_assets(client, user):
    assert client.get("/api/docs/").status_code == 302  # people are sent to sign in
    client.force_login(user)
    response = client.get("/api/docs/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/" in page
    assert "cdn.jsdelivr.net" not in page and "unpkg.com" not in page
