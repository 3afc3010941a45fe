from django.urls import include, path

from . import views

urlpatterns = [
    path("profile/", views.ProfileView.as_view(), name="profile"),
    path("profile/token/", views.token_regenerate_view, name="token-regenerate"),
    path("", include("django.contrib.auth.urls")),
]
