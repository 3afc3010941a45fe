"""The white-cell differential of one specimen as a FHIR R4 Bundle.

Built and validated with ``fhir.resources.R4B``. fhir.resources 8.x models R5
at its top level (``fhir.resources.bundle`` is R5), and it ships no plain R4
package; R4B (4.3.0) is the R4 line's maintenance release and its Bundle,
DiagnosticReport, Observation and Specimen are the same on the wire as R4
4.0.1 for every element used here. R5 differs (e.g. DiagnosticReport gained
``note`` and ``study``, ``imagingStudy`` left), so validating against the
top-level models would check the wrong version for an R4 LIS.

Deliberate choices:

* Bundle ``type`` is ``transaction`` (issue 19), what an EHR's FHIR server
  accepts on ``POST [base]``. Entries use ``urn:uuid`` full URLs derived from the
  accession (references between entries resolve inside the Bundle; the server
  rewrites them to the ids it assigns) and carry no ``id``. Each entry's
  ``request`` is idempotent: Patient, ServiceRequest, Specimen and Device are
  conditional creates (``POST`` with ``ifNoneExist`` on their identifier), the
  DiagnosticReport and its Observations conditional updates (``PUT
  Type?identifier=system|value``), so a resent or corrected version replaces the
  earlier one instead of adding a second (FHIR R4 http.html "conditional create",
  "conditional update"; bundle.html "transaction").
* Identity from the LIS order (``models.Order``): a Patient (MRN with its
  assigning authority, name, birth date, gender), a ServiceRequest (placer order
  number, requester), and every resource's ``subject``/``basedOn`` point at them.
  Without an order there is no Patient and no ``subject``: none is invented (R4
  makes both optional); the Specimen's ``accessionIdentifier`` still names it.
* The model version that read the cells is a Device, each Observation's ``device``.
* Status: ``preliminary`` until signed, ``final``, and ``corrected`` for an
  amended version (R4 ObservationStatus/DiagnosticReportStatus: "corrected" is
  the kind of "amended" where a result was wrong and has been fixed).
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

import re
import uuid

from django.utils import timezone
from fhir.resources.R4B.bundle import Bundle

from classifier.cells.differential import Differential, Row
from classifier.interop import APPLICATION, Release, lab_name

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
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


def _text(row: Row, per_100: bool) -> str:
    return row.name + (" per 100 white cells" if per_100 else " %")


def authority_system(authority: str) -> str:
    """A FHIR identifier system for an HL7 assigning authority: ``urn:oid:`` for an OID, else a URN."""
    return f"urn:oid:{authority}" if _OID.match(authority) else f"urn:hematovision:authority:{authority}"


def _search(system: str, value: str) -> str:
    return f"identifier={system}|{value}"


def _observation(  # noqa: PLR0913 - keyword-only: one Observation's coded fields
    row: Row, *, per_100: bool, accession, status, effective, issued, refs: dict, counted, flags: bool
) -> dict:
    quantity = _per_100_white if per_100 else _percent
    observation = {
        "resourceType": "Observation",
        "identifier": [{"system": OBSERVATION_SYSTEM, "value": f"{accession}-{row.label}"}],
        **({"basedOn": [refs["request"]]} if "request" in refs else {}),
        "status": status,
        "category": [
            {"coding": [{"system": OBSERVATION_CATEGORY, "code": "laboratory", "display": "Laboratory"}]}
        ],
        "code": {"text": _text(row, per_100)},
        **({"subject": refs["patient"]} if "patient" in refs else {}),
        "effectiveDateTime": effective,
        "issued": issued,
        "specimen": refs["specimen"],
        **({"device": refs["device"]} if "device" in refs else {}),
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
        if row.reference_low is not None and flags:
            flag = row.flag or "N"
            observation["interpretation"] = [
                {"coding": [{"system": INTERPRETATION, "code": flag, "display": FLAG_DISPLAY[flag]}]}
            ]
        observation["note"] = [
            {
                "text": f"{row.count} per {counted} white cells counted."
                if per_100
                else f"{row.count} of {counted} counted cells."
            }
        ]
    return observation


def _counts_observation(differential: Differential, *, accession, status, effective, issued, refs) -> dict:
    """The cells behind the percentages as a result of their own: white cells counted (the value),
    unidentified cells and each class listed but not counted (components)."""
    cells = {"unit": "cells", "system": UCUM, "code": "{cells}"}
    components = [
        {
            "code": {"text": "Unidentified cells awaiting review"},
            "valueQuantity": {"value": differential.unidentified, **cells},
        }
    ]
    components += [
        {
            "code": {"text": f"{row.name} (listed, not counted)"},
            "valueQuantity": {"value": row.count, **cells},
        }
        for row in differential.not_counted
    ]
    return {
        "resourceType": "Observation",
        "identifier": [{"system": OBSERVATION_SYSTEM, "value": f"{accession}-COUNTED"}],
        **({"basedOn": [refs["request"]]} if "request" in refs else {}),
        "status": status,
        "category": [
            {"coding": [{"system": OBSERVATION_CATEGORY, "code": "laboratory", "display": "Laboratory"}]}
        ],
        "code": {
            "coding": [{"system": LOCAL_CODES, "code": "WBC-COUNTED", "display": "White cells counted"}],
            "text": "White cells counted",
        },
        **({"subject": refs["patient"]} if "patient" in refs else {}),
        "effectiveDateTime": effective,
        "issued": issued,
        "specimen": refs["specimen"],
        **({"device": refs["device"]} if "device" in refs else {}),
        "valueQuantity": {"value": differential.counted_cells, **cells},
        "component": components,
    }


def _patient(order) -> dict:
    patient = {
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
        patient["name"] = [name]
    if order.patient_birth_date:
        patient["birthDate"] = order.patient_birth_date.isoformat()
    return patient


def _placer_system(order) -> str:
    return f"urn:hematovision:placer:{order.placer_namespace or 'LIS'}"


def _service_request(order, *, status, refs) -> dict:
    request = {
        "resourceType": "ServiceRequest",
        "identifier": [
            {
                "type": {
                    "coding": [{"system": IDENTIFIER_TYPE, "code": "PLAC", "display": "Placer Identifier"}]
                },
                "system": _placer_system(order),
                "value": order.placer_order_number,
            }
        ],
        "status": "completed" if status in ("final", "corrected") else "active",
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


def specimen_bundle(  # noqa: C901, PLR0913 - TODO(issue 17): split per resource (Patient, ServiceRequest, Observations); keyword-only context
    specimen,
    differential: Differential,
    *,
    order=None,
    release: Release | None = None,
    issued=None,
    model_versions: tuple[str, ...] = (),
    comment: str = "",
    images: tuple[tuple[int, str, str], ...] = (),
    now=None,
) -> dict:
    """A validated FHIR R4 ``transaction`` Bundle: DiagnosticReport, Specimen, one Observation per
    reported class and one for the cells counted; with an order also Patient and ServiceRequest;
    with a model version a Device. ``release``/``issued`` as in ``hl7.oru_r01``."""
    now = now or timezone.now()
    accession = specimen.accession
    status = ("corrected" if release.corrected else "final") if release else report_status(differential)
    collected = order.collected_at if order and order.collected_at else specimen.created_at
    effective = _instant(collected)
    issued = _instant(release.released_at if release else (issued or specimen.signed_at or now))
    urls = {name: _urn(accession, name) for name in ("specimen", "report", "patient", "request", "device")}
    refs = {"specimen": {"reference": urls["specimen"], "display": f"Specimen {accession}"}}
    entries = []

    def add(url, resource, method, request_url, search):
        request = {"method": method, "url": f"{request_url}?{search}" if method == "PUT" else request_url}
        if method == "POST":
            request["ifNoneExist"] = search
        entries.append({"fullUrl": url, "resource": resource, "request": request})

    if order is not None:
        refs["patient"] = {"reference": urls["patient"]}
        refs["request"] = {"reference": urls["request"]}
    if model_versions:
        refs["device"] = {"reference": urls["device"], "display": f"HematoVision model {model_versions[0]}"}

    per_100 = {row.label for row in differential.per_100_white_cells}
    common = {
        "accession": accession,
        "status": status,
        "effective": effective,
        "issued": issued,
        "refs": refs,
    }
    observations = [
        _observation(
            row,
            per_100=row.label in per_100,
            counted=differential.counted_cells,
            flags=not differential.flags_withheld,
            **common,
        )
        for row in differential.reported
    ] + [_counts_observation(differential, **common)]
    obs_urls = [_urn(accession, "observation", o["identifier"][0]["value"]) for o in observations]

    specimen_resource = {
        "resourceType": "Specimen",
        "accessionIdentifier": {"system": ACCESSION_SYSTEM, "value": accession},
        "status": "available",
        "type": {"coding": [{"system": SPECIMEN_TYPE, "code": "BLD", "display": "Whole blood"}]},
        **({"subject": refs["patient"], "request": [refs["request"]]} if order is not None else {}),
        "receivedTime": _instant(specimen.created_at),
        "collection": {"collectedDateTime": effective},
    }
    notes = []
    if release and release.corrected:
        notes.append(f"Corrected report (version {release.number}): {release.reason}")
    if comment:
        notes.append(f"Reviewer's comment: {comment}")
    if differential.flag_comment:
        notes.append(differential.flag_comment)
    report = {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": ACCESSION_SYSTEM, "value": accession}],
        **({"basedOn": [refs["request"]]} if order is not None else {}),
        "status": status,
        "category": [{"coding": [{"system": DIAGNOSTIC_SERVICE, "code": "HM", "display": "Hematology"}]}],
        "code": {
            "coding": [{"system": LOINC, "code": PANEL[0], "display": PANEL[1]}],
            "text": "White-cell differential",
        },
        **({"subject": refs["patient"]} if order is not None else {}),
        "effectiveDateTime": effective,
        "issued": issued,
        "performer": [{"display": lab_name()}],
        "specimen": [refs["specimen"]],
        "result": [
            {"reference": url, "display": obs["code"]["text"]}
            for url, obs in zip(obs_urls, observations, strict=True)
        ],
        "conclusion": " ".join([_conclusion(differential, release), *notes]),
    }
    media = []
    for pk, owner, external_id in images:  # the LIS's own ids of the images it sent
        url = _urn(accession, "media", str(pk))
        resource = {
            "resourceType": "Media",
            "identifier": [
                {"system": f"{EXTERNAL_ID_SYSTEM}:{owner}", "value": external_id},
                {"system": CELL_SYSTEM, "value": str(pk)},
            ],
            "status": "completed",
            **({"subject": refs["patient"]} if order is not None else {}),
            "content": {"url": f"/api/v1/classifications/{pk}/image/", "title": f"Cell #{pk}"},
        }
        media.append((url, resource, _search(CELL_SYSTEM, str(pk))))
    if media:
        report["media"] = [{"link": {"reference": url}} for url, _, _ in media]
    if release:
        report["resultsInterpreter"] = [
            {"identifier": {"value": release.signer_id}, "display": release.signer_name}
        ]
    elif differential.signed:
        report["resultsInterpreter"] = [{"display": differential.signed_by}]

    # The report first (readers find it at entry[0]); a server orders a transaction's work by method.
    add(urls["report"], report, "PUT", "DiagnosticReport", _search(ACCESSION_SYSTEM, accession))
    add(urls["specimen"], specimen_resource, "POST", "Specimen", f"accession={ACCESSION_SYSTEM}|{accession}")
    if order is not None:
        patient = _patient(order)
        add(
            urls["patient"],
            patient,
            "POST",
            "Patient",
            _search(patient["identifier"][0]["system"], order.patient_id),
        )
        add(
            urls["request"],
            _service_request(order, status=status, refs=refs),
            "POST",
            "ServiceRequest",
            _search(_placer_system(order), order.placer_order_number),
        )
    if model_versions:
        device = {
            "resourceType": "Device",
            "identifier": [{"system": DEVICE_SYSTEM, "value": model_versions[0]}],
            "deviceName": [{"name": "HematoVision white-cell classifier", "type": "model-name"}],
            "version": [{"value": v} for v in model_versions],
            "owner": {"display": lab_name()},
        }
        add(urls["device"], device, "POST", "Device", _search(DEVICE_SYSTEM, model_versions[0]))
    for url, resource, search in media:
        add(url, resource, "POST", "Media", search)
    for url, obs in zip(obs_urls, observations, strict=True):
        add(url, obs, "PUT", "Observation", _search(OBSERVATION_SYSTEM, obs["identifier"][0]["value"]))

    bundle = {
        "resourceType": "Bundle",
        "identifier": {"system": ACCESSION_SYSTEM, "value": accession},
        "type": "transaction",
        "timestamp": _instant(now),
        "entry": entries,
    }
    # Validate against the R4B models: a bug here must fail loudly, never reach the LIS.
    return Bundle.model_validate(bundle).model_dump(mode="json", by_alias=True, exclude_none=True)


def operation_outcome(detail: str, code: str, status: int) -> dict:
    """An error as FHIR returns it (R4 OperationOutcome; issue type from the HTTP status)."""
    issue_type = {
        400: "invalid",
        401: "login",
        403: "forbidden",
        404: "not-found",
        406: "not-supported",
        429: "throttled",
    }.get(status, "exception")
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "code": issue_type, "details": {"text": code}, "diagnostics": detail}
        ],
    }


def capability_statement(*, base_url: str, now=None) -> dict:
    """What the FHIR face of the API offers: read-only results per specimen, as a transaction Bundle."""
    now = now or timezone.now()
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": _instant(now),
        "publisher": lab_name(),
        "kind": "instance",
        "software": {"name": APPLICATION},
        "implementation": {"description": "HematoVision white-cell differential results", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": [FHIR_MEDIA_TYPE, "json"],
        "rest": [
            {
                "mode": "server",
                "documentation": "Results per specimen: GET /api/v1/specimens/{accession}/fhir/ "
                "answers a transaction Bundle (Patient, ServiceRequest, Specimen, Device, "
                "DiagnosticReport, Observations) that an EHR's FHIR server accepts as it is; token "
                "authentication (Authorization: Token ...).",
                "security": {"description": "Authorization: Token <key> (POST /api/v1/auth/token/)."},
                "resource": [
                    {"type": t, "interaction": [{"code": "read"}]}
                    for t in (
                        "DiagnosticReport",
                        "Observation",
                        "Specimen",
                        "Patient",
                        "ServiceRequest",
                        "Device",
                    )
                ],
            }
        ],
    }
