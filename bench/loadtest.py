"""Bounded load test on loopback: `python bench/loadtest.py [--users 20] [--seconds 60]`.

Starts a throw-away installation (temp database and media, one API user) under
gunicorn, then USERS concurrent clients each loop: upload a cell image through
the API with a unique external_id, then read the result back. Prints JSON with
throughput, p50/p95/p99 latency per operation and errors, and checks that every
accepted upload has exactly one result row. Exit status 1 if any request
errored or a result is missing or doubled.

``--hostile``: each client also sends, about one request in three, a hostile upload from the
second hardening round (issue 18): a 6300x6300 solid PNG, a 16-bit PNG and a float TIFF of the same
size (all small on the wire, huge decoded), a 3000x3000 PNG that is allowed and decoded, a text
file and a truncated PNG named .png, or a batch post of a big image. Any 5xx is an error; the
gunicorn workers' peak RSS (VmHWM) is reported. ``make loadtest-hostile`` runs it.
"""

import argparse
import io
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = sorted((ROOT / "ml" / "tests" / "fixtures" / "cells").glob("*.jpeg"))
PY = sys.executable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(values, q):
    if not values:
        return None
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def _manage(env, *args, **kw):
    return subprocess.run([PY, "manage.py", *args], cwd=ROOT, env=env, check=True, **kw)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker")
    parser.add_argument("--predictor", default="ml", choices=["ml", "fake"])
    parser.add_argument(
        "--backends", default="auto",
        help="comma-separated inference backends to run one after the other in this run "
        "(auto, keras, litert, naive = model.predict per image), e.g. auto,naive",
    )
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--hostile", action="store_true", help="mix hostile uploads in (issue 18)")
    args = parser.parse_args()
    reports = [run_once(args, backend.strip()) for backend in args.backends.split(",")]
    text = json.dumps(reports if len(reports) > 1 else reports[0], indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0 if all(r["ok"] for r in reports) else 1


def run_once(args, backend: str) -> dict:
    """One installation, one gunicorn, USERS clients for SECONDS; the report as a dict."""
    var = Path(tempfile.mkdtemp(prefix="hv-load-"))
    env = _install_env(var, args.predictor, backend)
    token = _install(env)
    port = _free_port()
    server = subprocess.Popen(
        [PY, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "-w", str(args.workers), "--threads",
         str(args.threads), "-k", "gthread", "--timeout", "120", "hematovision_site.wsgi"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    load = _Load(f"http://127.0.0.1:{port}", {"Authorization": f"Token {token}"}, args.hostile)
    try:
        load.wait_ready()
        warm_ids = load.warm(args.workers * 3)
        elapsed = load.run(args.users, args.seconds)
        peak_rss = _workers_peak_rss(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    stored = _stored(env)
    shutil.rmtree(var, ignore_errors=True)
    return _report(args, backend, load, stored, warm_ids, elapsed, peak_rss)


def _install_env(var: Path, predictor: str, backend: str) -> dict:
    env = {
        **os.environ,
        "HEMATOVISION_VAR_DIR": str(var),
        "HEMATOVISION_PREDICTOR": predictor,
        "HEMATOVISION_INFERENCE_BACKEND": backend,
        "HEMATOVISION_API_USER_RATE": "100000/min",  # capacity, not throttling, is measured
        "HEMATOVISION_API_UPLOAD_RATE": "100000/min",
        "HEMATOVISION_MAX_QUEUED_JOBS_PER_USER": "1000",
        "DJANGO_DEBUG": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    env.pop("DATABASE_URL", None)
    return env


def _install(env: dict) -> str:
    """Migrate the throw-away database and make the one API user; its token."""
    _manage(env, "migrate", "--noinput", stdout=subprocess.DEVNULL)
    make_user = (
        "from accounts.models import User; from django.contrib.auth.models import Group; "
        "from rest_framework.authtoken.models import Token; "
        "u = User.objects.create_user('load'); u.groups.add(Group.objects.get(name='Technologist')); "
        "print(Token.objects.create(user=u).key)"
    )
    return _manage(env, "shell", "-c", make_user, capture_output=True, text=True).stdout.split()[-1]


class _Load:
    """The clients: what they sent, what was accepted, how long each operation took."""

    def __init__(self, base: str, headers: dict, hostile: bool):
        self.base, self.headers = base, headers
        self.images = [p.read_bytes() for p in FIXTURES]
        self.hostile = _hostile_files() if hostile else {}
        self.lock = threading.Lock()
        self.lat: dict[str, list[float]] = {"upload": [], "read": []}
        self.errors: list[str] = []
        self.accepted: list[str] = []
        self.hostile_answers: dict[str, dict[int, int]] = {}
        self.deadline = 0.0

    def wait_ready(self) -> None:
        for _ in range(120):
            try:
                if requests.get(f"{self.base}/healthz", timeout=2).ok:
                    return
            except requests.ConnectionError:
                time.sleep(0.5)

    def warm(self, n: int) -> set[str]:
        """Warm every worker's model before the clock starts (first prediction loads it)."""
        warm_ids = set()
        for i in range(n):
            r = requests.post(f"{self.base}/api/v1/classifications/", headers=self.headers, timeout=300,
                              files={"image": ("w.jpeg", self.images[i % len(self.images)], "image/jpeg")},
                              data={"external_id": f"warm-{i}"})
            r.raise_for_status()
            warm_ids.add(f"warm-{i}")
        return warm_ids

    def run(self, users: int, seconds: float) -> float:
        self.deadline = time.monotonic() + seconds
        started = time.monotonic()
        with ThreadPoolExecutor(users) as pool:
            list(pool.map(self.client, range(users)))
        return time.monotonic() - started

    def send_hostile(self, session, rng) -> None:
        kind = rng.choice(sorted(self.hostile))
        name, data = self.hostile[kind]
        ext = uuid.uuid4().hex
        if kind == "batch_of_big":
            r = session.post(f"{self.base}/api/v1/specimens/H-{ext[:20]}/batch/", timeout=600,
                             files={"images": (name, data, "image/png")})
        else:
            r = session.post(f"{self.base}/api/v1/classifications/", timeout=600,
                             files={"image": (name, data, "application/octet-stream")},
                             data={"external_id": ext})
        with self.lock:
            counts = self.hostile_answers.setdefault(kind, {})
            counts[r.status_code] = counts.get(r.status_code, 0) + 1
            if r.status_code >= 500:
                self.errors.append(f"hostile {kind} {r.status_code}: {r.text[:200]}")
            elif r.status_code == 201:
                self.accepted.append(ext)

    def upload_and_read(self, session, rng) -> None:
        ext = uuid.uuid4().hex
        t0 = time.perf_counter()
        r = session.post(f"{self.base}/api/v1/classifications/", timeout=120,
                         files={"image": ("c.jpeg", rng.choice(self.images), "image/jpeg")},
                         data={"external_id": ext})
        t1 = time.perf_counter()
        if r.status_code != 201:
            raise RuntimeError(f"upload {r.status_code}: {r.text[:200]}")
        r2 = session.get(f"{self.base}/api/v1/classifications/{r.json()['id']}/", timeout=60)
        t2 = time.perf_counter()
        if r2.status_code != 200 or r2.json()["external_id"] != ext:
            raise RuntimeError(f"read {r2.status_code}: {r2.text[:200]}")
        with self.lock:
            self.accepted.append(ext)
            self.lat["upload"].append(t1 - t0)
            self.lat["read"].append(t2 - t1)

    def client(self, n: int) -> None:
        session = requests.Session()
        session.headers.update(self.headers)
        rng = random.Random(n)
        while time.monotonic() < self.deadline:
            step = self.send_hostile if self.hostile and rng.random() < 0.33 else self.upload_and_read
            try:
                step(session, rng)
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                with self.lock:
                    self.errors.append(f"hostile: {exc}" if step == self.send_hostile else str(exc))


def _stored(env: dict) -> dict:
    """Every classification's external_id in the database, and how many ids appear twice."""
    check = (
        "import json; from classifier.models import Classification as C; "
        "from django.db.models import Count; "
        "rows = list(C.objects.values_list('external_id', flat=True)); "
        "dups = C.objects.values('external_id').annotate(n=Count('id')).filter(n__gt=1).count(); "
        "print(json.dumps({'rows': rows, 'dups': dups}))"
    )
    out = _manage(env, "shell", "-c", check, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _report(args, backend, load: _Load, stored: dict, warm_ids: set, elapsed: float, peak_rss) -> dict:
    # Batch jobs' cells (hostile batch posts) carry their own ids; every single upload is counted.
    rows = [r for r in stored["rows"] if r not in warm_ids and not (r or "").startswith(("bat-", "fld-"))]
    accepted, errors = load.accepted, load.errors
    missing = sorted(set(accepted) - set(rows))
    return {
        "users": args.users,
        "seconds": round(elapsed, 1),
        "predictor": args.predictor,
        "backend": backend,
        "gunicorn": {"workers": args.workers, "threads": args.threads},
        "requests": 2 * len(accepted) + len(errors),
        "uploads_accepted": len(accepted),
        "throughput_uploads_per_s": round(len(accepted) / elapsed, 2),
        "throughput_requests_per_s": round(2 * len(accepted) / elapsed, 2),
        "latency_ms": {
            op: {"p50": _pct(v, 0.5), "p95": _pct(v, 0.95), "p99": _pct(v, 0.99),
                 "mean": round(1000 * statistics.fmean(v), 1) if v else None}
            for op, v in load.lat.items()
        },
        "peak_rss_mb": peak_rss,
        "hostile_answers": {
            k: {str(c): n for c, n in sorted(v.items())} for k, v in load.hostile_answers.items()
        },
        "errors": len(errors),
        "error_examples": errors[:5],
        "result_rows": len(rows),
        "missing_results": len(missing),
        "duplicate_results": stored["dups"],
        "ok": not errors and not missing and stored["dups"] == 0 and len(rows) == len(accepted),
    }


def _png(mode, size, value) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size, value).save(buffer, format="PNG")
    return buffer.getvalue()


def _hostile_files() -> dict[str, tuple[str, bytes]]:
    """The attack's files (issue 18): small on the wire, costly decoded."""
    from PIL import Image

    tiff = io.BytesIO()
    Image.new("F", (6300, 6300), 0.5).save(tiff, format="TIFF", compression="tiff_deflate")
    big = _png("RGB", (3000, 3000), (180, 40, 90))
    return {
        "solid_rgb_6300": ("solid.png", _png("RGB", (6300, 6300), (200, 30, 40))),
        "png_16_bit_6300": ("deep.png", _png("I;16", (6300, 6300), 1000)),
        "float_tiff_6300": ("float.tif", tiff.getvalue()),
        "allowed_big_3000": ("big.png", big),
        "text_named_png": ("notes.png", b"not an image at all\n" * 100),
        "truncated_png": ("cut.png", big[: len(big) // 2]),
        "batch_of_big": ("big.png", big),
    }


def _workers_peak_rss(pid: int) -> dict | None:
    """Peak RSS (VmHWM, MB) of the gunicorn arbiter's worker processes (Linux /proc)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        peaks = []
        for child in children:
            for line in Path(f"/proc/{child}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(round(int(line.split()[1]) / 1024))
        return {"max_worker": max(peaks), "workers": peaks}
    except (OSError, ValueError):
        return None


if __name__ == "__main__":
    sys.exit(main())
