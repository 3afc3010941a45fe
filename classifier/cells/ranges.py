"""Which reference range applies to a patient: by age (and sex, where a range is sex-specific).

The adult range of each class stays in the cell-class table (``classes.TABLE``, ``reference``): it is
the range for a patient whose age is unknown (no LIS order, or no date of birth) and for every age
from the end of the children's bands below. A class without children's bands uses its adult range at
every age, except nucleated red cells in the first month of life, which are normal in a newborn's
blood and get no range (so no H flag) rather than the adult 0-0.

Children's ranges (``CHILDREN``), % of leukocytes, automated analyser differential, from
Van Leeuwen AM, Bladh ML. *Davis's Comprehensive Manual of Laboratory and Diagnostic Tests with
Nursing Implications* (F.A. Davis), "Complete Blood Count, WBC Count and Differential", table "White
Blood Cell Count and Differential" (rows Birth, 1-23 mo, 2-10 yr, 11 yr-older adult) and its immature
granulocyte fraction (Birth-9 yr 0-0.4 %, 10 yr-older adult 0-0.9 %). "Birth" is read as the first
month of life (the next row starts at 1 month). From 11 years (immature granulocytes: 10 years) the
table's adult range applies. That table is not split by sex; the CALIPER study of children on a
Sysmex XN-3000 (Bohn MK et al., Clin Chem Lab Med 2020) found only the monocyte percentage among
the differential's parameters to need sex partitioning, after puberty. ``Range.sex`` lets a lab add
sex-specific bands: a band for the patient's sex wins over one for both. A lab validates its own
ranges (CLSI EP28); this module is where it would change them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from classifier.cells import classes

SEX_NAMES = {"F": "female", "M": "male"}


@dataclass(frozen=True)
class AgeBand:
    """Ages in whole units (``mo`` months or ``a`` years, UCUM), both ends included; ``high`` None:
    no upper end."""

    low: int
    high: int | None
    unit: str

    def covers(self, age_months: int) -> bool:
        age = age_months if self.unit == "mo" else age_months // 12
        return self.low <= age and (self.high is None or age <= self.high)

    @property
    def text(self) -> str:
        word = {"mo": "months", "a": "years"}[self.unit]
        if (self.low, self.high, self.unit) == (1, None, "mo"):
            return "1 month and older"
        if self.high is None:
            return f"{self.low} {word} and older"
        if (self.low, self.high, self.unit) == (0, 0, "mo"):
            return "birth to 1 month"
        if self.low == 0:
            return f"birth to {self.high} {word}"
        return f"{self.low} to {self.high} {word}"


@dataclass(frozen=True)
class Range:
    """A reference range and whom it applies to: ``band`` None is any age; ``sex`` None either sex;
    ``age_known`` False when the patient's age is unknown and the adult range stands in."""

    low: float
    high: float
    band: AgeBand | None = None
    sex: str | None = None
    age_known: bool = True

    @property
    def age_based(self) -> bool:
        """A children's range (a closed age band), not the generic adult one (HL7 OBX-10 ``A``)."""
        return self.band is not None and self.band.high is not None

    @property
    def text(self) -> str:
        """Whom the range is for, in words (FHIR referenceRange.text, the report's footnote)."""
        if not self.age_known:
            return "Adult range (the patient's age is not known)"
        who = f"Age {self.band.text}" if self.band else "Any age"
        return f"{who}, {SEX_NAMES[self.sex]}" if self.sex else who


@dataclass(frozen=True)
class Patient:
    """What the range depends on: age in whole months at collection (None: unknown) and sex."""

    age_months: int | None = None
    sex: str | None = None  # "F", "M"; None or anything else: not known

    @property
    def age_text(self) -> str:
        if self.age_months is None:
            return ""
        if self.age_months < 24:
            return f"{self.age_months} month{'' if self.age_months == 1 else 's'}"
        return f"{self.age_months // 12} years"


def age_in_months(birth: date | None, on: date) -> int | None:
    """Whole months from ``birth`` to ``on``; None when unknown or after ``on``."""
    if birth is None or birth > on:
        return None
    months = (on.year - birth.year) * 12 + on.month - birth.month
    return months - 1 if on.day < birth.day else months


_BIRTH, _INFANT, _CHILD = AgeBand(0, 0, "mo"), AgeBand(1, 23, "mo"), AgeBand(2, 10, "a")
# code -> children's ranges (Davis's table, above); the adult range applies from the age after the last.
CHILDREN: dict[str, tuple[Range, ...]] = {
    "NEUTROPHIL": (Range(24, 58, _BIRTH), Range(21, 67, _INFANT), Range(30, 77, _CHILD)),
    "LYMPHOCYTE": (Range(26, 56, _BIRTH), Range(20, 64, _INFANT), Range(14, 50, _CHILD)),
    "MONOCYTE": (Range(7, 13, _BIRTH), Range(4, 11, _INFANT), Range(4, 9, _CHILD)),
    "EOSINOPHIL": (Range(0, 8, _BIRTH), Range(0, 3.3, _INFANT), Range(0, 5.8, _CHILD)),
    "BASOPHIL": (Range(0, 2.5, _BIRTH), Range(0, 1, _INFANT), Range(0, 1, _CHILD)),
    "IG": (Range(0, 0.4, AgeBand(0, 9, "a")),),
}
# Classes with no range below this age (whole months): nucleated red cells are normal in newborns.
NO_RANGE_BELOW_MONTHS = {"ERYTHROBLAST": 1}


def _end_months(band: AgeBand) -> int:
    """The first age in months after ``band`` (a closed band)."""
    return band.high + 1 if band.unit == "mo" else (band.high + 1) * 12


def _adult_band(code: str) -> AgeBand | None:
    """From the end of the children's bands on; None (any age) for a class without them."""
    ends = [_end_months(r.band) for r in CHILDREN.get(code, ()) if r.band is not None]
    ends += [NO_RANGE_BELOW_MONTHS[code]] if code in NO_RANGE_BELOW_MONTHS else []
    if not ends:
        return None
    start = max(ends)
    return AgeBand(start // 12, None, "a") if start % 12 == 0 else AgeBand(start, None, "mo")


def applicable(cell: classes.CellType | None, patient: Patient | None = None) -> Range | None:
    """The range that applies to ``patient`` for ``cell``'s class; None where none is agreed."""
    if cell is None:
        return None
    age = patient.age_months if patient else None
    if age is None:
        return Range(*cell.reference, age_known=False) if cell.reference else None
    sex = patient.sex if patient and patient.sex in SEX_NAMES else None
    fitting = [
        r for r in CHILDREN.get(cell.code, ()) if r.band and r.band.covers(age) and r.sex in (None, sex)
    ]
    if fitting:
        return max(fitting, key=lambda r: r.sex is not None)  # the patient's sex first
    if age < NO_RANGE_BELOW_MONTHS.get(cell.code, 0) or cell.reference is None:
        return None
    return Range(*cell.reference, band=_adult_band(cell.code))
