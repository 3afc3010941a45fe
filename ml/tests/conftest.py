from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "cells"


@pytest.fixture(scope="session")
def cell_images() -> dict[str, bytes]:
    """Fixture cell JPEGs: {"NEUTROPHIL_1": bytes, ...}."""
    return {p.stem: p.read_bytes() for p in sorted(FIXTURES.glob("*.jpeg"))}


@pytest.fixture(scope="session")
def predictor():
    from ml.predictor import DEFAULT_MODEL_PATH, load_predictor

    if not DEFAULT_MODEL_PATH.exists():
        pytest.fail(f"shipped model missing: {DEFAULT_MODEL_PATH}")
    return load_predictor()
