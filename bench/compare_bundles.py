"""Served latency of two bundles in one process, calls alternating, on the test fixtures' cells.

A change of bundle (e.g. another out-of-distribution score) is timed against the one it replaces on
the same machine at the same moment, so that the machine's speed that day cancels out::

    .venv/bin/python bench/compare_bundles.py OLD_DIR/hematovision_wbc.keras [NEW (default: shipped)]

Extract a previous shipped bundle with ``git show REV:ml/artifacts/FILE > DIR/FILE`` for its three
files (model, card, ood_stats.npz).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ml.predictor import load_predictor  # noqa: E402  (after the path: run as a script)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a", help="model file of the first bundle")
    ap.add_argument("b", nargs="?", default=None, help="model file of the second (default: shipped)")
    ap.add_argument("--n", type=int, default=120, help="calls of each")
    args = ap.parse_args(argv)
    images = [p.read_bytes() for p in sorted((ROOT / "ml" / "tests" / "fixtures" / "cells").glob("*.jpeg"))]
    preds = [load_predictor(args.a, backend="auto"), load_predictor(args.b, backend="auto")]
    for p in preds:
        p.predict_one(images[0])
    lat: list[list[float]] = [[], []]
    for i in range(args.n):
        im = images[i % len(images)]
        for j in (0, 1) if i % 2 else (1, 0):
            t = time.perf_counter()
            preds[j].predict_one(im)
            lat[j].append(time.perf_counter() - t)
    out = {
        p.version: {"backend": p.backend, "p50_ms": float(np.median(lt) * 1e3), "n": len(lt)}
        for p, lt in zip(preds, lat, strict=True)
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
