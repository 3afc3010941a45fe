"""The model's cell classes: names and output order, declared once for every ``ml`` module.

Eight types of nucleated and non-nucleated cells a peripheral-blood analyzer pre-classifies
(CellaVision's and PBC's taxonomy). A source that labels fewer types (BCCD: four) trains with
the classes it has. The web app keeps its own per-class table (display name, colour, key, LOINC,
reference range) keyed by these names.
"""

from __future__ import annotations

CLASSES: tuple[str, ...] = (
    "NEUTROPHIL",
    "EOSINOPHIL",
    "BASOPHIL",
    "LYMPHOCYTE",
    "MONOCYTE",
    "IG",  # immature granulocyte: promyelocyte, myelocyte, metamyelocyte
    "ERYTHROBLAST",  # nucleated red cell (not a white cell)
    "PLATELET",  # platelet or platelet clump (not a white cell)
)

# The four types of the first model (BCCD's folders), in its output order.
LEGACY_CLASSES: tuple[str, ...] = ("EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL")
