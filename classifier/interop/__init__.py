"""Result formats for other systems: FHIR R4 (fhir.py) and HL7 v2 (hl7.py).

Pure functions of a specimen and its differential (from the selectors); they
read nothing from the database themselves and decide no access rules.
"""

import unicodedata
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings

APPLICATION = "HEMATOVISION"


def lab_name() -> str:
    """The performing lab as both formats name it: HEMATOVISION_LAB_NAME on one line, else ``HEMATOVISION``.

    Control characters (a CR would end an HL7 segment) become spaces and runs of
    whitespace one space. An empty name falls back to the application's name, which
    the HL7 message sends as MSH-3 anyway; FHIR forbids an empty ``display``.
    """
    name = "".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in settings.HEMATOVISION_LAB_NAME)
    return " ".join(name.split()) or APPLICATION


@dataclass(frozen=True)
class Release:
    """A released report version as the formats print it (``services.report_release``)."""

    number: int
    corrected: bool  # an amendment: HL7 ``C``, FHIR ``corrected``
    reason: str  # why it was amended ("" for the first sign-off)
    released_at: datetime  # FHIR ``issued``, HL7 OBR-22
    signer_id: str  # the signer's username (XCN.1 / CNN.1)
    signer_family: str
    signer_given: str
    signer_name: str  # full name, else username: FHIR resultsInterpreter.display


def model_versions(cells) -> tuple[str, ...]:
    """The model versions that read a specimen's cells, most cells first (OBX-18, FHIR Device)."""
    counts = Counter(c.model_version for c in cells if c.model_version)
    return tuple(v for v, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def lis_images(cells) -> tuple[tuple[int, str, str], ...]:
    """(cell id, submitter's username, external_id) of each cell the LIS sent with its own id: the
    results name them, so the LIS can match its images (HL7 NTE, FHIR Media)."""
    return tuple(
        (c.pk, c.owner.get_username(), c.external_id)
        for c in sorted(cells, key=lambda c: c.pk)
        if c.external_id
    )
