"""A bounded Schemathesis run: every documented operation, a few generated requests each.

The schema is the one drf-spectacular serves at /api/schema/; requests go
straight into the WSGI app with a technologist's token, against the test
database with a few real results in it. Checks: no 5xx, and every response
matches what the schema documents (status, media type, body).
"""

import pytest
import schemathesis
from django.core.cache import cache
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from classifier.api import throttling
from classifier.tests.factories import ClassificationFactory, SpecimenFactory, image_bytes
from hematovision_site.wsgi import application

EXAMPLES_PER_OPERATION = 15
CHECKS = [not_a_server_error, response_schema_conformance]


def _strategy(operation, known: dict):
    """Generated requests; plus ones about objects that exist (generated path parameters mostly miss)."""
    strategies = [operation.as_strategy()]
    fixed = {
        name: value for name, value in known.items()
        if f"{{{name}}}" in operation.path and (name != "id" or "/classifications/" in operation.path)
    }
    if fixed:
        strategies.append(operation.as_strategy(path_parameters=fixed))
    if operation.method == "post" and operation.path == "/api/v1/classifications/":
        body = {"image": image_bytes((200, 60, 60)), "accession": "ACC-1"}
        strategies.append(operation.as_strategy(body=body, media_type="multipart/form-data"))
    return st.one_of(strategies)


def _fuzz(operation, strategy, headers: dict, statuses: set) -> None:
    anonymous = operation.path == "/api/v1/auth/token/"

    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def check(case):
        response = case.call(app=application, headers=None if anonymous else headers)
        statuses.add(response.status_code)
        case.validate_response(response, checks=CHECKS)

    check()


@pytest.fixture(autouse=True)
def _keep_test_connection():
    """Calling the WSGI app directly fires request_started/finished, whose close_old_connections
    drops the test's transaction-wrapped connection on PostgreSQL; Django's test client
    disconnects it the same way."""
    from django.core import signals
    from django.db import close_old_connections

    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def api_schema():
    return schemathesis.openapi.from_dict(SchemaGenerator().get_schema(request=None, public=True))


@pytest.mark.django_db
def test_api_conforms_to_its_schema(api_schema, user, monkeypatch):
    from rest_framework.throttling import UserRateThrottle

    # Throttling is tested elsewhere; here it would only hide the other answers.
    monkeypatch.setattr(UserRateThrottle, "rate", "100000/min", raising=False)
    monkeypatch.setattr(throttling.UploadRateThrottle, "rate", "100000/min", raising=False)
    cache.clear()
    specimen = SpecimenFactory(accession="ACC-1", created_by=user)
    cells = [ClassificationFactory(owner=user, specimen=specimen, predicted_label=label)
             for label in ("NEUTROPHIL", "LYMPHOCYTE")]
    known = {"accession": "ACC-1", "id": cells[0].pk}
    headers = {"Authorization": f"Token {Token.objects.create(user=user).key}"}

    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 9
    seen: dict[str, set[int]] = {}
    for operation in operations:
        statuses = seen.setdefault(f"{operation.method.upper()} {operation.path}", set())
        _fuzz(operation, _strategy(operation, known), headers, statuses)
    print("\n".join(f"{name}: {sorted(codes)}" for name, codes in seen.items()))
    # The run really reached the views: the listing and the upload answered with success too.
    assert 200 in seen["GET /api/v1/classifications/"]
    assert {201, 415} <= seen["POST /api/v1/classifications/"]
    assert 200 in seen["GET /api/v1/specimens/{accession}/fhir/"]
    assert 200 in seen["GET /api/v1/specimens/{accession}/hl7/"]
