"""The per-cell CSV: one column table, read by every per-cell export (the portal's history and a
specimen's report), so both files have the same columns in the same order."""

from collections.abc import Callable
from typing import NamedTuple

from classifier import csvsafe
from classifier.models import Classification


class Column(NamedTuple):
    name: str
    value: Callable[[Classification], object]


def _username(user) -> str:
    return user.get_username() if user else ""


COLUMNS: tuple[Column, ...] = (
    Column("accession", lambda cell: cell.specimen.accession if cell.specimen else ""),
    Column("cell_id", lambda cell: cell.pk),
    Column("original_filename", lambda cell: cell.original_filename),
    Column("created_at", lambda cell: csvsafe.local_iso(cell.created_at)),
    Column("status", lambda cell: cell.status),
    Column("predicted_label", lambda cell: cell.predicted_label),
    Column("confidence", lambda cell: "" if cell.confidence is None else f"{cell.confidence:.4f}"),
    Column("flag_reason", lambda cell: cell.flag_reason),
    Column("final_label", lambda cell: cell.final_label),
    Column("label", lambda cell: cell.label),
    Column("review_state", lambda cell: cell.review_state),
    Column("reviewed_by", lambda cell: _username(cell.reviewed_by)),
    Column("reviewed_at", lambda cell: csvsafe.local_iso(cell.reviewed_at)),
    Column("signed_at", lambda cell: csvsafe.local_iso(cell.signed_at)),
    Column("model_version", lambda cell: cell.model_version),
    Column("external_id", lambda cell: cell.external_id or ""),  # the LIS's id for the image (issue 19)
    Column("owner", lambda cell: _username(cell.owner)),
    Column("signed_by", lambda cell: _username(cell.signed_by)),
)

HEADER: list[str] = [column.name for column in COLUMNS]


def cell_row(cell: Classification) -> list[str]:
    """The cell's CSV row, in ``HEADER``'s order, every value defused (``csvsafe.row``).
    Give cells from ``cells_shown()`` (specimen, owner, reviewer and signer in the same query)."""
    return csvsafe.row(column.value(cell) for column in COLUMNS)
