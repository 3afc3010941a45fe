"""What the portal's views share: error text, safe redirects, JSON or HTML, private file responses."""

import mimetypes
from pathlib import PurePosixPath

from django.core.exceptions import ValidationError
from django.http import FileResponse, Http404
from django.utils.http import url_has_allowed_host_and_scheme

from classifier.cells.validation import ImageRejected

NO_ROLE_MESSAGE = (
    "Your account has no lab role yet, so you cannot upload or see results. "
    "Ask an administrator to add you to the Technologist or Reviewer group."
)


def error_text(exc: Exception) -> str:
    if isinstance(exc, ImageRejected):
        return exc.message
    if isinstance(exc, ValidationError):
        return " ".join(exc.messages)
    return str(exc)


def safe_next(request, fallback: str) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return fallback


def wants_json(request) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def private_file(field, download_name: str) -> FileResponse:
    if not field:
        raise Http404("No such file.")
    try:
        handle = field.open("rb")
    except FileNotFoundError:
        raise Http404("No such file.") from None
    suffix = PurePosixPath(field.name).suffix.lower()
    content_type = mimetypes.types_map.get(suffix, "application/octet-stream")
    response = FileResponse(handle, content_type=content_type, filename=f"{download_name}{suffix}")
    response["Content-Disposition"] = f'inline; filename="{download_name}{suffix}"'
    response["X-Content-Type-Options"] = "nosniff"
    return response
