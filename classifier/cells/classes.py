"""The cell-class table: the one place the web app lists cell classes.

Every page, form, filter, serializer, FHIR/HL7 builder, report and colour reads this table; nothing
else spells out a class. Two kinds of class:

* the model's eight (``model=True``), named exactly as ``ml.taxonomy.CLASSES`` (a test checks it).
  Which of them a given result could have had comes from its predictor's card at run time: the keys
  of ``Classification.probabilities``. Results of the first, four-class model keep their model
  version and render as they always did.
* reviewer-only classes a lab records on a smear but the model does not predict (band, blast,
  variant lymphocyte, plasma cell, smudge cell, artefact). Reviewers can give every class.

How a class counts in the differential (``counting``):

* ``WHITE``: a white cell, in the white-cell total whose percentages add up to 100.
* ``PER_100_WHITE``: nucleated red cells, reported per 100 white cells, outside the total.
* ``NOT_COUNTED``: platelets, smudge cells and artefacts, listed apart and never counted.

LOINC: each code below was checked against published LOINC tables (FHIR implementation guides'
value sets and examples, LIS mapping tables) and is cited with its LOINC long name. Codes by method
(issue 19): an unsigned result is the model's pre-classification, so the model's classes carry the
"by Automated count" code (``loinc``), the same family as panel 57023-4 "Auto Differential panel -
Blood". Once a reviewer has verified and signed the differential it is sent the way labs send a
verified digital-morphology differential, as a manual one: panel 24318-8 "Manual Differential panel
- Blood" (loinc.org/24318-8) and the "by Manual count" codes (``loinc_reviewed``; each checked in the
eHealth Suisse LOINC list for external quality control, ehealth_connector ``LabObsList``, and cited
below). Reviewer-only classes are identified by a person, so they carry the method-less code of the
"Differential panel, method unspecified - Blood" (69738-3) family until signed. Newer LOINC
releases print "/100 leukocytes" as "/Leukocytes"; the codes are the same. Where no code fits, the
field is None.

Absolute counts (``loinc_absolute``, "[#/volume]"): reported when the LIS order gives the white-cell
count (``Order.wbc_count``, 10^9/L), as each white-cell class's share of it. The "by Automated count"
codes of the five classes (751-8, 711-2, 704-7, 731-0, 742-7) were verified in the FHIR
implementation guides' examples cited below (CTC Adverse Events IG, eCR IG) with the search tool.
They are sent in both states: LOINC's manual-count absolute codes could not be verified (issue 19).

Reference ranges: the adult range of each class is here (``reference``); ``classifier.cells.ranges``
picks the range for the ordered patient's age and sex (children's bands, cited there) and falls back
to this one when the age is unknown.

Adult reference ranges: typical adult values from textbook tables (% of leukocytes; nucleated red
cells per 100 leukocytes). A lab validates its own; the table is where it would change them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Counting(enum.Enum):
    WHITE = "white"
    PER_100_WHITE = "per_100_white"
    NOT_COUNTED = "not_counted"


@dataclass(frozen=True)
class Loinc:
    code: str
    name: str  # the LOINC long common name


@dataclass(frozen=True)
class CellType:
    code: str  # stored in the database and sent over the API
    name: str  # shown to people
    colour: str  # badge / box background, #rrggbb
    key: str  # the review shortcut: one character, never j, k, s or o (the review page's own keys)
    loinc: Loinc | None  # the differential's code: /100 leukocytes
    loinc_absolute: Loinc | None  # the absolute count [#/volume], where LOINC has one (needs a WBC count)
    reference: tuple[float, float] | None  # adult reference range; None where none is agreed
    counting: Counting
    model: bool  # one of the model's eight classes (else reviewer-only)
    first_model: bool = False  # one of the four classes of the first shipped model (BCCD's)
    # The code of a reviewed count (a reviewer signed: the panel is 24318-8 "Manual Differential
    # panel - Blood"); None: the same code as ``loinc`` (``code_for``).
    loinc_reviewed: Loinc | None = None
    # Adult reference range of the absolute count (10^9/L), reported when the order gives a white-cell
    # count; None where none is given here (no flag).
    reference_absolute: tuple[float, float] | None = None

    def code_for(self, *, reviewed: bool) -> Loinc | None:
        """The LOINC code of this class's /100 leukocytes result, by method: the model's unreviewed
        pre-classification (``loinc``) or a differential a reviewer verified and signed."""
        return (self.loinc_reviewed or self.loinc) if reviewed else self.loinc

    @property
    def counts_in_white_total(self) -> bool:
        return self.counting is Counting.WHITE

    @property
    def reviewer_only(self) -> bool:
        return not self.model

    @property
    def text_colour(self) -> str:
        """White or near-black text, whichever is more legible on ``colour`` (WCAG contrast)."""
        white = contrast("#ffffff", self.colour)
        return "#ffffff" if white >= contrast(DARK_TEXT, self.colour) else DARK_TEXT

    @property
    def rgb(self) -> tuple[int, int, int]:
        value = self.colour.lstrip("#")
        return (int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16))


DARK_TEXT = "#212529"  # Bootstrap's body colour


def _luminance(hex_colour: str) -> float:
    value = hex_colour.lstrip("#")
    channels = [int(value[i:i + 2], 16) / 255 for i in (0, 2, 4)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    """WCAG 2 contrast ratio of two #rrggbb colours (1 to 21)."""
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


# The table, in display order: the model's eight in ml.taxonomy's order (keys 1-8), then the
# reviewer-only classes.
TABLE: tuple[CellType, ...] = (
    CellType(
        "NEUTROPHIL", "Neutrophil", "#e0a030", "1",
        # LOINC 770-8 "Neutrophils/100 leukocytes in Blood by Automated count"
        # (US Core Observation-neutrophils example); 751-8 "Neutrophils [#/volume] in Blood by
        # Automated count" (CTC adverse-events IG example r201-9).
        Loinc("770-8", "Neutrophils/100 leukocytes in Blood by Automated count"),
        Loinc("751-8", "Neutrophils [#/volume] in Blood by Automated count"),
        (40.0, 75.0), Counting.WHITE, model=True, first_model=True,
        # Reviewed: 769-0 "Neutrophils.segmented/100 leukocytes in Blood by Manual count" (bands are
        # their own class, BAND, in a reviewed differential).
        loinc_reviewed=Loinc("769-0", "Neutrophils.segmented/100 leukocytes in Blood by Manual count"),
        # Absolute: 2-7.5 x10^9/L, the range of the CTC IG's 751-8 example (Observation r201-9).
        reference_absolute=(2.0, 7.5),
    ),
    CellType(
        "EOSINOPHIL", "Eosinophil", "#c0392b", "2",
        # LOINC 713-8 "Eosinophils/100 leukocytes in Blood by Automated count" (LOINC long-name
        # tables); 711-2 "Eosinophils [#/volume] in Blood by Automated count" (CTC IG example r201-15).
        Loinc("713-8", "Eosinophils/100 leukocytes in Blood by Automated count"),
        Loinc("711-2", "Eosinophils [#/volume] in Blood by Automated count"),
        (1.0, 6.0), Counting.WHITE, model=True, first_model=True,
        # Reviewed: 714-6 "Eosinophils/100 leukocytes in Blood by Manual count".
        loinc_reviewed=Loinc("714-6", "Eosinophils/100 leukocytes in Blood by Manual count"),
        # Absolute: 0.04-0.4 x10^9/L, the range of the CTC IG's 711-2 example (r201-15).
        reference_absolute=(0.04, 0.4),
    ),
    CellType(
        "BASOPHIL", "Basophil", "#5b2c6f", "3",
        # LOINC 706-2 "Basophils/100 leukocytes in Blood by Automated count" (CTC IG; LOINC
        # long-name tables); 704-7 "Basophils [#/volume] in Blood by Automated count" (CTC IG r201-17).
        Loinc("706-2", "Basophils/100 leukocytes in Blood by Automated count"),
        Loinc("704-7", "Basophils [#/volume] in Blood by Automated count"),
        (0.0, 2.0), Counting.WHITE, model=True,
        # Reviewed: 707-0 "Basophils/100 leukocytes in Blood by Manual count".
        loinc_reviewed=Loinc("707-0", "Basophils/100 leukocytes in Blood by Manual count"),
        # Absolute: up to 0.21 x10^9/L, the upper limit of the CTC IG's 704-7 example (r201-17).
        reference_absolute=(0.0, 0.21),
    ),
    CellType(
        "LYMPHOCYTE", "Lymphocyte", "#2f62d0", "4",
        # LOINC 736-9 "Lymphocytes/100 leukocytes in Blood by Automated count" (LOINC long-name
        # tables); 731-0 "Lymphocytes [#/volume] in Blood by Automated count" (eCR IG example).
        Loinc("736-9", "Lymphocytes/100 leukocytes in Blood by Automated count"),
        Loinc("731-0", "Lymphocytes [#/volume] in Blood by Automated count"),
        (20.0, 45.0), Counting.WHITE, model=True, first_model=True,
        # Reviewed: 737-7 "Lymphocytes/100 leukocytes in Blood by Manual count".
        loinc_reviewed=Loinc("737-7", "Lymphocytes/100 leukocytes in Blood by Manual count"),
        # Absolute: 1.0-4.8 x10^9/L (10*3/uL), the range of the eCR IG's 731-0 example.
        reference_absolute=(1.0, 4.8),
    ),
    CellType(
        "MONOCYTE", "Monocyte", "#6f4bb5", "5",
        # LOINC 5905-5 "Monocytes/100 leukocytes in Blood by Automated count" (CTC IG; LOINC
        # long-name tables); 742-7 "Monocytes [#/volume] in Blood by Automated count" (CTC IG r202-13).
        Loinc("5905-5", "Monocytes/100 leukocytes in Blood by Automated count"),
        Loinc("742-7", "Monocytes [#/volume] in Blood by Automated count"),
        (2.0, 10.0), Counting.WHITE, model=True, first_model=True,
        # Reviewed: 744-3 "Monocytes/100 leukocytes in Blood by Manual count" (also loinc.org).
        loinc_reviewed=Loinc("744-3", "Monocytes/100 leukocytes in Blood by Manual count"),
        # Absolute: 0.2-1.0 x10^9/L, the range of the CTC IG's 742-7 example (r202-13).
        reference_absolute=(0.2, 1.0),
    ),
    CellType(
        "IG", "Immature granulocyte", "#0e7c7b", "6",
        # LOINC 71695-1 "Immature granulocytes/100 leukocytes in Blood by Automated count" (LOINC
        # long-name tables). Absolute: 51584-1 "Immature granulocytes [#/volume] in Blood"
        # (method-less; LOINC code pages, e.g. healthassure.in/codes/loinc-51584-1): the count is the
        # differential's share of the order's white-cell count, right for either method. 53115-2
        # (the analysers' "by Automated count" code) could not be verified and is not used.
        Loinc("71695-1", "Immature granulocytes/100 leukocytes in Blood by Automated count"),
        Loinc("51584-1", "Immature granulocytes [#/volume] in Blood"),
        (0.0, 0.5), Counting.WHITE, model=True,
        # Reviewed: the method-less 38518-7 (a manual count reports promyelocytes, myelocytes and
        # metamyelocytes apart; LOINC has no manual-count code for them together).
        loinc_reviewed=Loinc("38518-7", "Immature granulocytes/100 leukocytes in Blood"),
    ),
    CellType(
        "ERYTHROBLAST", "Nucleated red cell", "#a8326e", "7",
        # LOINC 58413-6 "Nucleated erythrocytes/100 leukocytes [Ratio] in Blood by Automated count"
        # (LOINC long-name tables; UCUM unit /100{WBCs}); 771-6 "Nucleated erythrocytes [#/volume]
        # in Blood by Automated count". 19048-8 (the older ratio code) is listed as deprecated.
        Loinc("58413-6", "Nucleated erythrocytes/100 leukocytes [Ratio] in Blood by Automated count"),
        Loinc("771-6", "Nucleated erythrocytes [#/volume] in Blood by Automated count"),
        (0.0, 0.0), Counting.PER_100_WHITE, model=True,
        # Reviewed: the same code. LOINC's mapping guidance (loinc.org/58413-6) names the method-less
        # 19048-8 for counts not made by an analyser, but lists it as deprecated; no manual-count
        # ratio code for blood was verified.
    ),
    CellType(
        "PLATELET", "Platelet", "#95a5a6", "8",
        # No LOINC: LOINC has platelet concentrations (777-3 "Platelets [#/volume] in Blood by
        # Automated count"), which images of single cells cannot measure, and no per-leukocyte code.
        None, None, None, Counting.NOT_COUNTED, model=True,
    ),
    CellType(
        "BAND", "Band neutrophil", "#f5c26b", "9",
        # LOINC 26508-2 "Band form neutrophils/100 leukocytes in Blood" and 26507-4 "Band form
        # neutrophils [#/volume] in Blood" (the 69738-3 method-unspecified differential value set).
        # 764-1 is the "... by Manual count" code, for counts at the microscope.
        Loinc("26508-2", "Band form neutrophils/100 leukocytes in Blood"),
        Loinc("26507-4", "Band form neutrophils [#/volume] in Blood"),
        (0.0, 5.0), Counting.WHITE, model=False,
        # Reviewed: 764-1 "Neutrophils.band form/100 leukocytes in Blood by Manual count".
        loinc_reviewed=Loinc("764-1", "Neutrophils.band form/100 leukocytes in Blood by Manual count"),
    ),
    CellType(
        "BLAST", "Blast", "#343a40", "0",
        # LOINC 26446-5 "Blasts/100 leukocytes in Blood" and 30376-8 "Blasts [#/volume] in Blood"
        # (69738-3 value set). 709-6 is "Blasts/100 leukocytes in Blood by Manual count".
        Loinc("26446-5", "Blasts/100 leukocytes in Blood"),
        Loinc("30376-8", "Blasts [#/volume] in Blood"),
        (0.0, 0.0), Counting.WHITE, model=False,
        # Reviewed: 709-6 "Blasts/100 leukocytes in Blood by Manual count".
        loinc_reviewed=Loinc("709-6", "Blasts/100 leukocytes in Blood by Manual count"),
    ),
    CellType(
        "VARIANT_LYMPHOCYTE", "Variant lymphocyte", "#7fb3f5", "v",
        # LOINC 13046-8 "Variant lymphocytes/100 leukocytes in Blood" and 26477-0 "Variant
        # lymphocytes [#/volume] in Blood" (69738-3 value set). 42250-1 is the analysers'
        # "... by Automated count" code. No reference range: adult values are not agreed.
        Loinc("13046-8", "Variant lymphocytes/100 leukocytes in Blood"),
        Loinc("26477-0", "Variant lymphocytes [#/volume] in Blood"),
        None, Counting.WHITE, model=False,
    ),
    CellType(
        "PLASMA_CELL", "Plasma cell", "#2e7d32", "p",
        # LOINC 13047-6 "Plasma cells/100 leukocytes in Blood" and 30458-4 "Plasma cells [#/volume]
        # in Blood" (69738-3 value set).
        Loinc("13047-6", "Plasma cells/100 leukocytes in Blood"),
        Loinc("30458-4", "Plasma cells [#/volume] in Blood"),
        (0.0, 0.0), Counting.WHITE, model=False,
    ),
    CellType(
        "SMUDGE", "Smudge cell", "#b0a18f", "x",
        # LOINC 34992-8 "Smudge cells/100 leukocytes in Blood" and 34993-6 "Smudge cells [#/volume]
        # in Blood" exist (69738-3 value set); smudge cells are listed apart, not sent as results.
        Loinc("34992-8", "Smudge cells/100 leukocytes in Blood"),
        Loinc("34993-6", "Smudge cells [#/volume] in Blood"),
        None, Counting.NOT_COUNTED, model=False,
    ),
    CellType(
        "ARTEFACT", "Artefact / not a white cell", "#d0d4d8", "a",
        # No LOINC: not a cell finding.
        None, None, None, Counting.NOT_COUNTED, model=False,
    ),
)

BY_CODE: dict[str, CellType] = {cell.code: cell for cell in TABLE}
CODES: tuple[str, ...] = tuple(BY_CODE)
MODEL_CODES: tuple[str, ...] = tuple(c.code for c in TABLE if c.model)
# The first shipped model's classes in its output order (BCCD's folders, alphabetical).
FIRST_MODEL_CODES: tuple[str, ...] = tuple(sorted(c.code for c in TABLE if c.first_model))
CHOICES: list[tuple[str, str]] = [(c.code, c.name) for c in TABLE]
MAX_CODE_LENGTH = 32  # the database columns' width; a test checks every code fits


def get(code: str) -> CellType | None:
    return BY_CODE.get(code)


def display_name(code: str) -> str:
    """A class's name for people; an unknown code (a future model's class) as itself."""
    cell = BY_CODE.get(code)
    return cell.name if cell else code


def by_key() -> dict[str, str]:
    """Review key -> class code."""
    return {c.key: c.code for c in TABLE}
