from django.urls import include, path

from accounts import views

urlpatterns = [
    path("profile/", views.ProfileView.as_view(), name="profile"),
    path("profile/token/", views.token_regenerate_view, name="token-regenerate"),
    path("login/", views.LoginView.as_view(), name="login"),
    path("password_reset/", views.ThrottledPasswordResetView.as_view(), name="password_reset"),
    path("", include("django.contrib.auth.urls")),
]
