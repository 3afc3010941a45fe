"""What every API view shares: JSON errors whatever the Accept header, the submit permission,
conditional GETs."""

import hashlib

from django.utils.http import http_date, parse_http_date_safe
from rest_framework import permissions, status
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from classifier.permissions import can_submit


class JSONErrorsMixin:
    """Errors are always JSON, even where the success answer is FHIR, HL7 or an image."""

    def finalize_response(self, request, response, *args, **kwargs):
        if response.status_code >= 400 and isinstance(response, Response):
            renderer = getattr(request, "accepted_renderer", None)
            if renderer is None or renderer.media_type != JSONRenderer.media_type:
                request.accepted_renderer = JSONRenderer()
                request.accepted_media_type = JSONRenderer.media_type
        return super().finalize_response(request, response, *args, **kwargs)


class CanSubmit(permissions.BasePermission):
    """Technologists and reviewers submit images (the same rule as the portal)."""

    message = "Only technologists and reviewers may submit images."

    def has_permission(self, request, view):
        return can_submit(request.user)


def conditional(request, response: Response, body: str, last_modified) -> Response:
    """ETag (a hash of the body) and Last-Modified; 304 when the client's copy is current."""
    etag = f'"{hashlib.sha256(body.encode()).hexdigest()[:32]}"'
    headers = {"ETag": etag, "Last-Modified": http_date(last_modified.timestamp())}
    if_none_match = request.headers.get("If-None-Match")
    since = parse_http_date_safe(request.headers.get("If-Modified-Since", ""))
    if (if_none_match and etag in [t.strip() for t in if_none_match.split(",")]) or (
        not if_none_match and since is not None and int(last_modified.timestamp()) <= since
    ):
        return Response(status=status.HTTP_304_NOT_MODIFIED, headers=headers)
    for key, value in headers.items():
        response[key] = value
    return response
