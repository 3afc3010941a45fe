"""API throttle counters are shared by every server process when HEMATOVISION_CACHE_URL names Redis.

Each ``manage.py shell`` below is a separate process, as two gunicorn workers are. With the
per-process default cache each grants the whole rate on its own; with Redis they share it.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from classifier.tests.test_celery_queue import redis_url  # noqa: F401  (fixture: a real redis-server)

ROOT = Path(__file__).resolve().parent.parent

HITS = """
from types import SimpleNamespace
from django.conf import settings
from rest_framework.throttling import UserRateThrottle

class ThreePerMinute(UserRateThrottle):
    rate = "3/min"

user = SimpleNamespace(is_authenticated=True, pk=4242)
request = SimpleNamespace(user=user, META={"REMOTE_ADDR": "127.0.0.1"})
backend = settings.CACHES["default"]["BACKEND"].rsplit(".", 1)[-1]
print(backend, [ThreePerMinute().allow_request(request, None) for _ in range(2)])
"""


def _two_hits(tmp_path, **env) -> str:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "HEMATOVISION_"))}
    full.update(HEMATOVISION_VAR_DIR=str(tmp_path), **env)
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", HITS], cwd=ROOT, env=full, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.services
def test_two_processes_share_the_throttle_through_redis(tmp_path, redis_url):  # noqa: F811
    assert _two_hits(tmp_path, HEMATOVISION_CACHE_URL=redis_url) == "RedisCache [True, True]"
    assert _two_hits(tmp_path, HEMATOVISION_CACHE_URL=redis_url) == "RedisCache [True, False]"


def test_without_a_cache_url_each_process_counts_alone(tmp_path):
    assert _two_hits(tmp_path) == "LocMemCache [True, True]"
    assert _two_hits(tmp_path) == "LocMemCache [True, True]"
