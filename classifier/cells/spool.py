"""The spool: uploads kept on disk while the database could not take them.

Storage only (the files and their metadata, finding a kept upload again); filing them is
``cells.services.classification_ingest_spool``.
"""

import json
import logging
import uuid
from datetime import timedelta

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import OperationalError
from django.utils import timezone

from classifier import files
from classifier.models import Classification

logger = logging.getLogger(__name__)


SPOOL_DIR = "spool"


SPOOL_PREFIX = "spool-"


class UploadSpooled(OperationalError):
    """The database failed mid-upload; the image was kept in the spool under ``reference``."""

    def __init__(self, reference: str):
        super().__init__(f"database unavailable; upload kept as {reference}")
        self.reference = reference


def spool_entries() -> list[tuple[str, dict]]:
    """``(reference, meta)`` of every kept upload, oldest first (the folder and the files may vanish
    while another thread files them)."""
    if not default_storage.exists(SPOOL_DIR):
        return []
    entries = []
    for name in sorted(default_storage.listdir(SPOOL_DIR)[1]):
        if not name.endswith(".json"):
            continue
        try:
            with default_storage.open(f"{SPOOL_DIR}/{name}") as handle:
                meta = json.load(handle)
        except (OSError, ValueError):
            continue
        entries.append((name.removesuffix(".json"), meta))
    entries.sort(key=lambda entry: entry[1].get("received_at", ""))
    return entries


def find_kept_upload(*, user, sha256: str, accession, external_id) -> tuple[str, dict] | None:
    """``(reference, meta)`` of this user's kept upload of the same image for the same accession (and, with an
    ``external_id``, under the same one): a resend of an upload answered 503 "kept"."""
    for reference, meta in spool_entries():
        if (
            meta.get("user_id") == user.pk
            and meta.get("sha256") == sha256
            and norm_accession(meta.get("accession")) == norm_accession(accession)
            and (meta.get("client_external_id") or None) == external_id
        ):
            return reference, meta
    return None


RESEND_WINDOW = timedelta(days=1)


def filed_kept_upload(*, user, sha256: str, accession) -> Classification | None:
    """A kept upload of the same image and accession, filed in the last day: what a user who was told
    "kept, do not send it again" finds when they send it again anyway."""
    kept = Classification.objects.filter(
        owner=user,
        image_sha256=sha256,
        external_id__startswith=SPOOL_PREFIX,
        created_at__gte=timezone.now() - RESEND_WINDOW,
    )
    if accession:
        kept = kept.filter(specimen__accession__iexact=accession.strip())
    else:
        kept = kept.filter(specimen__isnull=True)
    return kept.order_by("id").first()


def norm_accession(accession: str | None) -> str:
    return (accession or "").strip().upper()


def keep(*, user, data: bytes, filename: str, accession, external_id, sha256: str) -> str:
    """Write an upload and what is needed to file it later; returns its reference."""
    reference = uuid.uuid4().hex
    meta = {
        "user_id": user.pk,
        "filename": filename,
        "accession": accession,
        # Re-ingesting twice (or a client retry after recovery) must not duplicate the result.
        "external_id": external_id or f"{SPOOL_PREFIX}{reference}",
        "client_external_id": external_id,
        "sha256": sha256,
        "received_at": timezone.now().isoformat(),
    }
    default_storage.save(f"{SPOOL_DIR}/{reference}.bin", ContentFile(data))
    default_storage.save(f"{SPOOL_DIR}/{reference}.json", ContentFile(json.dumps(meta).encode()))
    logger.error("database unavailable: upload spooled as %s", reference)
    return reference


def read(reference: str) -> bytes | None:
    """The kept image, or None when it was filed meanwhile (by another thread or process)."""
    try:
        with default_storage.open(f"{SPOOL_DIR}/{reference}.bin") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def drop(reference: str) -> None:
    files.delete_files(f"{SPOOL_DIR}/{reference}.bin", f"{SPOOL_DIR}/{reference}.json")
