"""Stored files: the display name kept for an upload, and deleting files that no row will name."""

import logging
from pathlib import PurePath

from django.core.files.storage import default_storage

logger = logging.getLogger(__name__)


def clean_filename(name: str) -> str:
    """Keep only the base name, printable and at most 255 characters, for display."""
    base = PurePath(name.replace("\\", "/")).name if name else ""
    base = "".join(ch for ch in base if ch.isprintable())
    return base[-255:]


def delete_files(*names: str) -> None:
    for name in names:
        if name:
            try:
                default_storage.delete(name)
            except OSError:  # already gone; nothing to leak
                logger.warning("could not delete stored file %s", name)
