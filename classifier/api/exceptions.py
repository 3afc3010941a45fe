"""One error shape for the whole API: ``{"detail": message, "code": code}``.

DRF's own exceptions keep their status; the domain's exceptions get theirs here,
so services stay free of HTTP: ImageRejected carries its own status (400, 413,
415), Django's ValidationError is 400, PermissionDenied 403, a missing or hidden
object 404, an axes login lock-out 429, too many waiting jobs 429, every image
slot busy 503 (with Retry-After). Field errors keep the per-field map
under ``errors`` so a client can point at the bad field.
"""

from django.core.exceptions import (
    ObjectDoesNotExist,
    PermissionDenied,
    RequestDataTooBig,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from classifier.cells.validation import ImageRejected
from classifier.limits import ServerBusy
from classifier.uploads import UploadTooBig, too_many_files_message

try:  # axes raises this subclass of PermissionDenied when a login is locked out
    from axes.exceptions import AxesBackendPermissionDenied
except ImportError:  # pragma: no cover - axes is installed in every profile
    AxesBackendPermissionDenied = ()


def _first_message(detail, path: tuple = ()) -> tuple[str, str]:
    """The first (message, code) in a nested DRF error structure, prefixed by its field."""
    if isinstance(detail, dict) and detail:
        key, value = next(iter(detail.items()))
        return _first_message(value, path if key == "non_field_errors" else (*path, str(key)))
    if isinstance(detail, list) and detail:
        return _first_message(detail[0], path)
    message = f"{'.'.join(path)}: {detail}" if path else str(detail)
    return message, getattr(detail, "code", None) or "invalid"


# Service refusals that are conflicts with what is stored rather than bad input.
CONFLICT_CODES = frozenset({"external_id_conflict"})
# Service refusals that say "not now, later": too many of the user's jobs are waiting.
LATER_CODES = frozenset({"too_many_jobs"})


def _body(detail: str, code: str, **extra) -> dict:
    return {"detail": detail, "code": code, **extra}


def api_exception_handler(exc, context):  # noqa: C901 - one branch per exception type Django/DRF raise, each mapped to the one JSON error shape
    """REST_FRAMEWORK["EXCEPTION_HANDLER"]: map every expected failure to a JSON error."""
    if isinstance(exc, ImageRejected):
        set_rollback()
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, ServerBusy) else None
        return Response(_body(exc.message, exc.code), status=exc.http_status, headers=headers)
    if isinstance(exc, AxesBackendPermissionDenied):
        set_rollback()
        return Response(
            _body("Too many failed sign-in attempts; try again later.", "locked_out"),
            status=status.HTTP_429_TOO_MANY_REQUESTS,
        )
    if isinstance(exc, DjangoValidationError):
        messages = exc.messages
        code = getattr(exc, "code", None) or next(
            (e.code for e in getattr(exc, "error_list", []) if getattr(e, "code", None)), "invalid"
        )
        set_rollback()
        if code in LATER_CODES:
            return Response(
                _body(" ".join(messages), code),
                status=status.HTTP_429_TOO_MANY_REQUESTS,
                headers={"Retry-After": "60"},
            )
        conflict = code in CONFLICT_CODES
        answer = status.HTTP_409_CONFLICT if conflict else status.HTTP_400_BAD_REQUEST
        return Response(_body(" ".join(messages), code), status=answer)

    if isinstance(exc, UploadTooBig):  # the files of one request add up to more than the archive limit
        return Response(_body(str(exc), "request_too_large"), status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    if isinstance(exc, RequestDataTooBig):
        exc = exceptions.APIException("The request body is too large.")
        exc.status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
        return Response(_body(str(exc.detail), "request_too_large"), status=exc.status_code)
    if isinstance(exc, TooManyFilesSent):  # more than DATA_UPLOAD_MAX_NUMBER_FILES in one body
        return Response(_body(too_many_files_message(), "too_many_files"), status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, TooManyFieldsSent):
        return Response(_body(str(exc), "too_many_fields"), status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(*exc.args)
    elif isinstance(exc, ObjectDoesNotExist):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(*exc.args)

    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    detail = exc.detail if isinstance(exc, exceptions.APIException) else response.data
    if isinstance(detail, (dict, list)):
        message, code = _first_message(detail)
        response.data = _body(message, code, errors=detail)
    else:
        response.data = _body(str(detail), getattr(detail, "code", None) or "error")
    return response
