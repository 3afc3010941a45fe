"""How often the field path's white-cell locator finds the cells ``ORIGINAL/labels.csv`` lists.

The locator is the one whole fields go through (``ml.normalize.analyse``, as
``Predictor.field_cells`` calls it): hit rate (a field with listed white cells where at least one is
found), exact count rate, cell recall, extra boxes.

    python -m ml.hitrate [--originals ../shared/datasets/bccd-wbc/ORIGINAL] [--limit N] [--json]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ml import normalize

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "bccd-wbc" / "ORIGINAL"
MAX_CELLS = 10  # as classifier.fields asks for


def read_labels(path: Path) -> dict[int, list[str]]:
    """Image number -> the white-cell types listed for it (empty list: none listed)."""
    labels: dict[int, list[str]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            number = (row.get("Image") or "").strip()
            if not number.isdigit():
                continue
            kinds = [k.strip().upper() for k in re.split(r"[,;]", row.get("Category") or "") if k.strip()]
            labels[int(number)] = kinds
    return labels


def measure(directory: Path, limit: int | None = None) -> dict:
    """Per-image hit (at least one cell found where cells are listed), exact count, cell recall."""

    labels = read_labels(directory / "labels.csv")
    images = with_cells = hits = exact = expected_total = found_matched = 0
    no_cell_images = no_cell_quiet = 0
    extra = 0
    misses = []
    for number in sorted(labels):
        path = directory / f"BloodImage_{number:05d}.jpg"
        if not path.exists():
            continue
        if limit and images >= limit:
            break
        images += 1
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
        found = len(normalize.analyse(rgb, max_cells=MAX_CELLS).boxes)
        expected = len(labels[number])
        if expected == 0:
            no_cell_images += 1
            no_cell_quiet += found == 0
            continue
        with_cells += 1
        expected_total += expected
        hits += found >= 1
        exact += found == expected
        found_matched += min(found, expected)
        extra += max(0, found - expected)
        if found == 0:
            misses.append(path.name)

    def pct(a, b):
        return round(100.0 * a / b, 1) if b else None

    return {
        "images": images,
        "images_with_listed_cells": with_cells,
        "hit_rate_percent": pct(hits, with_cells),
        "exact_count_percent": pct(exact, with_cells),
        "cell_recall_percent": pct(found_matched, expected_total),
        "listed_cells": expected_total,
        "extra_boxes": extra,
        "images_without_listed_cells": no_cell_images,
        "none_found_where_none_listed": no_cell_quiet,
        "missed_images": misses,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--originals", type=Path, default=DEFAULT_DIR, help="the ORIGINAL/ folder")
    ap.add_argument("--limit", type=int, default=None, help="only the first N images")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    a = ap.parse_args(argv)
    if not (a.originals / "labels.csv").exists():
        print(f"error: {a.originals} has no labels.csv; pass --originals path/to/ORIGINAL", file=sys.stderr)
        return 2
    r = measure(a.originals, a.limit)
    if a.json:
        print(json.dumps(r, indent=2))
        return 0
    print(
        f"{r['images']} fields, {r['images_with_listed_cells']} with listed white cells "
        f"({r['listed_cells']} cells)\n"
        f"hit rate (>= 1 cell found): {r['hit_rate_percent']}%\n"
        f"exact count: {r['exact_count_percent']}%\n"
        f"cell recall (min(found, listed) / listed): {r['cell_recall_percent']}%\n"
        f"extra boxes beyond the listed count: {r['extra_boxes']}\n"
        f"fields with no listed cell: {r['images_without_listed_cells']}, "
        f"of which none found: {r['none_found_where_none_listed']}\n"
        f"missed: {', '.join(r['missed_images']) or 'none'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
