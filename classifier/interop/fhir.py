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
* The DiagnosticReport's ``performer`` is the lab's name
  (``HEMATOVISION_LAB_NAME``), or ``HEMATOVISION`` when that is empty, as in the
  HL7 message's MSH-4 (FHIR forbids an empty ``display``).

What the report says (status, times, comments) is the ``ResultReport`` that HL7 reads too
(``interop.result``); each resource is built in ``fhir_resources``; the API's CapabilityStatement and
OperationOutcome are in ``fhir_server``.
"""

from fhir.resources.R4B.bundle import Bundle

from classifier.interop import fhir_resources as resources
from classifier.interop.fhir_resources import ACCESSION_SYSTEM, CELL_SYSTEM, DEVICE_SYSTEM, OBSERVATION_SYSTEM
from classifier.interop.result import ResultReport

FHIR_MEDIA_TYPE = "application/fhir+json"


class _Entries(list):
    """A transaction's entries: each with its full URL, resource and idempotent request (conditional
    create for POST, conditional update for PUT)."""

    def add(self, url: str, resource: dict, method: str, search: str):
        request_url = resource["resourceType"]
        request = {"method": method, "url": f"{request_url}?{search}" if method == "PUT" else request_url}
        if method == "POST":
            request["ifNoneExist"] = search
        self.append({"fullUrl": url, "resource": resource, "request": request})


def _refs(report: ResultReport, urls: dict) -> dict:
    refs = {"specimen": {"reference": urls["specimen"], "display": f"Specimen {report.accession}"}}
    if report.order is not None:
        refs["patient"] = {"reference": urls["patient"]}
        refs["request"] = {"reference": urls["request"]}
    if report.model_versions:
        refs["device"] = {
            "reference": urls["device"],
            "display": f"HematoVision model {report.model_versions[0]}",
        }
    return refs


def _observations(report: ResultReport, refs: dict) -> list[tuple[str, dict]]:
    """(full URL, Observation): one per reported class, the absolute counts (with the order's
    white-cell count), then the cells counted."""
    observations = [resources.observation(report, row, refs) for row in report.differential.reported]
    absolute = report.differential.absolute
    observations += [resources.absolute_observation(report, row, refs) for row in absolute]
    observations.append(resources.counts_observation(report, refs))
    return [
        (resources.urn(report.accession, "observation", obs["identifier"][0]["value"]), obs)
        for obs in observations
    ]


def _media(report: ResultReport, refs: dict) -> list[tuple[str, dict, int]]:
    """(full URL, Media, cell id): one per image the LIS sent with its own id."""
    return [
        (
            resources.urn(report.accession, "media", str(pk)),
            resources.media(report, refs, pk, owner, external_id),
            pk,
        )
        for pk, owner, external_id in report.images
    ]


def _add_context(entries: _Entries, report: ResultReport, urls: dict, refs: dict) -> None:
    """The order's Patient and ServiceRequest (with an order) and the model's Device (with a version)."""
    order = report.order
    if order is not None:
        patient = resources.patient(order)
        entries.add(
            urls["patient"],
            patient,
            "POST",
            resources.search(patient["identifier"][0]["system"], order.patient_id),
        )
        entries.add(
            urls["request"],
            resources.service_request(report, refs),
            "POST",
            resources.search(resources.placer_system(order), order.placer_order_number),
        )
    if report.model_versions:
        entries.add(
            urls["device"],
            resources.device(report.model_versions),
            "POST",
            resources.search(DEVICE_SYSTEM, report.model_versions[0]),
        )


def _validated(report: ResultReport, entries: _Entries) -> dict:
    """The transaction Bundle of ``entries``, validated against the R4B models and dumped as JSON:
    a bug here must fail loudly, never reach the LIS."""
    bundle = {
        "resourceType": "Bundle",
        "identifier": {"system": ACCESSION_SYSTEM, "value": report.accession},
        "type": "transaction",
        "timestamp": resources.instant(report.now),
        "entry": list(entries),
    }
    return Bundle.model_validate(bundle).model_dump(mode="json", by_alias=True, exclude_none=True)


def specimen_bundle(report: ResultReport) -> dict:
    """A validated FHIR R4 ``transaction`` Bundle: DiagnosticReport, Specimen, one Observation per
    reported class and one for the cells counted; with an order also Patient and ServiceRequest;
    with a model version a Device; a Media per image the LIS sent with its own id."""
    accession = report.accession
    urls = {
        name: resources.urn(accession, name)
        for name in ("specimen", "report", "patient", "request", "device")
    }
    refs = _refs(report, urls)
    observations = _observations(report, refs)
    media = _media(report, refs)
    diagnostic_report = resources.diagnostic_report(
        report, refs, results=observations, media_urls=[url for url, _, _ in media]
    )

    entries = _Entries()
    # The report first (readers find it at entry[0]); a server orders a transaction's work by method.
    entries.add(urls["report"], diagnostic_report, "PUT", resources.search(ACCESSION_SYSTEM, accession))
    entries.add(
        urls["specimen"],
        resources.specimen(report, refs),
        "POST",
        f"accession={ACCESSION_SYSTEM}|{accession}",
    )
    _add_context(entries, report, urls, refs)
    for url, resource, pk in media:
        entries.add(url, resource, "POST", resources.search(CELL_SYSTEM, str(pk)))
    for url, obs in observations:
        entries.add(url, obs, "PUT", resources.search(OBSERVATION_SYSTEM, obs["identifier"][0]["value"]))
    return _validated(report, entries)
