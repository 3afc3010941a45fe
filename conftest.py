"""Shared fixtures: users in each role, clients, a private temp MEDIA_ROOT, the fake model."""

import pytest
from rest_framework.test import APIClient

from accounts.roles import REVIEWER, TECHNOLOGIST
from accounts.tests.factories import UserFactory

PASSWORD = "correct-horse-battery-9"
# Tests hash with MD5: PBKDF2's production rounds cost ~0.1-0.5 s per user created or signed in.
# accounts/tests/test_password_hashing.py checks the production hashers with their real rounds.
FAST_PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _isolated_settings(settings, tmp_path):
    """Each test gets its own media folder, a fast password hasher and, unless it asks otherwise, the
    fake predictor."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.PASSWORD_HASHERS = FAST_PASSWORD_HASHERS
    settings.HEMATOVISION_PREDICTOR = "fake"
    settings.AXES_ENABLED = False
    settings.HEMATOVISION_SPOOL_RETRY_SECONDS = 0  # no background retry thread unless a test asks for one
    settings.HEMATOVISION_MIN_CELLS_FOR_FLAGS = 0  # tests count a few cells; tests of the guard set it
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    return settings


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Throttle counters live in the cache: each test starts, and leaves, with none."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def password():
    return PASSWORD


@pytest.fixture
def user(db):
    """A technologist."""
    return UserFactory(username="tech", roles=[TECHNOLOGIST])


@pytest.fixture
def other_user(db):
    """A second technologist, who must never see the first one's data."""
    return UserFactory(username="tech2", roles=[TECHNOLOGIST])


@pytest.fixture
def reviewer(db):
    return UserFactory(username="reviewer", roles=[REVIEWER])


@pytest.fixture
def no_role_user(db):
    return UserFactory(username="norole")


@pytest.fixture
def tech_client(client, user):
    client.force_login(user)
    return client


@pytest.fixture
def reviewer_client(client, reviewer):
    client.force_login(reviewer)
    return client


@pytest.fixture
def api_client():
    return APIClient()


@pytest.fixture
def tech_api(api_client, user):
    """The API as the technologist, signed in with a token as an LIS would be."""
    from rest_framework.authtoken.models import Token

    api_client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return api_client
