"""Whole camera fields read as the portal's field path reads them (command-line tool).

BCCD's TEST images are augmented copies of 71 cells; ``TEST_SIMPLE`` holds each once, un-augmented,
at half the 640x480 camera resolution. Each is matched to its ``ORIGINAL/`` source field (the
nearest field by pixels at 80x60; a match must be far closer than any other field). Every matched
field is then read whole: every white cell located (``Predictor.field_cells``) and each classified
(``Predictor.predict``), as ``classifier.fields`` does for an uploaded field. Reported: the share of
fields with a cell located, and the share whose listed class is among the located cells' classes
(classified cells only; and counting flagged cells' top class), beside the single-cell path on the
same 71 TEST_SIMPLE images.

    python -m ml.fieldeval --bccd ../shared/datasets/bccd-wbc [--model DIR/hematovision_wbc.keras] [--json F]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ml.data import read_original_labels
from ml.predictor import load_predictor
from ml.taxonomy import CLASSES

THUMB = (80, 60)


def _thumb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L").resize(THUMB, Image.Resampling.BILINEAR), np.float32)


def match_fields(bccd: Path) -> list[dict]:
    """``[{simple, label, field, category, mse, runner_up}]`` for each TEST_SIMPLE image that matches a
    source field unambiguously (best squared error under half the second best)."""
    fields = read_original_labels(bccd / "ORIGINAL")
    nums = sorted(fields)
    thumbs = np.stack([_thumb(bccd / "ORIGINAL" / f"BloodImage_{n:05d}.jpg") for n in nums])
    out = []
    for cls in CLASSES:
        d = bccd / "TEST_SIMPLE" / cls
        for p in sorted(d.glob("*.jp*g")) if d.is_dir() else []:
            err = ((thumbs - _thumb(p)) ** 2).mean((1, 2))
            best, second = np.argsort(err)[:2]
            if err[best] < 0.5 * err[second]:
                out.append(
                    {
                        "simple": str(p),
                        "label": cls,
                        "field": int(nums[best]),
                        "category": fields[nums[best]],
                        "mse": float(err[best]),
                        "runner_up": float(err[second]),
                    }
                )
    return out


def evaluate(bccd: Path, model_path=None, log=print) -> dict:
    pred = load_predictor(model_path, backend="keras")
    matches = match_fields(bccd)
    rows = []
    for m in matches:
        with Image.open(m["simple"]) as im:
            single = pred.predict_one(np.asarray(im.convert("RGB")))
        with Image.open(bccd / "ORIGINAL" / f"BloodImage_{m['field']:05d}.jpg") as im:
            field = np.asarray(im.convert("RGB"))
        cells = pred.field_cells(field)
        preds = pred.predict([c for _, c in cells]) if cells else []
        rows.append(
            m
            | {
                "single_cell": single.label if single.status == "classified" else None,
                "single_cell_top": single.label,
                "cells": [
                    {
                        "box": list(b),
                        "label": p.label,
                        "status": p.status,
                        "confidence": round(p.confidence, 3),
                    }
                    for (b, _), p in zip(cells, preds, strict=True)
                ],
            }
        )
    n = len(rows)

    def share(f):
        return float(np.mean([f(r) for r in rows])) if n else None

    res = {
        "model_version": pred.version,
        "test_simple_images": sum(1 for c in CLASSES for _ in (bccd / "TEST_SIMPLE" / c).glob("*.jp*g"))
        if (bccd / "TEST_SIMPLE").is_dir()
        else 0,
        "matched_fields": n,
        "located": share(lambda r: bool(r["cells"])),
        "listed_class_among_classified_cells": share(
            lambda r: r["label"] in {c["label"] for c in r["cells"] if c["status"] == "classified"}
        ),
        "listed_class_among_cells_top_class": share(lambda r: r["label"] in {c["label"] for c in r["cells"]}),
        "single_cell_correct": share(lambda r: r["single_cell"] == r["label"]),
        "single_cell_flagged": share(lambda r: r["single_cell"] is None),
        "fields": rows,
        "command": "python -m ml.fieldeval " + " ".join(sys.argv[1:]),
    }
    log(
        f"{n} TEST_SIMPLE cells matched to ORIGINAL fields; located {res['located']:.1%}; listed class among "
        f"classified cells {res['listed_class_among_classified_cells']:.1%} (any cell's top class "
        f"{res['listed_class_among_cells_top_class']:.1%}); "
        f"single-cell path correct {res['single_cell_correct']:.1%}, "
        f"flagged {res['single_cell_flagged']:.1%}"
    )
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bccd", required=True, help="BCCD folder (TEST_SIMPLE/ and ORIGINAL/)")
    ap.add_argument("--model", default=None, help="model file (default: the shipped bundle)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    res = evaluate(Path(a.bccd), a.model)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
