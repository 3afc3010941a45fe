"""The differential of one specimen as one record, read by the API, FHIR, HL7, PDF, CSV and pages.

* White cells make the total: their percentages add up to exactly 100.0 as shown (largest-remainder
  rounding to one decimal), so a report never shows 99.9 % or 100.1 %.
* Nucleated red cells are reported per 100 white cells, outside the total.
* Platelets, smudge cells and artefacts are listed with their count and never counted.
* Unidentified cells (awaiting a reviewer's class) and pending cells are counted apart.

Which rows are reported: every class the specimen's models could have called (the keys of each
cell's ``probabilities``, i.e. the predictor card's classes at the time), and every class some cell
was given. A specimen read by the four-class model reports those four (no "basophils 0 %" that the
model could never have seen); one read by the eight-class model its white-cell classes and nucleated
red cells. With no model result yet, the table's model classes are listed without values.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from classifier.cells import classes, ranges
from classifier.cells.classes import Counting

if TYPE_CHECKING:
    from classifier.inference import SpecimenVerdict

ONE_DECIMAL = 10  # percentages are shown to one decimal: 1000 tenths make 100 %


@dataclass(frozen=True)
class Row:
    """One class of the differential."""

    label: str
    name: str
    count: int
    # WHITE rows: % of the white cells counted. PER_100_WHITE rows: cells per 100 white cells.
    # NOT_COUNTED rows: None. None too while no white cell is counted.
    value: float | None
    reference_low: float | None
    reference_high: float | None
    flag: str | None  # "H" above, "L" below the reference range
    # The range applied (``cells.ranges``: by the patient's age and sex, else adult); its bounds are
    # reference_low/high. None where none is agreed.
    reference: ranges.Range | None = None

    @property
    def cell_type(self) -> classes.CellType | None:
        return classes.get(self.label)

    @property
    def loinc(self) -> classes.Loinc | None:
        cell = self.cell_type
        return cell.loinc if cell else None

    @property
    def percent(self) -> float | None:
        """The value of a white-cell row (% of white cells); the API's name for it."""
        return self.value

    @property
    def per_100_white_cells(self) -> float | None:
        return self.value


WBC_UCUM = "10*9/L"  # the unit of the order's white-cell count and of every absolute count
ABSOLUTE_DECIMALS = 2  # 10^9/L to two decimals, as analysers print absolute counts (0.04)


@dataclass(frozen=True)
class AbsoluteRow:
    """One white-cell class's absolute count: its share of the order's white-cell count (10^9/L)."""

    label: str
    name: str
    count: int
    value: float  # 10^9/L
    percent: float  # the row's percentage it was computed beside
    reference: ranges.Range | None  # the adult absolute range (None for a child, or where none is given)
    flag: str | None

    @property
    def reference_low(self) -> float | None:
        return self.reference.low if self.reference else None

    @property
    def reference_high(self) -> float | None:
        return self.reference.high if self.reference else None

    @property
    def loinc(self) -> classes.Loinc | None:
        cell = classes.get(self.label)
        return cell.loinc_absolute if cell else None


@dataclass(frozen=True)
class Differential:
    accession: str
    total_cells: int  # every cell image of the specimen
    counted_cells: int  # white cells in the total (the denominator of every percentage)
    unidentified: int  # unidentified cells awaiting a reviewer's class
    pending: int  # cells the model has not read yet
    unreviewed: int
    classes: tuple[Row, ...]  # white-cell classes; values add up to 100.0 once a cell is counted
    per_100_white_cells: tuple[Row, ...]  # nucleated red cells
    not_counted: tuple[Row, ...]  # platelets, smudge cells, artefacts (count > 0 only)
    signed: bool = False
    signed_by: str | None = None
    signed_at: datetime | None = None
    ready_to_sign: bool = False
    model_classes: tuple[str, ...] = field(default=())
    # Below this many white cells counted no H/L flag is given (HEMATOVISION_MIN_CELLS_FOR_FLAGS):
    # one cell of four is 25 %, which says nothing about the patient (issue 19).
    min_count_for_flags: int = 0
    patient: ranges.Patient | None = None  # age and sex the reference ranges were chosen for
    wbc_count: float | None = None  # the order's white-cell count, 10^9/L (None: no absolute counts)
    absolute: tuple[AbsoluteRow, ...] = ()  # per white-cell class, when wbc_count is known
    # The specimen check (``ml.shift``): far more cells flagged than a validated lab gives raises the
    # alarm, and the specimen is reviewed cell by cell. None: not computed.
    specimen_check: SpecimenVerdict | None = None

    @property
    def specimen_check_alarm(self) -> bool:
        return self.specimen_check is not None and self.specimen_check.alarm

    @property
    def specimen_check_warning(self) -> str:
        """What the reviewer's pages say when the alarm is raised ("" otherwise)."""
        check = self.specimen_check
        if check is None or not check.alarm:
            return ""
        return (
            f"Specimen check: {_flagged_text(check)} (the alarm is at {check.critical}). The stain, the "
            "camera or the cells themselves differ from what the model knows: review every cell one by "
            "one; accepting cells in bulk is off for this specimen."
        )

    @property
    def specimen_check_comment(self) -> str:
        """The reports' line when the alarm was raised (PDF, CSV, FHIR, HL7; "" otherwise)."""
        return specimen_check_comment(self.specimen_check)

    @property
    def reference_note(self) -> str:
        """Which reference ranges the rows carry, for the page's and the report's footnote."""
        patient = self.patient
        if patient is None or patient.age_months is None:
            return "Adult reference ranges (the patient's age is not known)."
        sex = ranges.SEX_NAMES.get(patient.sex or "")
        return f"Reference ranges for the patient's age ({patient.age_text}{', ' + sex if sex else ''})."

    @property
    def flags_withheld(self) -> bool:
        return 0 < self.counted_cells < self.min_count_for_flags

    @property
    def flag_comment(self) -> str:
        """Why there are no reference flags, for every format's comment ("" when flags are given)."""
        if not self.flags_withheld:
            return ""
        return (
            f"Only {self.counted_cells} white cell{'' if self.counted_cells == 1 else 's'} counted (fewer "
            f"than {self.min_count_for_flags}): no high/low flags are given; the percentages are imprecise."
        )

    @property
    def reported(self) -> tuple[Row, ...]:
        """The rows sent to an LIS as results: white-cell classes, then nucleated red cells."""
        return self.classes + self.per_100_white_cells


def specimen_check_comment(check: SpecimenVerdict | None) -> str:
    """The reports' line for a specimen check that raised the alarm; "" for none or a quiet one."""
    if check is None or not check.alarm:
        return ""
    return (
        f"Specimen check: {_flagged_text(check)} (alarm at {check.critical}); the specimen is reviewed "
        "cell by cell."
    )


def _flagged_text(check: SpecimenVerdict) -> str:
    return (
        f"{check.flagged} of {check.cells} cells ({round(100 * check.share)} %) were flagged by the model, "
        "far more than in the labs it was validated on"
    )


def largest_remainder(counts: list[int], *, total: int, scale: int = 100, decimals: int = 1) -> list[float]:
    """Shares of ``total`` as percentages rounded to ``decimals`` that add up to exactly ``scale``.

    Each share is rounded down, then the units left go to the largest remainders (ties: first row).
    """
    if total <= 0:
        raise ValueError("total must be positive")
    unit = 10**decimals
    quotas = [count * scale * unit / total for count in counts]
    floors = [math.floor(q) for q in quotas]
    left = scale * unit - sum(floors)
    order = sorted(range(len(counts)), key=lambda i: (-(quotas[i] - floors[i]), i))
    for i in order[:left]:
        floors[i] += 1
    return [f / unit for f in floors]


def _flag(value: float | None, reference: ranges.Range | None) -> str | None:
    if value is None or reference is None:
        return None
    return "L" if value < reference.low else "H" if value > reference.high else None


def _row(
    cell: classes.CellType | None,
    label: str,
    count: int,
    value: float | None,
    *,
    flags: bool = True,
    patient: ranges.Patient | None = None,
) -> Row:
    reference = ranges.applicable(cell, patient)
    return Row(
        label=label,
        name=cell.name if cell else label,
        count=count,
        value=value,
        reference_low=reference.low if reference else None,
        reference_high=reference.high if reference else None,
        flag=_flag(value, reference) if flags else None,
        reference=reference,
    )


def _absolute_reference(row: Row) -> ranges.Range | None:
    """The adult absolute range, where the row's percentage is judged by the adult range too (never
    for a child's age band: no children's absolute ranges are given here)."""
    cell = row.cell_type
    if cell is None or cell.reference_absolute is None or (row.reference and row.reference.age_based):
        return None
    known = row.reference.age_known if row.reference else False
    return ranges.Range(*cell.reference_absolute, age_known=known)


def _absolute_rows(
    white_rows: tuple[Row, ...], white_total: int, wbc_count: float | None, *, flags: bool
) -> tuple[AbsoluteRow, ...]:
    """Each white-cell row's share of the white-cell count (count / counted x WBC), in 10^9/L."""
    if wbc_count is None or not white_total:
        return ()
    rows = []
    for row in white_rows:
        value = round(row.count * wbc_count / white_total, ABSOLUTE_DECIMALS)
        reference = _absolute_reference(row)
        rows.append(AbsoluteRow(
            label=row.label, name=row.name, count=row.count, value=value, percent=row.value or 0.0,
            reference=reference, flag=_flag(value, reference) if flags else None,
        ))
    return tuple(rows)


# One white-cell column of the differential: (cell type, or None outside the table; label; count).
_Column = tuple[classes.CellType | None, str, int]


def _white_columns(counts: Counter, shown: list[classes.CellType]) -> list[_Column]:
    """(cell type, label, count) of each white-cell class shown, then of each label outside the table
    (a future model's class: counted as a white cell, shown by its code, no cell type)."""
    white = [(c, c.code, counts.get(c.code, 0)) for c in shown if c.counting is Counting.WHITE]
    unknown = sorted(code for code in counts if code not in classes.BY_CODE)
    return [*white, *((None, code, counts[code]) for code in unknown)]


def _white_rows(
    white: list[_Column],
    white_total: int,
    *,
    flags: bool,
    patient: ranges.Patient | None,
) -> tuple[Row, ...]:
    """The white-cell rows: percentages of ``white_total`` that add up to 100.0 (None while it is 0)."""
    white_counts = [count for _, _, count in white]
    percents = (
        largest_remainder(white_counts, total=white_total) if white_total else [None] * len(white_counts)
    )
    return tuple(
        _row(cell, label, count, value, flags=flags, patient=patient)
        for (cell, label, count), value in zip(white, percents, strict=True)
    )


def _per_100_rows(
    counts: Counter,
    shown: list[classes.CellType],
    white_total: int,
    *,
    flags: bool,
    patient: ranges.Patient | None,
) -> tuple[Row, ...]:
    """The classes reported per 100 white cells (nucleated red cells), None while none is counted."""
    return tuple(
        _row(
            c,
            c.code,
            counts.get(c.code, 0),
            round(100.0 * counts.get(c.code, 0) / white_total, 1) if white_total else None,
            flags=flags,
            patient=patient,
        )
        for c in shown
        if c.counting is Counting.PER_100_WHITE
    )


def _not_counted_rows(
    counts: Counter, shown: list[classes.CellType], *, patient: ranges.Patient | None
) -> tuple[Row, ...]:
    """Platelets, smudge cells and artefacts that some cell was given: their count, no value."""
    return tuple(
        _row(c, c.code, counts[c.code], None, patient=patient)
        for c in shown
        if c.counting is Counting.NOT_COUNTED and counts.get(c.code)
    )


def build(
    *,
    labels: Iterable[str],
    model_classes: Iterable[str],
    min_count_for_flags: int = 0,
    patient: ranges.Patient | None = None,
    wbc_count: float | None = None,
    **facts,
) -> Differential:
    """The differential from the counted cells' labels and the classes their models knew.

    ``facts`` are the record's other fields (accession, total_cells, unidentified, ...). With fewer
    than ``min_count_for_flags`` white cells counted no row is flagged (``flags_withheld``). Each
    row's reference range is the one for ``patient`` (age, sex), the adult one when unknown. With the
    order's ``wbc_count`` (10^9/L) each white-cell class also gets its absolute count (``absolute``).
    """
    counts = Counter(labels)
    known = set(model_classes) or set(classes.MODEL_CODES)
    shown = [c for c in classes.TABLE if c.code in known or counts.get(c.code)]
    white = _white_columns(counts, shown)
    white_total = sum(count for _, _, count in white)
    flags = not (0 < white_total < min_count_for_flags)
    white_rows = _white_rows(white, white_total, flags=flags, patient=patient)
    return Differential(
        counted_cells=white_total,
        classes=white_rows,
        per_100_white_cells=_per_100_rows(counts, shown, white_total, flags=flags, patient=patient),
        not_counted=_not_counted_rows(counts, shown, patient=patient),
        model_classes=tuple(c for c in classes.CODES if c in known)
        + tuple(sorted(known - set(classes.CODES))),
        min_count_for_flags=min_count_for_flags,
        patient=patient,
        wbc_count=wbc_count,
        absolute=_absolute_rows(white_rows, white_total, wbc_count, flags=flags),
        **facts,
    )
