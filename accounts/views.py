"""Profile page with the user's API token. Login etc. are Django's own views."""

from django.contrib import messages
from django.shortcuts import redirect
from django.views.decorators.http import require_POST
from django.views.generic import TemplateView

from . import services


class ProfileView(TemplateView):
    template_name = "accounts/profile.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["token"] = services.token_get(user=self.request.user)
        return context


@require_POST
def token_regenerate_view(request):
    had_one = services.token_get(user=request.user) is not None
    services.token_regenerate(user=request.user)
    messages.success(
        request,
        "A new API token was issued; the old one no longer works." if had_one else "An API token was issued.",
    )
    return redirect("profile")
