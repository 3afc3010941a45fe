"""Top-level URLs: portal, accounts, admin, API and its schema."""

from django.contrib import admin
from django.contrib.auth.decorators import login_required
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from hematovision_site.views import healthz

handler404 = "hematovision_site.views.page_not_found"  # JSON under /api/, the site's page elsewhere

admin.site.site_header = "HematoVision administration"
admin.site.site_title = "HematoVision admin"

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("", include("classifier.portal.urls")),
    path("accounts/", include("accounts.urls")),
    path("admin/", admin.site.urls),
    path("api/v1/", include("classifier.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # The docs page is for people: send them to sign in rather than answer 401.
    path(
        "api/docs/",
        login_required(SpectacularSwaggerSplitView.as_view(url_name="schema")),
        name="swagger-ui",
    ),
]
