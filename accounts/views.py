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

from accounts import services


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


DEVICE_COOKIE = "hv_device"
DEVICE_SALT = "hematovision.accounts.device"
DEVICE_MAX_AGE = 400 * 24 * 3600  # browsers keep a cookie at most 400 days


def known_user_ids(request) -> list[int]:
    """Accounts that have signed in from this browser (a signed cookie set at sign-in)."""
    raw = request.get_signed_cookie(DEVICE_COOKIE, default="", salt=DEVICE_SALT, max_age=DEVICE_MAX_AGE)
    return [int(part) for part in raw.split(",") if part.isdigit()]


class LoginView(auth_views.LoginView):
    """Django's sign-in, which also marks this browser as one the account's owner uses: a later
    password reset for that account from here is the owner's own, which others cannot use up."""

    def form_valid(self, form):
        response = super().form_valid(form)
        ids = [self.request.user.pk, *(i for i in known_user_ids(self.request) if i != self.request.user.pk)]
        response.set_signed_cookie(
            DEVICE_COOKIE, ",".join(str(i) for i in ids[:5]), salt=DEVICE_SALT, max_age=DEVICE_MAX_AGE,
            secure=settings.SESSION_COOKIE_SECURE, httponly=True, samesite="Lax",
        )
        return response


class ThrottledPasswordResetView(auth_views.PasswordResetView):
    """Django's reset form with mail limits that nobody can use to silence the account's owner.

    Each client address gets HEMATOVISION_PASSWORD_RESETS_PER_HOUR mails an hour, for all addresses
    together (no client floods anyone's mailbox), and one address gets at most
    HEMATOVISION_PASSWORD_RESETS_PER_ADDRESS_PER_HOUR from all clients together. A browser that
    has signed in to the account before is its owner's: its requests count apart, against their
    own HEMATOVISION_PASSWORD_RESETS_PER_HOUR, so five requests from someone else (even from the
    same address) no longer block the owner's reset. Over a limit the page answers exactly as after
    a sent mail (it never tells whether an address exists).
    """

    def form_valid(self, form):
        from django.contrib.auth import get_user_model

        from hematovision_site.middleware import client_ip

        email = form.cleaned_data["email"].lower()
        owners = set(
            get_user_model().objects.filter(email__iexact=email, pk__in=known_user_ids(self.request))
            .values_list("pk", flat=True)
        )
        per_client = settings.HEMATOVISION_PASSWORD_RESETS_PER_HOUR
        if owners:
            limits = {f"pwreset:owner:{min(owners)}": per_client}
        else:
            limits = {
                f"pwreset:ip:{client_ip(self.request)}": per_client,
                f"pwreset:email:{email}": settings.HEMATOVISION_PASSWORD_RESETS_PER_ADDRESS_PER_HOUR,
            }
        over = [key for key, limit in limits.items() if cache.get(key, 0) >= limit]
        if over:  # a refused request uses up nothing (else one client's refusals would fill the address's)
            logger.warning("password reset throttled: %s", over)
            return HttpResponseRedirect(self.get_success_url())
        for key in limits:
            cache.add(key, 0, timeout=3600)
            cache.incr(key)
        return super().form_valid(form)
