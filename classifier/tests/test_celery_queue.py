"""A batch on a real queue: Redis (Debian's redis-server) and a Celery worker that is killed mid-batch.

Everything runs in subprocesses that share one SQLite file and one media folder
under a temp directory: manage.py migrate, createsuperuser, classify_folder
--queue (the job goes to Redis once committed), then ``celery -A
hematovision_site worker``. The test SIGKILLs the worker part-way, starts a new
one (which re-queues unfinished jobs when it is ready) and checks the batch
ends with exactly 50 results, none twice.
"""

import io
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
N_IMAGES = 50
pytestmark = pytest.mark.services


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _stop(proc: subprocess.Popen | None, sig=signal.SIGTERM, timeout: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture
def redis_url(tmp_path):
    binary = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if binary is None:
        pytest.skip("redis-server is not installed (scripts/test_prereqs.py installs it)")
    port = _free_port()
    workdir = tmp_path / "redis"
    workdir.mkdir()
    log = (workdir / "redis.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(workdir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port)

        def ping():
            try:
                return client.ping()
            except redis.ConnectionError:
                return False

        _wait(ping, 10, "redis-server to answer PING")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)
        log.close()


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    base = np.array([(200, 60, 60), (60, 200, 60), (60, 60, 200)][seed % 3], dtype=np.int16)
    pixels = np.clip(base + rng.integers(-15, 16, size=(48, 64, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_batch_of_50_survives_a_killed_worker(tmp_path, redis_url):
    var = tmp_path / "var"
    var.mkdir()
    db_path = var / "db.sqlite3"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "classifier.tests.queue_settings",
        "DJANGO_SECRET_KEY": "queue-test-secret-key-not-for-production",
        "HEMATOVISION_VAR_DIR": str(var),
        "HEMATOVISION_MEDIA_ROOT": str(var / "media"),
        "DATABASE_URL": f"sqlite:///{db_path}",
        "CELERY_BROKER_URL": redis_url,
        "HEMATOVISION_PREDICTOR": "fake",
        "HEMATOVISION_TEST_PREDICT_DELAY": "0.12",
        "HEMATOVISION_AXES_ENABLED": "0",
        "DJANGO_LOG_LEVEL": "WARNING",
        "DJANGO_SUPERUSER_PASSWORD": "queue-test-password-42",
    }
    python = sys.executable
    manage = [python, str(ROOT / "manage.py")]

    def run(*args):
        result = subprocess.run(
            [*manage, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    run("migrate", "--noinput")
    run("createsuperuser", "--noinput", "--username", "tech", "--email", "tech@lab.example")
    folder = tmp_path / "share"
    folder.mkdir()
    for i in range(N_IMAGES):
        (folder / f"cell-{i:02d}.png").write_bytes(_png(i))
    out = run("classify_folder", str(folder), "--accession", "Q-50", "--user", "tech", "--queue")
    assert f"with {N_IMAGES} file(s) for Q-50" in out

    def query(sql, *params):
        with sqlite3.connect(db_path, timeout=10) as conn:
            return conn.execute(sql, params).fetchall()

    def done_items():
        return query("SELECT COUNT(*) FROM classifier_batchitem WHERE state = 'done'")[0][0]

    celery = [
        str(Path(python).with_name("celery")),
        "-A",
        "hematovision_site",
        "worker",
        "--pool=solo",
        "-c",
        "1",
        "--loglevel=INFO",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    logs = []

    def start_worker(n):
        log = (tmp_path / f"worker{n}.log").open("w")
        logs.append(log)
        return subprocess.Popen(celery, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    worker = start_worker(1)
    try:
        _wait(lambda: done_items() >= 10, 60, "the first worker to finish 10 files")
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        after_kill = done_items()
        assert 10 <= after_kill < N_IMAGES, "the worker was not killed mid-batch"
        assert query("SELECT state FROM classifier_batchjob") == [("running",)]

        worker = start_worker(2)
        _wait(
            lambda: query("SELECT state FROM classifier_batchjob")[0][0] in ("done", "done_with_errors"),
            60,
            "the restarted worker to finish the batch",
            interval=0.2,
        )
    except AssertionError:
        for log in logs:
            log.flush()
        print("\n".join(Path(log.name).read_text()[-3000:] for log in logs))
        raise
    finally:
        _stop(worker)
        for log in logs:
            log.close()

    ((state, runs),) = query("SELECT state, runs FROM classifier_batchjob")
    assert state == "done"
    assert runs >= 2
    assert query("SELECT state, COUNT(*) FROM classifier_batchitem GROUP BY state") == [("done", N_IMAGES)]
    results = query(
        "SELECT c.original_filename, c.image_sha256, c.external_id FROM classifier_classification c "
        "JOIN classifier_specimen s ON s.id = c.specimen_id WHERE s.accession = 'Q-50'"
    )
    assert len(results) == N_IMAGES
    assert sorted(r[0] for r in results) == [f"cell-{i:02d}.png" for i in range(N_IMAGES)]
    assert len({r[1] for r in results}) == N_IMAGES
    assert len({r[2] for r in results}) == N_IMAGES
    assert query("SELECT COUNT(DISTINCT classification_id) FROM classifier_batchitem")[0][0] == N_IMAGES
    assert query("SELECT COUNT(*) FROM classifier_classification")[0][0] == N_IMAGES
