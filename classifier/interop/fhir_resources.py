"""The FHIR R4 resources of a result, one function each; ``fhir.specimen_bundle`` puts them in a Bundle.

Each takes the ``ResultReport`` and ``refs`` (the references to the Bundle's other entries:
``specimen`` always, ``patient`` and ``request`` with an order, ``device`` with a model version).
"""

import re
import uuid

from django.utils import timezone

from classifier.cells.differential import WBC_UCUM, AbsoluteRow, Differential, Row
from classifier.cells.ranges import Range
from classifier.interop import Release, codes, lab_name
from classifier.interop.codes import (
    COUNTED,
    LOINC,
    NOT_COUNTED_SUFFIX,
    PANEL,
    PER_100_WHITE_UNIT,
    UCUM,
    UNIDENTIFIED,
)
from classifier.interop.result import ResultReport

INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DIAGNOSTIC_SERVICE = "http://terminology.hl7.org/CodeSystem/v2-0074"
SPECIMEN_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0487"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
ACCESSION_SYSTEM = "urn:hematovision:accession"
OBSERVATION_SYSTEM = "urn:hematovision:observation"
LOCAL_CODES = "urn:hematovision:code"  # local codes, as HL7's 99HV
EXTERNAL_ID_SYSTEM = "urn:hematovision:external-id"  # + ":<submitter>": external_id is unique per user
CELL_SYSTEM = "urn:hematovision:cell"
DEVICE_SYSTEM = "urn:hematovision:model-version"
IDENTIFIER_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"
GENDER = {"F": "female", "M": "male", "O": "other", "U": "unknown"}
_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
FLAG_DISPLAY = {"H": "High", "L": "Low", "N": "Normal"}
SNOMED = "http://snomed.info/sct"
SNOMED_SEX = {"F": ("248152002", "Female (finding)"), "M": ("248153007", "Male (finding)")}
REFERENCE_NORMAL = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/referencerange-meaning",
            "code": "normal",
            "display": "Normal Range",
        }
    ]
}
AGE_UNITS = {"mo": "months", "a": "years"}  # UCUM code -> unit as people read it
LABORATORY = [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "laboratory", "display": "Laboratory"}]}]

_NAMESPACE = uuid.UUID("5b0f3c1e-7d0a-4d51-9a8e-2f6f3f1b9e21")


def urn(*parts: str) -> str:
    """A stable ``urn:uuid`` full URL for an entry, derived from the accession and its name."""
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, ':'.join(parts))}"


def search(system: str, value: str) -> str:
    return f"identifier={system}|{value}"


def instant(value) -> str:
    return timezone.localtime(value).isoformat(timespec="seconds")


def authority_system(authority: str) -> str:
    """A FHIR identifier system for an HL7 assigning authority: ``urn:oid:`` for an OID, else a URN."""
    return f"urn:oid:{authority}" if _OID.match(authority) else f"urn:hematovision:authority:{authority}"


def placer_system(order) -> str:
    return f"urn:hematovision:placer:{order.placer_namespace or 'LIS'}"


def local_coding(key: str) -> list[dict]:
    """The lab's own code for the panel or a class as a second coding (``HEMATOVISION_LOCAL_CODES``)."""
    local = codes.local_code(key)
    return [{"system": codes.local_system_fhir(), "code": local[0], "display": local[1]}] if local else []


def _percent(value: float) -> dict:
    return {"value": value, "unit": "%", "system": UCUM, "code": "%"}


def _per_100_white(value: float) -> dict:
    return {"value": value, "unit": PER_100_WHITE_UNIT[0], "system": UCUM, "code": PER_100_WHITE_UNIT[0]}


def _per_litre(value: float) -> dict:
    return {"value": value, "unit": "10^9/L", "system": UCUM, "code": WBC_UCUM}


def _interpretation(flag: str | None) -> list[dict]:
    flag = flag or "N"
    return [{"coding": [{"system": INTERPRETATION, "code": flag, "display": FLAG_DISPLAY[flag]}]}]


def _plural(count: int, name: str) -> str:
    return f"{count} {name.lower()}{'' if count == 1 else 's'}"


def _conclusion(differential: Differential, release: Release | None = None) -> str:
    parts = [f"{differential.counted_cells} of {differential.total_cells} cells counted"]
    if differential.not_counted:
        parts.append(
            "not counted: " + ", ".join(_plural(row.count, row.name) for row in differential.not_counted)
        )
    if differential.unidentified:
        parts.append(f"{differential.unidentified} unidentified awaiting review")
    if differential.pending:
        parts.append(f"{differential.pending} pending analysis")
    if release:
        parts.append(f"verified and signed by {release.signer_name}")
    elif differential.signed:
        parts.append(f"verified and signed by {differential.signed_by}")
    else:
        parts.append("machine pre-classification, not yet verified by a reviewer")
    return "; ".join(parts) + "."


def _observation_base(report: ResultReport, refs: dict, identifier: str) -> dict:
    """What every Observation of the report says: identifier, order, status, subject, times, device."""
    return {
        "resourceType": "Observation",
        "identifier": [{"system": OBSERVATION_SYSTEM, "value": f"{report.accession}-{identifier}"}],
        **({"basedOn": [refs["request"]]} if "request" in refs else {}),
        "status": report.status,
        "category": LABORATORY,
        "code": {},
        **({"subject": refs["patient"]} if "patient" in refs else {}),
        "effectiveDateTime": instant(report.collected_at),
        "issued": instant(report.issued_at),
        "specimen": refs["specimen"],
        **({"device": refs["device"]} if "device" in refs else {}),
    }


def observation(report: ResultReport, row: Row, refs: dict) -> dict:
    """One reported class: its value (% or per 100 white cells), reference range and H/L/N flag."""
    per_100 = report.per_100(row)
    quantity = _per_100_white if per_100 else _percent
    resource = _observation_base(report, refs, row.label)
    resource["code"] = {"text": row.name + (" per 100 white cells" if per_100 else " %")}
    loinc = report.code(row)  # every reported class has one today; a future class's is text only
    coding = [{"system": LOINC, "code": loinc.code, "display": loinc.name}] if loinc else []
    coding += local_coding(row.label)
    if coding:
        resource["code"]["coding"] = coding
    if row.reference is not None:
        resource["referenceRange"] = [reference_range(row.reference, quantity)]
    if row.value is None:
        resource["dataAbsentReason"] = {
            "coding": [{"system": DATA_ABSENT, "code": "temp-unknown", "display": "Temporarily Unknown"}],
            "text": "No white cell of this specimen has been counted yet.",
        }
        return resource
    resource["valueQuantity"] = quantity(row.value)
    if row.reference is not None and not report.differential.flags_withheld:
        resource["interpretation"] = _interpretation(row.flag)
    resource["note"] = [{"text": report.row_note(row) + "."}]
    return resource


def absolute_observation(report: ResultReport, row: AbsoluteRow, refs: dict) -> dict:
    """One white-cell class's absolute count (UCUM 10*9/L): its share of the order's white-cell count,
    with the adult absolute range and its flag (none below the minimum count, like the percentages)."""
    resource = _observation_base(report, refs, f"{row.label}-ABS")
    resource["code"] = {"text": f"{row.name} # (absolute count)"}
    if row.loinc:
        resource["code"]["coding"] = [{"system": LOINC, "code": row.loinc.code, "display": row.loinc.name}]
    resource["valueQuantity"] = _per_litre(row.value)
    if row.reference is not None:
        resource["referenceRange"] = [reference_range(row.reference, _per_litre)]
        if not report.differential.flags_withheld:
            resource["interpretation"] = _interpretation(row.flag)
    resource["note"] = [{"text": report.absolute_note(row) + "."}]
    return resource


def _age(value: int, unit: str) -> dict:
    return {"value": value, "unit": AGE_UNITS[unit], "system": UCUM, "code": unit}


def reference_range(reference: Range, quantity) -> dict:
    """Observation.referenceRange: the bounds applied, whom they apply to (``appliesTo``: the sex,
    SNOMED CT, when the range is sex-specific, and the population in words), the ``age`` band."""
    applies = {"text": reference.text}
    if reference.sex:
        applies["coding"] = [{"system": SNOMED, "code": SNOMED_SEX[reference.sex][0],
                              "display": SNOMED_SEX[reference.sex][1]}]
    result = {
        "low": quantity(reference.low),
        "high": quantity(reference.high),
        "type": REFERENCE_NORMAL,
        "appliesTo": [applies],
    }
    band = reference.band
    if band is not None:
        result["age"] = {"low": _age(band.low, band.unit)}
        if band.high is not None:
            result["age"]["high"] = _age(band.high, band.unit)
    result["text"] = reference.text
    return result


def counts_observation(report: ResultReport, refs: dict) -> dict:
    """The cells behind the percentages as a result of their own: white cells counted (the value),
    unidentified cells and each class listed but not counted (components)."""
    differential = report.differential
    cells = {"unit": "cells", "system": UCUM, "code": "{cells}"}
    components = [
        {"code": {"text": UNIDENTIFIED[1]}, "valueQuantity": {"value": differential.unidentified, **cells}}
    ]
    components += [
        {
            "code": {"text": f"{row.name}{NOT_COUNTED_SUFFIX}"},
            "valueQuantity": {"value": row.count, **cells},
        }
        for row in differential.not_counted
    ]
    resource = _observation_base(report, refs, "COUNTED")
    resource["code"] = {
        "coding": [{"system": LOCAL_CODES, "code": COUNTED[0], "display": COUNTED[1]}],
        "text": COUNTED[1],
    }
    resource["valueQuantity"] = {"value": differential.counted_cells, **cells}
    resource["component"] = components
    return resource


def patient(order) -> dict:
    resource = {
        "resourceType": "Patient",
        "identifier": [
            {
                "use": "usual",
                "type": {
                    "coding": [{"system": IDENTIFIER_TYPE, "code": "MR", "display": "Medical record number"}]
                },
                "system": authority_system(order.patient_id_authority),
                "value": order.patient_id,
                "assigner": {"display": order.patient_id_authority},
            }
        ],
        "gender": GENDER.get(order.patient_sex, "unknown"),
    }
    name = {
        k: v
        for k, v in (
            ("family", order.patient_family_name),
            ("given", [order.patient_given_name] if order.patient_given_name else None),
        )
        if v
    }
    if name:
        resource["name"] = [name]
    if order.patient_birth_date:
        resource["birthDate"] = order.patient_birth_date.isoformat()
    return resource


def service_request(report: ResultReport, refs: dict) -> dict:
    order = report.order
    request = {
        "resourceType": "ServiceRequest",
        "identifier": [
            {
                "type": {
                    "coding": [{"system": IDENTIFIER_TYPE, "code": "PLAC", "display": "Placer Identifier"}]
                },
                "system": placer_system(order),
                "value": order.placer_order_number,
            }
        ],
        "status": "completed" if report.status in ("final", "corrected") else "active",
        "intent": "order",
        "code": {"coding": [{"system": LOINC, "code": PANEL[0], "display": PANEL[1]}]},
        "subject": refs["patient"],
        "specimen": [refs["specimen"]],
    }
    name = " ".join(p for p in (order.ordering_provider_given_name, order.ordering_provider_family_name) if p)
    if order.ordering_provider_id or name:
        requester = {}
        if order.ordering_provider_id:
            requester["identifier"] = {"value": order.ordering_provider_id}
        if name:
            requester["display"] = name
        request["requester"] = requester
    return request


def specimen(report: ResultReport, refs: dict) -> dict:
    with_order = report.order is not None
    return {
        "resourceType": "Specimen",
        "accessionIdentifier": {"system": ACCESSION_SYSTEM, "value": report.accession},
        "status": "available",
        "type": {"coding": [{"system": SPECIMEN_TYPE, "code": "BLD", "display": "Whole blood"}]},
        **({"subject": refs["patient"], "request": [refs["request"]]} if with_order else {}),
        "receivedTime": instant(report.specimen.created_at),
        "collection": {"collectedDateTime": instant(report.collected_at)},
    }


def media(report: ResultReport, refs: dict, pk: int, owner: str, external_id: str) -> dict:
    """One image the LIS sent with its own id (``external_id``), so it can match its images."""
    return {
        "resourceType": "Media",
        "identifier": [
            {"system": f"{EXTERNAL_ID_SYSTEM}:{owner}", "value": external_id},
            {"system": CELL_SYSTEM, "value": str(pk)},
        ],
        "status": "completed",
        **({"subject": refs["patient"]} if report.order is not None else {}),
        "content": {"url": f"/api/v1/classifications/{pk}/image/", "title": f"Cell #{pk}"},
    }


def device(model_versions: tuple[str, ...]) -> dict:
    """The model version(s) that read the cells, the most cells first."""
    return {
        "resourceType": "Device",
        "identifier": [{"system": DEVICE_SYSTEM, "value": model_versions[0]}],
        "deviceName": [{"name": "HematoVision white-cell classifier", "type": "model-name"}],
        "version": [{"value": v} for v in model_versions],
        "owner": {"display": lab_name()},
    }


def diagnostic_report(report: ResultReport, refs: dict, *, results: list, media_urls: list[str]) -> dict:
    """The report itself: panel code, status, performer, interpreter, conclusion and comments.
    ``results``: (full URL, Observation) of each result; ``media_urls``: those of the images."""
    differential, release = report.differential, report.release
    resource = {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": ACCESSION_SYSTEM, "value": report.accession}],
        **({"basedOn": [refs["request"]]} if report.order is not None else {}),
        "status": report.status,
        "category": [{"coding": [{"system": DIAGNOSTIC_SERVICE, "code": "HM", "display": "Hematology"}]}],
        "code": {
            "coding": [
                {"system": LOINC, "code": report.panel[0], "display": report.panel[1]},
                *local_coding(codes.LOCAL_PANEL_KEY),
            ],
            "text": "White-cell differential",
        },
        **({"subject": refs["patient"]} if report.order is not None else {}),
        "effectiveDateTime": instant(report.collected_at),
        "issued": instant(report.issued_at),
        "performer": [{"display": lab_name()}],
        "specimen": [refs["specimen"]],
        "result": [{"reference": url, "display": obs["code"]["text"]} for url, obs in results],
        "conclusion": " ".join([_conclusion(differential, release), *report.notes]),
    }
    if media_urls:
        resource["media"] = [{"link": {"reference": url}} for url in media_urls]
    if release:
        resource["resultsInterpreter"] = [
            {"identifier": {"value": release.signer_id}, "display": release.signer_name}
        ]
    elif differential.signed:
        resource["resultsInterpreter"] = [{"display": differential.signed_by}]
    return resource
