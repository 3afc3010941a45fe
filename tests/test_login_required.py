"""Every URL pattern needs a signed-in user, except the sign-in and password-reset pages."""

import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

# Patterns an anonymous visitor may open (sign in, recover a password).
PUBLIC = {
    "accounts/login/",
    "accounts/password_reset/",
    "accounts/password_reset/done/",
    "accounts/reset/<uidb64>/<token>/",
    "accounts/reset/done/",
    "admin/login/",
    "healthz",  # liveness probe; answers {"status": "ok"} and nothing else
    # The FHIR CapabilityStatement: what a FHIR client reads before it authenticates (it names the
    # token scheme); it holds no result and no patient (issue 19).
    "api/v1/fhir/metadata",
}
SAMPLE_VALUES = {
    "int": "1",
    "str": "x",
    "slug": "x",
    "uuid": "00000000-0000-0000-0000-000000000000",
    "path": "x",
    "drf_format_suffix": ".json",
}


def _walk(patterns, prefix=""):
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from _walk(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern)


def _sample_url(route: str) -> str:
    """Fill a route's converters (or a regex route's groups) with plausible values."""
    route = route.replace("^", "").replace("$", "").replace("\\Z", "").replace("\\.", ".")
    # regex routes (admin, DRF routers and formats) first, before their <name> looks like a converter
    route = re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: "json" if m.group(1) == "format" else "1", route)
    route = re.sub(r"<(?:(\w+):)?\w+>", lambda m: SAMPLE_VALUES.get(m.group(1) or "str", "x"), route)
    route = re.sub(r"\(\?:/\?\)|\(\?:/\)|\?", "", route)
    return "/" + route


def all_routes():
    return sorted(set(_walk(get_resolver().url_patterns)))


def test_public_pages_are_exactly_the_auth_recovery_ones():
    routes = all_routes()
    assert PUBLIC <= set(routes), sorted(PUBLIC - set(routes))


@pytest.mark.django_db
@pytest.mark.parametrize("route", [r for r in all_routes() if r not in PUBLIC])
def test_anonymous_is_sent_to_login(client, route):
    url = _sample_url(route)
    response = client.get(url)
    if route == "api/v1/auth/token/":  # exchanges a password for a token: anonymous by design, POST only
        assert response.status_code == 405, (url, response.status_code)
        return
    if route.startswith("api/v1/"):
        assert response.status_code == 401, (url, response.status_code)
        assert response.json() == {
            "detail": "Authentication credentials were not provided.", "code": "not_authenticated"
        }, url
        return
    if route.startswith("api/schema/"):
        assert response.status_code == 401, (url, response.status_code)
        return
    assert response.status_code == 302, (url, response.status_code)
    logins = ("/accounts/login/?next=", "/admin/login/?next=") if route.startswith("admin/") else (
        "/accounts/login/?next=",
    )
    assert response["Location"].startswith(logins), (url, response["Location"])


@pytest.mark.django_db
@pytest.mark.parametrize("route", sorted(PUBLIC))
def test_public_pages_open_without_login(client, route):
    response = client.get(_sample_url(route))
    assert response.status_code == 200, route
