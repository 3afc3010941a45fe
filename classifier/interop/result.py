"""What a result message says about one specimen, whatever the format.

FHIR (``fhir.specimen_bundle``) and HL7 v2 (``hl7.oru_r01``) write the same report: its status, when
it was collected and issued, the comments, which rows are per 100 white cells and what each row's note
says. Both builders read those from this one record and differ only in syntax (resources and
references in FHIR, segments and fields in HL7), which is why the two builders stay two functions.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.utils import timezone

from classifier.cells.classes import Loinc
from classifier.cells.differential import AbsoluteRow, Differential, Row
from classifier.interop import Release, codes


@dataclass(frozen=True, kw_only=True)
class ResultReport:
    """One specimen's result as it is sent.

    ``order``: the LIS order (patient, placer number, provider) or None. ``release``: the report
    version being released (final or corrected), None for a preliminary result. ``issued``: when a
    preliminary result last changed. ``images``: (cell id, submitter, external_id) of the LIS's images.
    """

    specimen: Any
    differential: Differential
    order: Any = None
    release: Release | None = None
    issued: datetime | None = None
    model_versions: tuple[str, ...] = ()
    comment: str = ""
    images: tuple[tuple[int, str, str], ...] = ()
    now: datetime | None = None

    def __post_init__(self):
        if self.now is None:
            object.__setattr__(self, "now", timezone.now())

    @property
    def accession(self) -> str:
        return self.specimen.accession

    @property
    def status(self) -> str:
        """``preliminary`` until signed, ``final``, ``corrected`` for an amended version
        (FHIR's words; HL7 result status P, F, C)."""
        if self.release:
            return "corrected" if self.release.corrected else "final"
        return "final" if self.differential.signed else "preliminary"

    @property
    def reviewed(self) -> bool:
        """A reviewer verified and signed this version: it is sent as a manual differential (panel
        24318-8, "by Manual count" codes); else as the model's automated pre-classification."""
        return self.status != "preliminary"

    @property
    def panel(self) -> tuple[str, str]:
        return codes.panel(reviewed=self.reviewed)

    def code(self, row: Row) -> Loinc | None:
        """The row's LOINC code for this report's method."""
        return codes.class_code(row.label, reviewed=self.reviewed)

    @property
    def issued_at(self) -> datetime:
        """When this version was released; preliminary: when the specimen last changed."""
        if self.release:
            return self.release.released_at
        return self.issued or self.specimen.signed_at or self.now

    @property
    def collected_at(self) -> datetime:
        order = self.order
        return order.collected_at if order and order.collected_at else self.specimen.created_at

    @property
    def notes(self) -> list[str]:
        """The report's comments: the amendment and its reason, the reviewer's comment, why no flags,
        the specimen check's alarm."""
        notes = []
        if self.release and self.release.corrected:
            notes.append(f"Corrected report (version {self.release.number}): {self.release.reason}")
        if self.comment:
            notes.append(f"Reviewer's comment: {self.comment}")
        if self.differential.flag_comment:
            notes.append(self.differential.flag_comment)
        if self.differential.specimen_check_comment:
            notes.append(self.differential.specimen_check_comment)
        return notes

    def per_100(self, row: Row) -> bool:
        """Whether the row is counted per 100 white cells (nucleated red cells) rather than in %."""
        return any(row.label == other.label for other in self.differential.per_100_white_cells)

    def absolute_note(self, row: AbsoluteRow) -> str:
        """What an absolute count rests on (without a final full stop)."""
        return (
            f"{row.percent:g} % of the white-cell count {self.differential.wbc_count:g} x10^9/L "
            "given with the order"
        )

    def row_note(self, row: Row) -> str:
        """What a reported row's value rests on (without a final full stop)."""
        counted = self.differential.counted_cells
        if self.per_100(row):
            return f"{row.count} per {counted} white cells counted"
        return f"{row.count} of {counted} counted cells"
