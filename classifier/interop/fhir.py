"""The white-cell differential of one specimen as a FHIR R4 Bundle.

Built and validated with ``fhir.resources.R4B``. fhir.resources 8.x models R5
at its top level (``fhir.resources.bundle`` is R5), and it ships no plain R4
package; R4B (4.3.0) is the R4 line's maintenance release and its Bundle,
DiagnosticReport, Observation and Specimen are the same on the wire as R4
4.0.1 for every element used here. R5 differs (e.g. DiagnosticReport gained
``note`` and ``study``, ``imagingStudy`` left), so validating against the
top-level models would check the wrong version for an R4 LIS.

Deliberate choices:

* Bundle ``type`` is ``collection``: a set of resources about one specimen
  delivered together, not a ``searchset`` (no search was run) and not a
  ``document`` (no Composition). Entries use ``urn:uuid`` full URLs derived
  from the accession, so references resolve inside the Bundle and the same
  specimen always gets the same resource ids.
* No Patient: HematoVision holds no demographics. The Specimen resource carries
  the accession number (``accessionIdentifier``) that the LIS uses to match
  the result to its order and patient; ``subject`` is optional in R4.
* LOINC: the panel is 57023-4 "Auto Differential panel - Blood"; each class's
  code and long name come from the cell-class table (``classifier.cells.classes``,
  where every code is cited): the model's classes have their "/100 leukocytes in
  Blood by Automated count" code, because the counts come from machine
  pre-classification of digital cell images (a human verifies and signs; the
  status tells the LIS whether that happened); reviewer-only classes (bands,
  blasts, ...) their method-less code. One Observation per white-cell class of the
  differential (values add up to 100 %), one for nucleated red cells per 100
  white cells (UCUM ``/100{WBCs}``) when reported. Platelets, smudge cells and
  artefacts are not results: the conclusion lists them.
* ``status`` is ``preliminary`` until a reviewer signs the specimen, then
  ``final``.
* The DiagnosticReport's ``performer`` is the lab's name
  (``HEMATOVISION_LAB_NAME``), or ``HEMATOVISION`` when that is empty, as in the
  HL7 message's MSH-4 (FHIR forbids an empty ``display``).
"""

import uuid

from django.utils import timezone
from fhir.resources.R4B.bundle import Bundle

from ..cells.differential import Differential, Row
from . import lab_name

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DIAGNOSTIC_SERVICE = "http://terminology.hl7.org/CodeSystem/v2-0074"
SPECIMEN_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0487"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
ACCESSION_SYSTEM = "urn:hematovision:accession"
FHIR_MEDIA_TYPE = "application/fhir+json"

# LOINC 57023-4 "Auto Differential panel - Blood".
PANEL = ("57023-4", "Auto Differential panel - Blood")
PER_100_WHITE_UNIT = ("/100{WBCs}", "per 100 white cells")  # UCUM code, words
FLAG_DISPLAY = {"H": "High", "L": "Low", "N": "Normal"}

_NAMESPACE = uuid.UUID("5b0f3c1e-7d0a-4d51-9a8e-2f6f3f1b9e21")


def _urn(*parts: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, ':'.join(parts))}"


def _percent(value: float) -> dict:
    return {"value": value, "unit": "%", "system": UCUM, "code": "%"}


def _per_100_white(value: float) -> dict:
    return {"value": value, "unit": PER_100_WHITE_UNIT[0], "system": UCUM, "code": PER_100_WHITE_UNIT[0]}


def _instant(value) -> str:
    return timezone.localtime(value).isoformat(timespec="seconds")


def report_status(differential: Differential) -> str:
    return "final" if differential.signed else "preliminary"


def _plural(count: int, name: str) -> str:
    return f"{count} {name.lower()}{'' if count == 1 else 's'}"


def _conclusion(differential: Differential) -> str:
    parts = [f"{differential.counted_cells} of {differential.total_cells} cells counted"]
    if differential.not_counted:
        parts.append(
            "not counted: " + ", ".join(_plural(row.count, row.name) for row in differential.not_counted)
        )
    if differential.unidentified:
        parts.append(f"{differential.unidentified} unidentified awaiting review")
    if differential.pending:
        parts.append(f"{differential.pending} pending analysis")
    if differential.signed:
        parts.append(f"verified and signed by {differential.signed_by}")
    else:
        parts.append("machine pre-classification, not yet verified by a reviewer")
    return "; ".join(parts) + "."


def _text(row: Row, per_100: bool) -> str:
    return row.name + (" per 100 white cells" if per_100 else " %")


def _observation(
    row: Row, *, per_100: bool, accession, status, effective, issued, specimen_ref, counted
) -> dict:
    quantity = _per_100_white if per_100 else _percent
    observation = {
        "resourceType": "Observation",
        "id": _urn(accession, "observation", row.label).removeprefix("urn:uuid:"),
        "status": status,
        "category": [
            {"coding": [{"system": OBSERVATION_CATEGORY, "code": "laboratory", "display": "Laboratory"}]}
        ],
        "code": {"text": _text(row, per_100)},
        "effectiveDateTime": effective,
        "issued": issued,
        "specimen": specimen_ref,
    }
    if row.loinc:  # every reported class has one today; a future class without one is sent as text
        observation["code"]["coding"] = [{"system": LOINC, "code": row.loinc.code, "display": row.loinc.name}]
    if row.reference_low is not None:
        observation["referenceRange"] = [
            {"low": quantity(row.reference_low), "high": quantity(row.reference_high)}
        ]
    if row.value is None:
        observation["dataAbsentReason"] = {
            "coding": [{"system": DATA_ABSENT, "code": "temp-unknown", "display": "Temporarily Unknown"}],
            "text": "No white cell of this specimen has been counted yet.",
        }
    else:
        observation["valueQuantity"] = quantity(row.value)
        if row.reference_low is not None:
            flag = row.flag or "N"
            observation["interpretation"] = [
                {"coding": [{"system": INTERPRETATION, "code": flag, "display": FLAG_DISPLAY[flag]}]}
            ]
        observation["note"] = [
            {"text": f"{row.count} per {counted} white cells counted." if per_100
             else f"{row.count} of {counted} counted cells."}
        ]
    return observation


def specimen_bundle(specimen, differential: Differential, *, now=None) -> dict:
    """A validated FHIR R4 ``collection`` Bundle: DiagnosticReport, Specimen, one Observation per
    reported class."""
    now = now or timezone.now()
    accession = specimen.accession
    status = report_status(differential)
    effective = _instant(specimen.created_at)
    issued = _instant(specimen.signed_at or now)
    specimen_url = _urn(accession, "specimen")
    report_url = _urn(accession, "report")
    specimen_ref = {"reference": specimen_url, "display": f"Specimen {accession}"}

    per_100 = {row.label for row in differential.per_100_white_cells}
    observations = [
        _observation(
            row,
            per_100=row.label in per_100,
            accession=accession,
            status=status,
            effective=effective,
            issued=issued,
            specimen_ref=specimen_ref,
            counted=differential.counted_cells,
        )
        for row in differential.reported
    ]
    specimen_resource = {
        "resourceType": "Specimen",
        "id": specimen_url.removeprefix("urn:uuid:"),
        "accessionIdentifier": {"system": ACCESSION_SYSTEM, "value": accession},
        "status": "available",
        "type": {"coding": [{"system": SPECIMEN_TYPE, "code": "BLD", "display": "Whole blood"}]},
        "receivedTime": effective,
    }
    report = {
        "resourceType": "DiagnosticReport",
        "id": report_url.removeprefix("urn:uuid:"),
        "identifier": [{"system": ACCESSION_SYSTEM, "value": accession}],
        "status": status,
        "category": [{"coding": [{"system": DIAGNOSTIC_SERVICE, "code": "HM", "display": "Hematology"}]}],
        "code": {
            "coding": [{"system": LOINC, "code": PANEL[0], "display": PANEL[1]}],
            "text": "White-cell differential",
        },
        "effectiveDateTime": effective,
        "issued": issued,
        "performer": [{"display": lab_name()}],
        "specimen": [specimen_ref],
        "result": [
            {
                "reference": _urn(accession, "observation", row.label),
                "display": _text(row, row.label in per_100),
            }
            for row in differential.reported
        ],
        "conclusion": _conclusion(differential),
    }
    if differential.signed:
        report["resultsInterpreter"] = [{"display": differential.signed_by}]

    entries = [
        {"fullUrl": report_url, "resource": report},
        {"fullUrl": specimen_url, "resource": specimen_resource},
    ]
    entries += [{"fullUrl": f"urn:uuid:{obs['id']}", "resource": obs} for obs in observations]
    bundle = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "identifier": {"system": ACCESSION_SYSTEM, "value": accession},
        "type": "collection",
        "timestamp": _instant(now),
        "entry": entries,
    }
    # Validate against the R4B models: a bug here must fail loudly, never reach the LIS.
    return Bundle.model_validate(bundle).model_dump(mode="json", by_alias=True, exclude_none=True)
