"""The FHIR face of the API about itself: its CapabilityStatement and its errors (OperationOutcome)."""

from django.utils import timezone

from classifier.interop import APPLICATION, lab_name
from classifier.interop.fhir import FHIR_MEDIA_TYPE
from classifier.interop.fhir_resources import instant


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
        "date": instant(now),
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
