"""Measure how often the white-cell locator finds the cells ``ORIGINAL/labels.csv`` lists."""

import csv
import json
import re
from pathlib import Path

import numpy as np
from django.core.management.base import BaseCommand, CommandError
from PIL import Image

DEFAULT_DIR = Path(__file__).resolve().parents[4] / "shared" / "datasets" / "bccd-wbc" / "ORIGINAL"


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
    from ml import locate

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
        rgb = np.asarray(Image.open(path).convert("RGB"))
        found = len(locate.locate_cells(rgb))
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


class Command(BaseCommand):
    help = (
        "Run ml.locate on the whole fields of ORIGINAL/ and compare with labels.csv: hit rate (an image "
        "with listed white cells where at least one is found), exact count rate and cell recall."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dataset", type=Path, default=DEFAULT_DIR, help="the ORIGINAL/ folder")
        parser.add_argument("--limit", type=int, default=None, help="only the first N images")
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def handle(self, *args, dataset: Path, limit, json: bool, **options):
        if not (dataset / "labels.csv").exists():
            raise CommandError(f"{dataset} has no labels.csv; pass --dataset path/to/ORIGINAL.")
        result = measure(dataset, limit)
        if json:
            self.stdout.write(_json(result))
            return
        self.stdout.write(
            f"{result['images']} fields, {result['images_with_listed_cells']} with listed white cells "
            f"({result['listed_cells']} cells)\n"
            f"hit rate (>= 1 cell found): {result['hit_rate_percent']}%\n"
            f"exact count: {result['exact_count_percent']}%\n"
            f"cell recall (min(found, listed) / listed): {result['cell_recall_percent']}%\n"
            f"extra boxes beyond the listed count: {result['extra_boxes']}\n"
            f"fields with no listed cell: {result['images_without_listed_cells']}, "
            f"of which none found: {result['none_found_where_none_listed']}\n"
            f"missed: {', '.join(result['missed_images']) or 'none'}"
        )


def _json(result: dict) -> str:
    return json.dumps(result, indent=2)
