"""Operational endpoints."""

from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.http import JsonResponse
from django.views import defaults
from django.views.decorators.cache import never_cache


@login_not_required
@never_cache
def healthz(request):
    """Liveness for load balancers and compose: the database answers. Reveals nothing else."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})


def page_not_found(request, exception=None):
    """``handler404``: the API's one JSON error shape under ``/api/``, the site's page elsewhere."""
    if request.path_info.startswith("/api/"):
        return JsonResponse({"detail": "Not found.", "code": "not_found"}, status=404)
    return defaults.page_not_found(request, exception)
