import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core import mail
from django.test import Client
from rest_framework.authtoken.models import Token

from accounts.models import User

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.django_db
def test_role_groups_exist_after_migrate():
    assert sorted(Group.objects.values_list("name", flat=True)) == ["Interface", "Reviewer", "Technologist"]


def test_custom_user_model_is_in_use(settings):
    assert settings.AUTH_USER_MODEL == "accounts.User"


@pytest.mark.django_db
def test_login_page_renders_bootstrap_form(client):
    response = client.get("/accounts/login/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "/static/vendor/bootstrap/bootstrap.min.css" in html
    assert 'name="username"' in html
    assert 'name="password"' in html
    assert "csrfmiddlewaretoken" in html
    # Every asset is served by the site itself. The CSRF token is random letters and digits: it can
    # hold "cdn" (it did, about once in a thousand runs), so it is left out of the word check.
    urls = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert urls
    assert all(url.startswith("/") and not url.startswith("//") for url in urls), urls
    without_token = re.sub(r'name="csrfmiddlewaretoken" value="[^"]*"', "", html)
    assert "cdn" not in without_token.lower()


@pytest.mark.django_db
def test_login_with_password_then_dashboard_shows_user_and_role(client, user, password):
    response = client.post("/accounts/login/", {"username": "tech", "password": password})
    assert response.status_code == 302
    assert response["Location"] == "/"
    page = client.get("/").content.decode()
    assert "tech" in page
    assert '<span class="badge text-bg-secondary" id="user-role">Technologist</span>' in page


@pytest.mark.django_db
def test_wrong_password_is_refused(client, user):
    response = client.post("/accounts/login/", {"username": "tech", "password": "nope"})
    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.content.decode()
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
def test_logout_is_post_only_and_ends_session(tech_client):
    assert tech_client.get("/accounts/logout/").status_code == 405
    response = tech_client.post("/accounts/logout/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/"
    assert tech_client.get("/").status_code == 302


@pytest.mark.django_db
def test_password_reset_sends_console_mail(client, user):
    response = client.post("/accounts/password_reset/", {"email": user.email})
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == [user.email]
    assert "/accounts/reset/" in mail.outbox[0].body


@pytest.mark.django_db
def test_password_reset_is_throttled_without_telling(client, user, settings):
    """At most N reset mails an hour per client and M per address from all clients; over either the
    page answers as if sent (so it tells nobody whether the address exists) and nothing is sent."""
    settings.HEMATOVISION_PASSWORD_RESETS_PER_HOUR = 2
    settings.HEMATOVISION_PASSWORD_RESETS_PER_ADDRESS_PER_HOUR = 3
    answers = [client.post("/accounts/password_reset/", {"email": user.email}) for _ in range(4)]
    assert [(r.status_code, r["Location"]) for r in answers] == [(302, "/accounts/password_reset/done/")] * 4
    assert len(mail.outbox) == 2
    other = Client(REMOTE_ADDR="192.0.2.55")  # another client has its own limit...
    assert other.post("/accounts/password_reset/", {"email": user.email.upper()}).status_code == 302
    assert len(mail.outbox) == 3
    assert other.post("/accounts/password_reset/", {"email": user.email}).status_code == 302
    assert len(mail.outbox) == 3  # ...but the address's mailbox-flood bound holds for all of them


@pytest.mark.django_db
def test_password_change(tech_client, user, password):
    new = "another-long-secret-42"
    response = tech_client.post(
        "/accounts/password_change/",
        {"old_password": password, "new_password1": new, "new_password2": new},
    )
    assert response.status_code == 302
    user.refresh_from_db()
    assert user.check_password(new)


def _all_patterns(patterns, prefix=""):
    """Every URL pattern of the site as (route, name, view), includes flattened."""
    from django.urls import URLPattern, URLResolver

    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from _all_patterns(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern), entry.name or "", entry.callback


SIGNUP_WORDS = ("signup", "sign-up", "sign_up", "register", "join", "create-account", "create_account")


def test_no_public_signup():
    """Accounts are made by an administrator only: no URL, URL name or view offers a sign-up."""
    from django.urls import get_resolver

    offers = [
        (route, name, getattr(view, "__name__", repr(view)))
        for route, name, view in _all_patterns(get_resolver().url_patterns)
        if not route.startswith("admin/")  # the admin's own "add user" needs a superuser
        and any(
            word in text.lower()
            for word in SIGNUP_WORDS
            for text in (route, name, getattr(view, "__name__", ""))
        )
    ]
    assert offers == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path", ["/accounts/signup/", "/accounts/register/", "/accounts/login/", "/api/v1/auth/token/"]
)
def test_an_anonymous_post_creates_no_user(client, path):
    """No form an anonymous visitor can reach creates an account, whatever it is sent."""
    User = get_user_model()  # noqa: N806
    before = User.objects.count()
    client.post(path, {
        "username": "newcomer", "email": "newcomer@example.org",
        "password": "correct-horse-battery-9", "password1": "correct-horse-battery-9",
        "password2": "correct-horse-battery-9",
    })
    assert User.objects.count() == before
    assert not User.objects.filter(username="newcomer").exists()


@pytest.mark.django_db
def test_no_url_of_the_site_creates_a_user_for_an_anonymous_post(client):
    """Every route without parameters (admin and API included), posted a sign-up form anonymously:
    none adds a user. Catches a sign-up view whatever its URL is called."""
    from django.urls import get_resolver

    User = get_user_model()  # noqa: N806
    before = User.objects.count()
    routes = sorted({
        "/" + route.replace("^", "").replace("$", "")
        for route, _, _ in _all_patterns(get_resolver().url_patterns)
        if "<" not in route and "(" not in route and "\\" not in route
    })
    assert {"/accounts/login/", "/api/v1/auth/token/"} <= set(routes)  # the walk reached them
    client.raise_request_exception = False  # a 500 is an answer here, not a crash of the test
    for path in routes:
        client.post(path, {
            "username": "newcomer", "email": "newcomer@example.org",
            "password": "correct-horse-battery-9", "password1": "correct-horse-battery-9",
            "password2": "correct-horse-battery-9",
        })
        assert User.objects.count() == before, path
    assert not User.objects.filter(username="newcomer").exists()


@pytest.mark.django_db
def test_profile_shows_token_and_regenerate_replaces_it(tech_client, user):
    page = tech_client.get("/accounts/profile/").content.decode()  # viewing issues nothing
    assert not Token.objects.filter(user=user).exists()
    assert 'id="no-token"' in page
    issued = tech_client.post("/accounts/profile/token/", follow=True)
    assert [str(m) for m in issued.context["messages"]] == ["An API token was issued."]
    token = Token.objects.get(user=user)
    response = tech_client.get("/accounts/profile/")
    assert f'value="{token.key}"' in response.content.decode()
    assert tech_client.get("/accounts/profile/token/").status_code == 405
    response = tech_client.post("/accounts/profile/token/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/profile/"
    new = Token.objects.get(user=user)
    assert new.key != token.key
    assert Token.objects.filter(user=user).count() == 1


@pytest.mark.django_db
def test_roles(user, reviewer, no_role_user, admin_user):
    assert (user.is_technologist, user.is_reviewer) == (True, False)
    assert (reviewer.is_technologist, reviewer.is_reviewer) == (False, True)
    assert no_role_user.role_label == "No role"
    assert admin_user.is_reviewer
    assert admin_user.role_label == "Admin"
    assert User.objects.count() == 4


def _manage(*args, **env):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=full_env, capture_output=True, text=True
    )


def test_production_profile_passes_check_deploy(tmp_path):
    result = _manage(
        "check", "--deploy", "--fail-level", "WARNING",
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY="x7!" + "k" * 30 + "q9#" + "z" * 20,
        DJANGO_ALLOWED_HOSTS="example.org",
        HEMATOVISION_VAR_DIR=str(tmp_path),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_production_refuses_to_start_without_secret_key(tmp_path):
    result = _manage(
        "check", DJANGO_DEBUG="0", DJANGO_ALLOWED_HOSTS="example.org", HEMATOVISION_VAR_DIR=str(tmp_path)
    )
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off." in result.stderr
