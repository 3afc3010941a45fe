"""Result formats for other systems: FHIR R4 (fhir.py) and HL7 v2 (hl7.py).

Pure functions of a specimen and its differential (from the selectors); they
read nothing from the database themselves and decide no access rules.
"""

import unicodedata

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
