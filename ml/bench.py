"""``python -m ml.bench``: serving figures of the shipped model, and of the naive way, in one run (JSON).

Cold load, single-image latency p50/p95 and batch throughput through
``Predictor`` (locator + TTA + calibration), then the naive way the original
Flask app did it: ``model.predict`` on one image per call (no TTA). Peak RSS
is read from the OS (``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parent / "tests" / "fixtures" / "cells"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _pcts(xs) -> dict:
    xs = np.asarray(xs) * 1000.0
    return {"p50_ms": float(np.percentile(xs, 50)), "p95_ms": float(np.percentile(xs, 95)), "n": int(len(xs))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=30, help="single-image calls per method")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args(argv)
    images = [p.read_bytes() for p in sorted(FIXTURES.glob("*.jpeg"))]
    out = {"rss_before_mb": _rss_mb()}
    t = time.perf_counter()
    from ml.predictor import load_predictor

    pred = load_predictor(args.model)
    pred.predict_one(images[0])  # includes tracing the inference function
    out["cold_load_s"] = time.perf_counter() - t
    out["model_version"] = pred.version
    out["tta_views"] = pred.tta_views
    lat = []
    for i in range(args.n):
        t = time.perf_counter()
        pred.predict_one(images[i % len(images)])
        lat.append(time.perf_counter() - t)
    out["single_image"] = _pcts(lat)
    batch = [images[i % len(images)] for i in range(args.batch)]
    pred.predict(batch)
    t = time.perf_counter()
    reps = 2
    for _ in range(reps):
        pred.predict(batch)
    out["batch_throughput_img_s"] = reps * len(batch) / (time.perf_counter() - t)
    out["batch_size"] = args.batch
    out["peak_rss_mb"] = _rss_mb()

    # The naive way: model.predict on one decoded, resized image per call (no locator, no TTA).
    import io

    import keras
    from PIL import Image

    t = time.perf_counter()
    naive_model = keras.saving.load_model(pred.model_path, compile=False)
    x0 = np.asarray(
        Image.open(io.BytesIO(images[0])).convert("RGB").resize((pred.input_size,) * 2), np.float32
    )
    naive_model.predict(x0[None], verbose=0)
    naive = {"cold_load_s": time.perf_counter() - t}
    lat = []
    for i in range(args.n):
        t = time.perf_counter()
        im = Image.open(io.BytesIO(images[i % len(images)])).convert("RGB").resize((pred.input_size,) * 2)
        naive_model.predict(np.asarray(im, np.float32)[None], verbose=0)
        lat.append(time.perf_counter() - t)
    naive["single_image"] = _pcts(lat)
    naive["batch_throughput_img_s"] = 1.0 / float(np.mean(lat))  # one call per image
    naive["peak_rss_mb"] = _rss_mb()
    out["naive_model_predict"] = naive
    out["note"] = (
        "peak_rss_mb is the process high-water mark; the naive figures run after the predictor in the "
        "same process, so its RSS includes both models"
    )
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
