"""HTTP responses that carry patient data: portal views and the API build them the same way."""

from django.http import HttpResponse


def private_attachment(content, content_type: str, filename: str) -> HttpResponse:
    """A download that no shared cache may keep."""
    response = HttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "private, no-store"
    return response
