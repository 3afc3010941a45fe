"""Response headers that Django 5.2 does not set by itself."""

import logging

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.template.loader import render_to_string

logger = logging.getLogger(__name__)

DEFAULT_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)


class ContentSecurityPolicyMiddleware:
    """Send a Content-Security-Policy: scripts only from this site, no inline script."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.policy = getattr(settings, "HEMATOVISION_CSP", DEFAULT_CSP)

    def __call__(self, request):
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", self.policy)
        return response


class PrivateResponsesMiddleware:
    """``Cache-Control: private, no-store`` on every answer to a signed-in user or an API token:
    result pages, history, specimens, job status, API JSON, FHIR and HL7 hold patient data, and the
    profile page an API token. A view that sets its own Cache-Control keeps it."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        user = getattr(request, "user", None)
        signed_in = bool(user is not None and user.is_authenticated) or "HTTP_AUTHORIZATION" in request.META
        if signed_in and "Cache-Control" not in response:
            response["Cache-Control"] = "private, no-store"
        return response


class DatabaseUnavailableMiddleware:
    """Answer 503 (JSON for the API) when the database is locked or gone, instead of a 500."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        from django.db import InterfaceError, OperationalError

        if not isinstance(exception, (OperationalError, InterfaceError)):
            return None
        logger.error("database unavailable: %s", exception)
        reference = getattr(exception, "reference", None)
        if reference:
            message = (
                "The database is busy or unavailable. Your upload was kept and will be classified "
                f"when it is back (reference {reference}); do not send it again."
            )
        else:
            message = "The database is busy or unavailable; nothing was changed. Please try again shortly."
        if request.path.startswith("/api/"):
            body = {"detail": message, "code": "database_unavailable"}
            if reference:
                body["reference"] = reference
            response = JsonResponse(body, status=503)
        else:
            response = HttpResponse(
                render_to_string("503.html", {"message": message}), status=503
            )
        response["Retry-After"] = "5"
        return response


def client_ip(request) -> str | None:
    """The client's address as the API throttles see it (DRF, ``REST_FRAMEWORK["NUM_PROXIES"]``):
    REMOTE_ADDR, or behind N trusted proxies the address the last of them saw. django-axes uses it
    too (``AXES_CLIENT_IP_CALLABLE``), so behind a proxy a lockout is per client, not per proxy
    (which would lock a username for every client), and a forged X-Forwarded-For counts for nothing
    when no proxy is trusted."""
    from rest_framework.throttling import BaseThrottle

    return BaseThrottle().get_ident(request)
