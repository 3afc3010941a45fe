"""Reference cells shown beside the cell a reviewer judges: a few licensed images per class.

The images live in ``static/reference/<code in lower case>/`` with their source and licence in
``static/reference/README.md``; a class without a folder has no reference image, and the review page
says so instead of showing another class's cell.
"""

from __future__ import annotations

import functools
from pathlib import Path

from django.conf import settings
from django.templatetags.static import static

from classifier.cells import classes

FOLDER = "reference"
ATTRIBUTION = (
    "Reference cells: PBC dataset (Acevedo et al. 2020, Data in Brief 30:105474), CC BY 4.0; "
    "cropped and resized."
)


@functools.lru_cache(maxsize=1)
def _files() -> dict[str, tuple[str, ...]]:
    """Class code -> static paths of its reference images (read once per process)."""
    root = Path(settings.BASE_DIR) / "static" / FOLDER
    found = {}
    for cell in classes.TABLE:
        folder = root / cell.code.lower()
        if folder.is_dir():
            names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            found[cell.code] = tuple(f"{FOLDER}/{cell.code.lower()}/{name}" for name in names)
    return found


def for_class(code: str) -> tuple[str, ...]:
    """Static paths of ``code``'s reference images; empty when none is licensed for it."""
    return _files().get(code, ())


def urls() -> dict[str, list[str]]:
    """Class code -> reference image URLs, for every class of the table (empty lists included)."""
    return {cell.code: [static(path) for path in for_class(cell.code)] for cell in classes.TABLE}
