"""Upload handlers: a file over its limit is counted, never kept; too many files get a clear answer.

Django streams each uploaded file to memory (small) or a temporary file (large)
before any view runs, and the CSRF middleware already reads the body for the
portal's forms. ``UploadLimitHandler`` sits first in ``FILE_UPLOAD_HANDLERS``:
once a file passes its limit (a batch ZIP in the ``archive`` field:
HEMATOVISION_BATCH_MAX_ARCHIVE_MB; any other file: HEMATOVISION_MAX_UPLOAD_BYTES)
it swallows the rest of that file (still counting it) so nothing more reaches
memory or disk, and hands the view an ``OversizeUpload`` that carries the true
size and no content. The views and serializers refuse it with
``validation.check_size`` (413, "The file is 100.0 MB; the limit is 20.0 MB.")
and the batch jobs with ``jobs.check_archive_size`` before reading anything.

A body with more files than DATA_UPLOAD_MAX_NUMBER_FILES is refused by Django
while it is parsed; ``TooManyFilesMiddleware`` turns that into a message on the
portal page (for signed-in users only), and ``api.exceptions`` into the API's JSON 400.
Files sent by nobody signed in are never kept (``UploadLimitHandler``).
"""

import io

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import RequestDataTooBig, TooManyFilesSent
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, StopFutureHandlers
from django.http import UnreadablePostError
from django.shortcuts import redirect

from classifier.jobs.batch_files import max_archive_bytes

ARCHIVE_FIELDS = frozenset({"archive"})  # the batch ZIP, in the portal's batch form and the API


def limit_for(field_name: str) -> int:
    """Most bytes a file sent in ``field_name`` may hold: a batch ZIP has its own limit."""
    if field_name in ARCHIVE_FIELDS:
        return max_archive_bytes()
    return settings.HEMATOVISION_MAX_UPLOAD_BYTES


def too_many_files_message() -> str:
    return (
        f"Too many files in one upload; the limit is {settings.HEMATOVISION_BATCH_MAX_FILES} files "
        "per job. Split them into several uploads."
    )


class OversizeUpload(UploadedFile):
    """A file that was over the limit: its name and true size, no content."""

    def __init__(self, name, content_type, size, charset=None, content_type_extra=None):
        super().__init__(io.BytesIO(b""), name, content_type, size, charset, content_type_extra)


class UploadTooBig(RequestDataTooBig):
    """The files of one request add up to more than the archive limit."""


def request_limit() -> int:
    """Most bytes of files one request may carry: a full ZIP plus one image."""
    return max_archive_bytes() + settings.HEMATOVISION_MAX_UPLOAD_BYTES


def request_too_big_message() -> str:
    return (
        f"The files in this upload add up to more than {request_limit() / 2**20:.1f} MB, the most one "
        "upload may carry. Split them into several uploads."
    )


class UploadLimitHandler(FileUploadHandler):
    """Passes chunks on until a file passes its limit, then drops the rest of that file.

    A request from nobody signed in keeps no file at all: each is counted and handed on empty, so an
    anonymous POST (to the sign-in page, say) writes nothing to memory or disk.

    The files kept by one request add up to at most ``request_limit()`` (a full ZIP plus one image):
    1,001 files of 20 MB each would otherwise put 20 GB of temporary files on disk before any view runs.
    """

    def __init__(self, request=None):
        super().__init__(request)
        self.request_total = 0

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        # Nobody signed in (no session, or an API token that failed): files are counted, never kept.
        # The portal's forms and the API parse a body only after the sign-in check (DRF sets the
        # token's user on the request before it parses), so this refuses only anonymous senders.
        user = getattr(self.request, "user", None)
        self.anonymous = not (user is not None and user.is_authenticated)
        return None

    def new_file(self, field_name, *args, **kwargs):
        super().new_file(field_name, *args, **kwargs)
        self.limit = limit_for(field_name)
        self.received = 0
        self.over_limit = False
        if getattr(self, "anonymous", False):
            self.limit, self.over_limit = 0, True
            raise StopFutureHandlers()  # no other handler opens a buffer or a temporary file for it

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        if self.received > self.limit:
            self.over_limit = True
        if self.over_limit:
            return None  # later handlers get nothing more of this file
        self.request_total += len(raw_data)
        if self.request_total > request_limit():
            raise UploadTooBig(request_too_big_message())
        return raw_data

    def file_complete(self, file_size):
        if not self.over_limit:
            return None
        for handler in getattr(self.request, "upload_handlers", ()):  # the partial copy goes now
            partial = getattr(handler, "file", None) if handler is not self else None
            if partial is not None and hasattr(partial, "close"):
                partial.close()
        return OversizeUpload(
            self.file_name, self.content_type, self.received, self.charset, self.content_type_extra
        )


class TooManyFilesMiddleware:
    """A portal form sent with too many files: the form's page again with why, not a bare 400 page.

    Django refuses such a body while parsing it (TooManyFilesSent), and the CSRF check parses
    it before any view runs, so no view could say what went wrong. This reads the body first
    (after the session, user and messages are set up; the CSRF check reads it anyway) and sends
    the browser back to the form with the limit. The API is left alone: DRF parses its requests
    and ``api.exceptions`` answers JSON.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if (
            request.method == "POST"
            and request.content_type == "multipart/form-data"
            and not request.path_info.startswith("/api/")
            and request.user.is_authenticated  # an anonymous body is left to the CSRF and login checks
        ):
            try:
                request.FILES  # noqa: B018 - parse now, where the refusal can still be answered
            except TooManyFilesSent:
                messages.error(request, too_many_files_message())
                return _back_to_the_form(request)
            except UploadTooBig as exc:
                messages.error(request, str(exc))
                return _back_to_the_form(request)
            except UnreadablePostError:
                pass  # the client went away mid-body; the CSRF check handles that as before
        return self.get_response(request)


def _back_to_the_form(request):
    """The page the form was posted to, on this site only (a path such as ``//evil.example/``
    would send the browser elsewhere)."""
    from django.utils.http import url_has_allowed_host_and_scheme

    target = request.get_full_path()
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        target = "/"
    return redirect(target)
