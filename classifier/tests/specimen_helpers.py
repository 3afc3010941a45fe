"""Shared helpers for the specimen, batch-job and report tests."""

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FIXTURE_CELLS = Path(__file__).resolve().parents[2] / "ml" / "tests" / "fixtures" / "cells"
COLOURS = {"EOSINOPHIL": (200, 60, 60), "LYMPHOCYTE": (60, 200, 60), "MONOCYTE": (60, 60, 200)}


def cell_png(label: str = "EOSINOPHIL", seed: int = 0, size=(64, 48)) -> bytes:
    """A distinct small image that the fake predictor labels ``label`` (by dominant colour)."""
    rng = np.random.default_rng(seed)
    base = np.array(COLOURS[label], dtype=np.int16)
    pixels = np.clip(base + rng.integers(-15, 16, size=(size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def field_jpeg(centres=((160, 120), (480, 330)), radius=22, size=(640, 480)) -> bytes:
    """A synthetic 640x480 smear: pink background, a dark purple nucleus at each centre."""
    rng = np.random.default_rng(1)
    w, h = size
    pixels = np.empty((h, w, 3), dtype=np.int16)
    pixels[...] = (232, 184, 196)
    yy, xx = np.mgrid[0:h, 0:w]
    for cx, cy in centres:
        pixels[(xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2] = (92, 40, 170)
    pixels = np.clip(pixels + rng.integers(-6, 7, size=pixels.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def make_zip(entries: dict[str, bytes]) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in entries.items():
            if name.endswith("/"):
                zf.writestr(zipfile.ZipInfo(name), b"")
            else:
                zf.writestr(name, data)
    buffer.seek(0)
    buffer.name = "batch.zip"
    return buffer


def media_files(settings, folder: str) -> list[Path]:
    root = Path(settings.MEDIA_ROOT) / folder
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
def sync_jobs(settings):
    """Jobs run right away in the committing thread (no broker, no background thread)."""
    settings.CELERY_BROKER_URL = ""
    settings.HEMATOVISION_JOBS_IN_THREAD = False
    return settings
