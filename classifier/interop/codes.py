"""The code systems and codes both result formats send (FHIR R4 in ``fhir``, HL7 v2 in ``hl7``).

The per-class LOINC codes live in the cell-class table (``classifier.cells.classes``); this module
holds the panel, the units and the local codes around them, so the two formats cannot drift apart.
"""

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"

# LOINC 57023-4 "Auto Differential panel - Blood".
PANEL = ("57023-4", "Auto Differential panel - Blood")
PER_100_WHITE_UNIT = ("/100{WBCs}", "per 100 white cells")  # UCUM code, words

# Local codes (HL7's "99zzz" convention, FHIR's ``urn:hematovision:code``) for the counts behind the
# percentages: the white cells counted, the unidentified cells, each class listed but not counted.
COUNTED = ("WBC-COUNTED", "White cells counted")
UNIDENTIFIED = ("UNIDENTIFIED", "Unidentified cells awaiting review")
NOT_COUNTED_SUFFIX = " (listed, not counted)"
