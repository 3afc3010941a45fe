"""Fixtures of the bad-input modules (``bad_input.py``: test_upload_*, test_batch_bad_input)."""

import pytest
from django.core.cache import cache as django_cache
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient


class Clients:
    """The two doors an upload comes through: the portal (signed in) and the API (a token)."""

    def __init__(self, portal, api):
        self.portal, self.api = portal, api


@pytest.fixture
def bad_input_settings(settings):
    """Cheap users (no PBKDF2 rounds), batch jobs run in the request, throttle counters at zero."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.HEMATOVISION_JOBS_IN_THREAD = False
    django_cache.clear()
    yield settings
    django_cache.clear()


@pytest.fixture
def clients(tech_client, user):
    """The technologist at the portal and at the API."""
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return Clients(tech_client, api)
