"""Profile page with the user's API token; a throttled password reset. Login etc. are Django's own."""

import logging

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.core.cache import cache
from django.http import HttpResponseRedirect
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
    _, replaced = services.token_regenerate(user=request.user)
    if replaced:
        messages.success(request, "A new API token was issued; the old one no longer works.")
    else:
        messages.success(request, "An API token was issued.")
    return redirect("profile")


logger = logging.getLogger(__name__)


class ThrottledPasswordResetView(auth_views.PasswordResetView):
    """Django's reset form, sending at most HEMATOVISION_PASSWORD_RESETS_PER_HOUR mails per client
    address and per e-mail address: nobody can flood a colleague's mailbox. Over the limit the page
    answers exactly as after a sent mail (it never tells whether an address exists)."""

    def form_valid(self, form):
        from hematovision_site.middleware import client_ip

        limit = settings.HEMATOVISION_PASSWORD_RESETS_PER_HOUR
        email = form.cleaned_data["email"].lower()
        keys = [f"pwreset:ip:{client_ip(self.request)}", f"pwreset:email:{email}"]
        counts = []
        for key in keys:
            cache.add(key, 0, timeout=3600)
            counts.append(cache.incr(key))
        if max(counts) > limit:
            logger.warning("password reset throttled (%s per hour): %s", limit, keys)
            return HttpResponseRedirect(self.get_success_url())
        return super().form_valid(form)
