"""The production password hashers, with their real rounds: the rest of the suite hashes with MD5
(conftest.FAST_PASSWORD_HASHERS) to stay fast, so this is where the served configuration is checked."""

import importlib

import pytest
from django.conf import global_settings
from django.contrib.auth.hashers import PBKDF2PasswordHasher, get_hasher, identify_hasher

from accounts.tests.factories import UserFactory


def _production_hashers() -> list[str]:
    production = importlib.import_module("hematovision_site.settings")
    return list(getattr(production, "PASSWORD_HASHERS", global_settings.PASSWORD_HASHERS))


def test_production_hashes_with_pbkdf2_and_never_md5():
    hashers = _production_hashers()
    assert hashers[0] == "django.contrib.auth.hashers.PBKDF2PasswordHasher"
    assert not any("MD5" in name or "Unsalted" in name for name in hashers)


def test_the_suite_hashes_fast_but_only_inside_tests(settings):
    assert settings.PASSWORD_HASHERS == ["django.contrib.auth.hashers.MD5PasswordHasher"]
    assert _production_hashers() != settings.PASSWORD_HASHERS


@pytest.mark.django_db
def test_a_user_made_with_the_production_hashers_stores_pbkdf2_and_signs_in(settings, client, password):
    settings.PASSWORD_HASHERS = _production_hashers()
    user = UserFactory(username="prod-hash")
    hasher = identify_hasher(user.password)
    assert hasher.algorithm == "pbkdf2_sha256"
    assert user.password.split("$")[1] == str(PBKDF2PasswordHasher.iterations)
    assert get_hasher("default").algorithm == "pbkdf2_sha256"
    assert user.check_password(password)
    assert not user.check_password(password + "x")
    assert client.login(username="prod-hash", password=password)
