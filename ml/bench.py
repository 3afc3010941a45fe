"""``python -m ml.bench``: serving figures of the shipped model and of the naive ways, in one run (JSON).

Each method runs in its own fresh child process, one after the other, so that
cold load (importing TensorFlow included) and peak RSS (``ru_maxrss``) are
per method:

- ``served``: ``load_predictor(backend="auto")`` (LiteRT + XNNPACK when its
  verified export works, else Keras): locator + 4-view TTA + calibration + flags;
  also ``gradcam_png``, the heat map the web app draws for each upload;
- ``keras``: the same pipeline through a compiled ``tf.function``;
- ``naive_single_view``: the original Flask app: decode, resize the whole image,
  ``model.predict`` on one image per call, no locator, no TTA;
- ``naive_tta``: the naive equivalent of the served pipeline
  (``load_predictor(backend="naive")``: ``model.predict`` on each image's 4 views).

Then ``interleaved``: single-image latency of ``served``, ``naive_single_view``
and ``naive_tta`` in one process, calls alternating round-robin, so that load from
other jobs on a shared machine hits every way alike (``speedup_p50_interleaved``).

``python -m ml.bench --against OLD/hematovision_wbc.keras [--model NEW]``: instead, the served
latency of two bundles in one process, calls alternating the same way, so that a change of bundle
is timed against the one it replaces at the same moment (a previous shipped bundle's three files:
``git show REV:ml/artifacts/FILE``).

The LiteRT export is made (or found in the cache) before the timed runs;
``litert_export`` says which. Speedups are ratios of single-image p50 latency.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ml.predictor import DEFAULT_MODEL_PATH, load_predictor

FIXTURES = Path(__file__).resolve().parent / "tests" / "fixtures" / "cells"
METHODS = ("served", "keras", "naive_single_view", "naive_tta")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _pcts(xs) -> dict:
    xs = np.asarray(xs) * 1000.0
    return {"p50_ms": float(np.percentile(xs, 50)), "p95_ms": float(np.percentile(xs, 95)), "n": int(len(xs))}


def _latencies(fn, images: list[bytes], n: int) -> list[float]:
    """Seconds of each of ``n`` calls of ``fn`` on the images in turn (after one warm-up call)."""
    fn(images[0])
    lat = []
    for i in range(n):
        t = time.perf_counter()
        fn(images[i % len(images)])
        lat.append(time.perf_counter() - t)
    return lat


def _images() -> list[bytes]:
    return [p.read_bytes() for p in sorted(FIXTURES.glob("*.jpeg"))]


def _naive_single_view(model: str | None):
    """The original Flask app's way: decode, resize the whole image, ``model.predict`` on it."""
    import keras  # Keras and PIL: imported in the child process that measures this way
    from PIL import Image

    path = Path(model) if model else DEFAULT_MODEL_PATH
    m = keras.saving.load_model(path, compile=False)
    size = int(json.loads((path.parent / "model_card.json").read_text())["input"]["input_size"])

    def one(b):
        im = Image.open(io.BytesIO(b)).convert("RGB").resize((size, size))
        return m.predict(np.asarray(im, np.float32)[None], verbose=0)

    return one


def _interleave(fns: dict, images: list[bytes], n: int) -> dict:
    """Single-image latency of each of ``fns`` in this process, ``n`` calls each, interleaved
    round-robin (rotating order) on the same images, so that load from other jobs hits all alike."""
    for f in fns.values():
        f(images[0])
    lat: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for i in range(n):
        im = images[i % len(images)]
        for k in names[i % len(names) :] + names[: i % len(names)]:
            t = time.perf_counter()
            fns[k](im)
            lat[k].append(time.perf_counter() - t)
    return {k: _pcts(v) for k, v in lat.items()}


def run_interleaved(model: str | None, n: int) -> dict:
    """The served way and both naive ways in ONE process (``_interleave``)."""
    served = load_predictor(model, backend="auto")
    naive_tta = load_predictor(model, backend="naive")
    fns = {
        "served": served.predict_one,
        "naive_single_view": _naive_single_view(model),
        "naive_tta": naive_tta.predict_one,
    }
    return _interleave(fns, _images(), n) | {"served_backend": served.backend}


def run_against(model: str | None, against: str, n: int) -> dict:
    """The served way of two bundles in ONE process (``_interleave``), keyed by version."""
    preds = [load_predictor(against, backend="auto"), load_predictor(model, backend="auto")]
    if preds[0].version == preds[1].version:
        raise ValueError(f"both are bundle {preds[0].version}: nothing to compare")
    times = _interleave({p.version: p.predict_one for p in preds}, _images(), n)
    return {p.version: times[p.version] | {"backend": p.backend} for p in preds}


def run_method(method: str, model: str | None, n: int, batch: int) -> dict:
    """Figures of one method, measured in this (fresh) process."""
    images = _images()
    out: dict = {"method": method}
    t = time.perf_counter()
    if method == "naive_single_view":
        one = _naive_single_view(model)
        one(images[0])
        out["cold_load_s"] = time.perf_counter() - t
        lat = _latencies(one, images, n)
        out["single_image"] = _pcts(lat)
        out["batch_throughput_img_s"] = 1.0 / float(np.mean(lat))  # one call per image, as the Flask app
        out["batch_size"] = 1
    else:
        backend = {"served": "auto", "keras": "keras", "naive_tta": "naive"}[method]
        pred = load_predictor(model, backend=backend)
        pred.predict_one(images[0])  # includes tracing / delegate set-up
        out["cold_load_s"] = time.perf_counter() - t
        out["backend"] = pred.backend
        out["model_version"] = pred.version
        out["tta_views"] = pred.tta_views
        out["single_image"] = _pcts(_latencies(pred.predict_one, images, n))
        if method == "served":  # the heat map the web app draws for every upload (Keras, compiled once)
            out["gradcam_png"] = _pcts(_latencies(pred.gradcam_png, images, n))
        many = [images[i % len(images)] for i in range(batch)]
        pred.predict(many[:4])
        t = time.perf_counter()
        pred.predict(many)
        out["batch_throughput_img_s"] = len(many) / (time.perf_counter() - t)
        out["batch_size"] = batch
    out["peak_rss_mb"] = _rss_mb()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=40, help="single-image calls per method")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--method", choices=METHODS + ("interleaved",), help=argparse.SUPPRESS)  # child
    ap.add_argument("--against", default=None, help="another bundle's model file: both served, alternating")
    args = ap.parse_args(argv)
    if args.against:
        try:
            print(json.dumps(run_against(args.model, args.against, args.n), indent=2))
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.method == "interleaved":
        print(json.dumps(run_interleaved(args.model, args.n)))
        return 0
    if args.method:
        print(json.dumps(run_method(args.method, args.model, args.n, args.batch)))
        return 0
    export_info = _export(args.model)  # first: the methods load the cached export
    res = {method: _child(method, args) for method in METHODS + ("interleaved",)}
    out: dict = {
        "machine": {"cpus": os.cpu_count()},
        "litert_export": export_info,
        **res,
    }
    out["speedup_p50"] = _speedups(res)  # from the separate processes, run one after the other
    out["speedup_p50_interleaved"] = _speedups(res.get("interleaved", {}))  # same process, alternating calls
    out["note"] = (
        "each method in its own fresh process, one after the other (cold load includes importing "
        "TensorFlow); single_image = predict_one on fixture JPEGs incl. decoding, locating and cropping"
    )
    print(json.dumps(out, indent=2))
    return 0


def _export(model: str | None) -> dict:
    """Run ``ml.export`` (the LiteRT export, or its cached file) and time it."""
    t = time.perf_counter()
    ex = subprocess.run(
        [sys.executable, "-m", "ml.export"] + (["--model", model] if model else []),
        capture_output=True,
        text=True,
    )
    export_info = {"seconds": round(time.perf_counter() - t, 2), "rc": ex.returncode}
    if ex.returncode == 0:
        meta = json.loads(ex.stdout[ex.stdout.index("{") :])
        export_info.update(
            cache_file=meta["path"],
            exported_in_s=meta.get("export_s"),
            max_abs_diff_vs_keras=meta.get("max_abs_diff_vs_keras"),
        )
    return export_info


def _child(method: str, args: argparse.Namespace) -> dict:
    """One method measured in a fresh process (``--method``): its figures, or its last error line."""
    cmd = [sys.executable, "-m", "ml.bench", "--n", str(args.n), "--batch", str(args.batch)]
    if args.model:
        cmd += ["--model", args.model]
    r = subprocess.run(cmd + ["--method", method], capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def _p50(src: dict, k: str):
    return src.get(k, {}).get("single_image", src.get(k, {})).get("p50_ms")


def _speedups(src: dict) -> dict:
    """Median single-image latency of each slower method over the served one's."""
    fast = _p50(src, "served")
    return {
        f"vs_{k}": (_p50(src, k) / fast if fast and _p50(src, k) else None)
        for k in ("naive_single_view", "naive_tta", "keras")
        if k in src
    }


if __name__ == "__main__":
    sys.exit(main())
