"""ml.hitrate: the field path's locator against ORIGINAL/labels.csv."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from ml import hitrate


def _field(centres=((160, 120), (480, 330)), radius=22) -> bytes:
    """A synthetic 640x480 smear: pink background, a dark purple nucleus at each centre."""
    rng = np.random.default_rng(1)
    pixels = np.empty((480, 640, 3), dtype=np.int16)
    pixels[...] = (232, 184, 196)
    yy, xx = np.mgrid[0:480, 0:640]
    for cx, cy in centres:
        pixels[(xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2] = (92, 40, 170)
    pixels = np.clip(pixels + rng.integers(-6, 7, size=pixels.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_hitrate_on_synthetic_fields(tmp_path, capsys):
    (tmp_path / "BloodImage_00000.jpg").write_bytes(_field(centres=((200, 200),)))
    (tmp_path / "BloodImage_00001.jpg").write_bytes(_field())
    (tmp_path / "BloodImage_00002.jpg").write_bytes(_field(centres=()))
    (tmp_path / "labels.csv").write_text(
        ',Image,Category\n,0,NEUTROPHIL\n,1,"NEUTROPHIL, EOSINOPHIL"\n,2,LYMPHOCYTE\n,3,MONOCYTE\n'
    )
    assert hitrate.main(["--originals", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "images": 3,
        "images_with_listed_cells": 3,
        "hit_rate_percent": 66.7,
        "exact_count_percent": 66.7,
        "cell_recall_percent": 75.0,
        "listed_cells": 4,
        "extra_boxes": 0,
        "images_without_listed_cells": 0,
        "none_found_where_none_listed": 0,
        "missed_images": ["BloodImage_00002.jpg"],
    }


def test_hitrate_without_labels_is_one_line(tmp_path, capsys):
    assert hitrate.main(["--originals", str(tmp_path)]) == 2
    assert (
        capsys.readouterr().err == f"error: {tmp_path} has no labels.csv; pass --originals path/to/ORIGINAL\n"
    )


def test_hitrate_on_the_original_fields():
    if not (hitrate.DEFAULT_DIR / "labels.csv").exists():
        pytest.fail(f"the BCCD ORIGINAL folder is missing: {hitrate.DEFAULT_DIR}")
    result = hitrate.measure(hitrate.DEFAULT_DIR, limit=20)
    assert result["images"] == 20
    assert result["hit_rate_percent"] >= 95.0
