"""HTTP responses that carry patient data: portal views and the API build them the same way."""

from django.http import HttpResponse


def private_attachment(content, content_type: str, filename: str) -> HttpResponse:
    """A download as an attachment. No cache keeps it: ``PrivateResponsesMiddleware`` marks every answer
    to a signed-in user or an API token ``private, no-store``."""
    response = HttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
