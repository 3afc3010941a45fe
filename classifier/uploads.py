"""Upload handlers: a file over the upload limit is counted, never kept.

Django streams each uploaded file to memory (small) or a temporary file (large)
before any view runs, and the CSRF middleware already reads the body for the
portal's forms. ``UploadLimitHandler`` sits first in ``FILE_UPLOAD_HANDLERS``:
once a file passes HEMATOVISION_MAX_UPLOAD_BYTES it swallows the rest of that
file (still counting it) so nothing more reaches memory or disk, and hands the
view an ``OversizeUpload`` that carries the true size and no content. The views
and serializers refuse it with ``validation.check_size`` (413, "The file is
100.0 MB; the limit is 20.0 MB.") before reading anything.
"""

import io

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler


class OversizeUpload(UploadedFile):
    """A file that was over the limit: its name and true size, no content."""

    def __init__(self, name, content_type, size, charset=None, content_type_extra=None):
        super().__init__(io.BytesIO(b""), name, content_type, size, charset, content_type_extra)


class UploadLimitHandler(FileUploadHandler):
    """Passes chunks on until a file passes the limit, then drops the rest of that file."""

    def new_file(self, *args, **kwargs):
        super().new_file(*args, **kwargs)
        self.received = 0
        self.over_limit = False

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        if self.received > settings.HEMATOVISION_MAX_UPLOAD_BYTES:
            self.over_limit = True
        return None if self.over_limit else raw_data  # None: later handlers get nothing more

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
