"""The code systems and codes both result formats send (FHIR R4 in ``fhir``, HL7 v2 in ``hl7``).

The per-class LOINC codes live in the cell-class table (``classifier.cells.classes``), by method: an
unsigned result is the model's pre-classification ("by Automated count" codes under panel 57023-4);
a result a reviewer verified and signed goes out as a manual differential (panel 24318-8 and the
"by Manual count" codes), the way labs send a verified digital-morphology differential. This module
holds the panels, the units, the local codes around them and the lab's own codes
(``HEMATOVISION_LOCAL_CODES``), so the two formats cannot drift apart.
"""

from __future__ import annotations

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from classifier.cells import classes

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"

# LOINC 57023-4 "Auto Differential panel - Blood": the model's unreviewed pre-classification.
PANEL = ("57023-4", "Auto Differential panel - Blood")
# LOINC 24318-8 "Manual Differential panel - Blood" (loinc.org/24318-8, a child panel of the
# orderable CBC panels): a differential a reviewer verified and signed.
REVIEWED_PANEL = ("24318-8", "Manual Differential panel - Blood")
PER_100_WHITE_UNIT = ("/100{WBCs}", "per 100 white cells")  # UCUM code, words

# Local codes (HL7's "99zzz" convention, FHIR's ``urn:hematovision:code``) for the counts behind the
# percentages: the white cells counted, the unidentified cells, each class listed but not counted.
COUNTED = ("WBC-COUNTED", "White cells counted")
UNIDENTIFIED = ("UNIDENTIFIED", "Unidentified cells awaiting review")
NOT_COUNTED_SUFFIX = " (listed, not counted)"

# HEMATOVISION_LOCAL_CODES keys: the panel, or a class code of the table.
LOCAL_PANEL_KEY = "PANEL"


def panel(*, reviewed: bool) -> tuple[str, str]:
    return REVIEWED_PANEL if reviewed else PANEL


def class_code(label: str, *, reviewed: bool) -> classes.Loinc | None:
    """The LOINC code of a class's /100 leukocytes result by method; None for a class without one."""
    cell = classes.get(label)
    return cell.code_for(reviewed=reviewed) if cell else None


def _problems(value) -> list[str]:
    """What is wrong with a HEMATOVISION_LOCAL_CODES value (empty: nothing)."""
    if not isinstance(value, dict):
        return ["must be a mapping of PANEL or a class code to [local code, display]"]
    problems = []
    known = {LOCAL_PANEL_KEY, *classes.CODES}
    for key, pair in value.items():
        if key not in known:
            problems.append(f"{key!r} is neither {LOCAL_PANEL_KEY} nor a class of the cell-class table")
        elif not (
            isinstance(pair, (list, tuple))
            and len(pair) == 2
            and all(isinstance(p, str) and p.strip() for p in pair)
        ):
            problems.append(f"{key!r} must map to [local code, display], two non-empty strings")
    return problems


def local_codes() -> dict[str, tuple[str, str]]:
    """The lab's own codes (``HEMATOVISION_LOCAL_CODES``): key -> (code, display)."""
    value = settings.HEMATOVISION_LOCAL_CODES or {}
    problems = _problems(value)
    if problems:
        raise ImproperlyConfigured("HEMATOVISION_LOCAL_CODES: " + "; ".join(problems))
    return {key: (pair[0].strip(), pair[1].strip()) for key, pair in value.items()}


def local_code(key: str) -> tuple[str, str] | None:
    """The lab's code for the panel (``PANEL``) or a class, or None when it has none."""
    return local_codes().get(key)


def local_system_hl7() -> str:
    """HL7 coding system of the lab's codes (CWE.6): ``HEMATOVISION_LOCAL_CODE_SYSTEM``, 99zzz."""
    return settings.HEMATOVISION_LOCAL_CODE_SYSTEM


def local_system_fhir() -> str:
    """FHIR ``Coding.system`` of the lab's codes: ``HEMATOVISION_LOCAL_CODE_URI``, else a URN."""
    return settings.HEMATOVISION_LOCAL_CODE_URI or f"urn:hematovision:local-code:{local_system_hl7()}"


@checks.register()
def check_local_codes(app_configs=None, **kwargs):
    """``manage.py check`` (and every server start) names a malformed HEMATOVISION_LOCAL_CODES."""
    found = _problems(settings.HEMATOVISION_LOCAL_CODES or {})
    system = settings.HEMATOVISION_LOCAL_CODE_SYSTEM
    if not (system == "L" or (system.startswith("99") and 3 <= len(system) <= 12 and system.isalnum())):
        found.append(f"HEMATOVISION_LOCAL_CODE_SYSTEM {system!r} must be L or 99zzz (HL7 table 0396)")
    return [checks.Error(f"HEMATOVISION_LOCAL_CODES: {p}", id="hematovision.E019") for p in found]
