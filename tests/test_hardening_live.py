"""Issue 18 against a real server: gunicorn (gthread) on 127.0.0.1 with a throw-away installation.

Findings 2 and 6 (concurrent requests from threads), 3 (peak memory of the server process under 20
concurrent hostile uploads, kept under 2 GB), 4 (an upload kept while SQLite is write-locked is filed
once the lock goes, without a restart) and 5 (a staging process killed with SIGKILL leaves files that
``cleanup_orphans`` lists and ``resume_jobs`` removes). The server uses the fake predictor; the model
call waits HV_TEST_PREDICT_DELAY so that requests sent together are in flight together. Nothing here
asserts a time: waits are generous deadlines, so a busy 2-core machine only makes it slower.
"""

import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
GB = 1024**3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(mode, size, value) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, value).save(buffer, format="PNG")
    return buffer.getvalue()


def _cell(seed: int) -> bytes:
    """A small, distinct, coloured cell-like image."""
    import numpy as np

    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array((200, 60, 60)) + rng.integers(-15, 16, size=(48, 64, 3)), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype("uint8")).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Installation:
    var: Path
    env: dict

    def manage(self, *args, check=True, **kw):
        return subprocess.run(
            [PY, "manage.py", *args], cwd=ROOT, env=self.env, check=check, capture_output=True, text=True,
            **kw,
        )

    def db(self, sql: str, *params):
        with sqlite3.connect(self.var / "db.sqlite3", timeout=30) as conn:
            return conn.execute(sql, params).fetchall()


@dataclass
class Server:
    base: str
    process: subprocess.Popen
    tokens: dict

    def headers(self, user="tech"):
        return {"Authorization": f"Token {self.tokens[user]}"}

    def worker_pid(self) -> int:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return int(children[0])

    def peak_rss(self) -> int:
        """The gunicorn worker's peak resident memory (VmHWM), in bytes."""
        for line in Path(f"/proc/{self.worker_pid()}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def installation(tmp_path_factory):
    var = tmp_path_factory.mktemp("live-var")
    env = {
        **os.environ,
        "HEMATOVISION_VAR_DIR": str(var),
        "HEMATOVISION_PREDICTOR": "fake",
        "HEMATOVISION_API_USER_RATE": "100000/min",
        "HEMATOVISION_API_UPLOAD_RATE": "100000/min",
        "HEMATOVISION_AXES_ENABLED": "0",
        "HEMATOVISION_IMAGE_WORK_WAIT_SECONDS": "600",  # a slow machine waits; it never answers busy
        "DJANGO_DEBUG": "1",
        "DJANGO_LOG_LEVEL": "WARNING",
    }
    env.pop("DATABASE_URL", None)
    inst = Installation(var, env)
    inst.manage("migrate", "--noinput")
    script = (
        "import json; from accounts.models import User; from django.contrib.auth.models import Group; "
        "from rest_framework.authtoken.models import Token; t = {}\n"
        "for name, role in [('tech', 'Technologist'), ('tech2', 'Technologist'), ('rev', 'Reviewer')]:\n"
        "    u = User.objects.create_user(name); u.groups.add(Group.objects.get(name=role))\n"
        "    t[name] = Token.objects.create(user=u).key\n"
        "print(json.dumps(t))"
    )
    inst.tokens = json.loads(inst.manage("shell", "-c", script).stdout.strip().splitlines()[-1])
    return inst


def _start(installation, **overrides) -> Server:
    port = _free_port()
    env = {**installation.env, **overrides}
    process = subprocess.Popen(
        [PY, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "-w", "1", "--threads", "24", "-k", "gthread",
         "--timeout", "600", "tests.live_wsgi:application"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/healthz", timeout=5).ok:
                return Server(base, process, installation.tokens)
        except requests.ConnectionError:
            pass
        if process.poll() is not None:
            raise AssertionError("gunicorn exited")
        time.sleep(0.3)
    process.kill()
    raise AssertionError("gunicorn did not answer")


def _stop(server: Server) -> None:
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="module")
def server(installation):
    server = _start(installation, HV_TEST_PREDICT_DELAY="0.3")
    yield server
    _stop(server)


def _together(calls):
    """Run the zero-argument callables at the same moment from threads; their results in order."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        barrier.wait(timeout=120)
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def _upload(server, data, name="c.png", user="tech", **fields):
    def call():
        return requests.post(
            f"{server.base}/api/v1/classifications/", headers=server.headers(user), timeout=600,
            files={"image": (name, data, "image/png")}, data=fields,
        )

    return call


# ---------------------------------------------------------------- 2: concurrent reuse of an external_id


def test_concurrent_reuse_of_an_external_id_is_409_not_another_images_result(server, installation):
    """Finding 2: two simultaneous posts of one external_id with different images both got 201 with
    the first image's result (3 of 3 tries); the second image was never stored."""
    for attempt in range(3):
        ext = f"RACE-{attempt}"
        answers = _together([_upload(server, _cell(100 + attempt), "a.png", external_id=ext),
                             _upload(server, _cell(200 + attempt), "b.png", external_id=ext)])
        codes = sorted(r.status_code for r in answers)
        assert codes == [201, 409], [r.text[:200] for r in answers]
        loser = next(r for r in answers if r.status_code == 409)
        assert loser.json()["code"] == "external_id_conflict"
        winner = next(r for r in answers if r.status_code == 201).json()
        assert installation.db(
            "SELECT original_filename FROM classifier_classification WHERE external_id = ?", ext
        ) == [(winner["original_filename"],)]


# ---------------------------------------------------------------- 6: concurrent retries are not failures


def test_concurrent_identical_retries_all_get_the_one_result(server, installation):
    """Finding 6: 10 simultaneous identical uploads (image, external_id, accession) gave 1x201 and
    9x400 duplicate_image, where a retry alone gets 200."""
    data = _cell(300)
    answers = _together([_upload(server, data, external_id="RETRY-1", accession="ACC-RETRY")] * 10)
    assert sorted(r.status_code for r in answers) == [200] * 9 + [201], [r.text[:200] for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    assert installation.db(
        "SELECT count(*) FROM classifier_classification WHERE external_id = 'RETRY-1'"
    ) == [(1,)]


def _wait_for_job(server, job_id, user="tech") -> dict:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        url = f"{server.base}/api/v1/jobs/{job_id}/"
        body = requests.get(url, headers=server.headers(user), timeout=60).json()
        if body["finished"]:
            return body
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish")


def test_the_same_batch_twice_at_once_finishes_both_jobs_without_failures(server, installation):
    """Finding 6: the same batch submitted twice at once: one job done, the other done_with_errors
    with every file duplicate_image."""
    files = [("images", (f"{i}.png", _cell(400 + i), "image/png")) for i in range(3)]

    def batch():
        return requests.post(f"{server.base}/api/v1/specimens/ACC-TWICE/batch/", headers=server.headers(),
                             files=files, timeout=600)

    answers = _together([batch, batch])
    assert [r.status_code for r in answers] == [202, 202], [r.text[:200] for r in answers]
    done = [_wait_for_job(server, r.json()["id"]) for r in answers]
    assert [job["state"] for job in done] == ["done", "done"]
    first, second = ({row["position"]: row for row in job["items"]} for job in done)
    for position in (1, 2, 3):
        pair = (first[position], second[position])
        assert {row["state"] for row in pair} == {"done"}
        assert pair[0]["classification_id"] == pair[1]["classification_id"]
        assert sorted(row["already_in_specimen"] for row in pair) == [False, True]
    assert installation.db(
        "SELECT count(*) FROM classifier_classification c JOIN classifier_specimen s "
        "ON c.specimen_id = s.id WHERE s.accession = 'ACC-TWICE'"
    ) == [(3,)]


# ---------------------------------------------------------------- 3: memory under hostile uploads


@pytest.fixture(scope="module")
def hostile_files():
    """The attack's files: small on the wire, huge decoded (6300 x 6300: 39.7 MP, under the pixel
    limit), and big-but-allowed ones (3000 x 3000, 36 MB decoded) that are decoded."""
    tiff = io.BytesIO()
    Image.new("F", (6300, 6300), 0.5).save(tiff, format="TIFF", compression="tiff_deflate")
    return {
        "solid_rgb_png": _png("RGB", (6300, 6300), (200, 30, 40)),
        "png_16_bit": _png("I;16", (6300, 6300), 1000),
        "float_tiff": tiff.getvalue(),
        "big_allowed": [_png("RGB", (3000, 3000), (10 * i, 80, 200 - 10 * i)) for i in range(10)],
    }


def test_peak_memory_under_20_concurrent_hostile_uploads_stays_under_2_gb(server, hostile_files):
    """Finding 3: a 131 KB PNG cost +670 MB, six at once 4.5 GB, eight batch posts 5.2 GB."""
    assert max(len(v) for k, v in hostile_files.items() if k != "big_allowed") < 400_000
    calls, expect = [], []
    for i in range(8):  # refused from the header: nothing is decoded
        name = ["solid_rgb_png", "png_16_bit", "float_tiff"][i % 3]
        ext = ".tif" if name == "float_tiff" else ".png"
        calls.append(_upload(server, hostile_files[name], f"h{i}{ext}"))
        expect.append(413)
    for i in range(6):  # allowed and decoded, a few at a time (HEMATOVISION_IMAGE_WORKERS)
        calls.append(_upload(server, hostile_files["big_allowed"][i], f"big{i}.png"))
        expect.append(201)
    for i in range(4):  # batch jobs of allowed big images, on the bounded job pool
        def batch(i=i):
            files = [("images", (f"b{i}.png", hostile_files["big_allowed"][6 + i], "image/png"))]
            return requests.post(f"{server.base}/api/v1/specimens/MEM-{i}/batch/",
                                 headers=server.headers("tech2"), files=files, timeout=600)

        calls.append(batch)
        expect.append(202)
    for i in range(2):  # and ordinary cells
        calls.append(_upload(server, _cell(500 + i), f"n{i}.png"))
        expect.append(201)
    assert len(calls) == 20
    answers = _together(calls)
    assert [r.status_code for r in answers] == expect, [(r.status_code, r.text[:120]) for r in answers]
    assert {r.json()["code"] for r in answers if r.status_code == 413} == {"image_too_large"}
    for r in answers:
        if r.status_code == 202:
            assert _wait_for_job(server, r.json()["id"], user="tech2")["state"] == "done"
    peak = server.peak_rss()
    print(f"\npeak RSS of the server worker under 20 concurrent hostile uploads: {peak / 2**20:.0f} MB")
    assert peak < 2 * GB


# ------------------------------------------------ 4: kept uploads filed once the database is back


def test_an_upload_kept_while_the_database_is_locked_is_filed_once_it_is_back(installation):
    """Finding 4: with SQLite write-locked, an upload answered 503 "kept"; it was still missing 60 s
    after the lock cleared (filed only at the next start), and a resend was stored twice."""
    server = _start(installation, HEMATOVISION_SQLITE_TIMEOUT="1", HEMATOVISION_SPOOL_RETRY_SECONDS="0.5")
    try:
        data = _cell(600)
        lock = sqlite3.connect(installation.var / "db.sqlite3", timeout=30, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # a writer that holds the lock, as in the attack
        try:
            kept = _upload(server, data, accession="ACC-KEPT")()
            resent = _upload(server, data, accession="ACC-KEPT")()
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert kept.status_code == resent.status_code == 503, (kept.text, resent.text)
        assert kept.json()["code"] == "database_unavailable"
        assert kept.headers["Retry-After"] == "5"
        assert resent.json()["reference"] == kept.json()["reference"]  # the resend found the kept upload

        rows = []
        deadline = time.monotonic() + 120  # filed by the retry loop, not by a restart
        while time.monotonic() < deadline and not rows:
            rows = installation.db(
                "SELECT c.id FROM classifier_classification c JOIN classifier_specimen s "
                "ON c.specimen_id = s.id WHERE s.accession = 'ACC-KEPT'"
            )
            time.sleep(0.3)
        assert len(rows) == 1
        again = _upload(server, data, accession="ACC-KEPT")()
        assert again.status_code == 200
        assert again.json()["id"] == rows[0][0]
        assert not list((installation.var / "media" / "spool").glob("*.bin"))
    finally:
        _stop(server)


# ---------------------------------------------------------------- 5: killed mid-staging


KILL_SCRIPT = """
import io, time, zipfile
from PIL import Image
from django.core.files.storage import FileSystemStorage
from accounts.models import User
from classifier.jobs import services as job_services

real_save = FileSystemStorage._save
def slow_save(self, name, content):  # a slow disk: the kill lands mid-staging
    saved = real_save(self, name, content)
    time.sleep(0.05)
    return saved
FileSystemStorage._save = slow_save
archive = io.BytesIO()
with zipfile.ZipFile(archive, "w") as zf:
    for i in range(200):
        image = io.BytesIO()
        Image.new("RGB", (64, 48), (i, 100, 255 - i)).save(image, "PNG")
        zf.writestr(f"c{i}.png", image.getvalue())
archive.seek(0)
archive.name = "kill.zip"
job_services.job_create(
    user=User.objects.get(username="tech"), accession="ACC-KILL", archive=archive, enqueue=False
)
print("committed")
"""


def test_a_staging_killed_mid_batch_leaves_nothing_that_cannot_be_found(installation):
    """Finding 5: kill -9 while a 300-entry ZIP was staged left 59 files with no row, still there
    after restart and resume_jobs; nothing could find or delete them."""
    media = installation.var / "media"
    staging = subprocess.Popen(
        [PY, "manage.py", "shell", "-c", KILL_SCRIPT], cwd=ROOT, env=installation.env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 300
    staged = []
    while time.monotonic() < deadline and len(staged) < 5 and staging.poll() is None:
        staged = [p for p in (media / "batches").glob("*/*") if p.is_file()]
        time.sleep(0.02)
    staging.send_signal(signal.SIGKILL)
    staging.wait(timeout=60)
    assert staging.returncode == -signal.SIGKILL, staging.stdout.read()
    staged = sorted(p for p in (media / "batches").glob("*/*") if p.is_file())
    assert len(staged) >= 5
    assert installation.db("SELECT count(*) FROM classifier_specimen WHERE accession = 'ACC-KILL'") == [
        (0,)
    ]

    # An old file that no row names (an upload killed before its commit) is an orphan too.
    stray = media / "cells" / "0123456789abcdef0123456789abcdef.png"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"stray")
    os.utime(stray, (time.time() - 7200, time.time() - 7200))

    listed = installation.manage("cleanup_orphans").stdout  # dry run: lists, removes nothing
    names = {line.split("\t")[0] for line in listed.splitlines() if "\t" in line}
    assert {p.relative_to(media).as_posix() for p in staged} <= names
    assert "cells/0123456789abcdef0123456789abcdef.png" in names
    assert "dry run, nothing removed" in listed
    assert all(p.exists() for p in staged)
    assert stray.exists()

    resumed = installation.manage("resume_jobs").stdout  # at start: crashed stagings are swept
    assert f"removed {len(staged)} file(s) left by a crashed batch staging" in resumed
    assert not [p for p in (media / "batches").rglob("*") if p.is_file()]
    assert not list((media / "staging").glob("*.lock"))
    assert stray.exists()  # resume_jobs removes only what a crashed staging left

    removed = installation.manage("cleanup_orphans", "--delete").stdout
    assert "removed 1 orphan file(s)" in removed
    assert not stray.exists()
    assert "0 orphan file(s)" in installation.manage("cleanup_orphans").stdout
