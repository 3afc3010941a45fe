"""LIS orders as HL7 v2: OML^O21 (v2.5+) and ORM^O01 (older LIS) in, an ACK out.

What is read (HL7 v2.5.1 OML_O21: MSH, [PATIENT: PID, ...], {ORDER: ORC, [TIMING], [OBSERVATION_REQUEST:
OBR, ..., {SPECIMEN: SPM, ...}]}; ORM_O01 alike without SPM):

* PID-3 the patient identifier list: the repetition with identifier type ``MR`` (else the first):
  CX.1 the MRN, CX.4 the assigning authority (HD namespace id, else its universal id). Required.
* PID-5 the name (XPN family ^ given), PID-7 date of birth, PID-8 sex (table 0001).
* ORC-1 order control: ``NW`` (new order) is filed; other controls are refused (AR, 201).
* ORC-2 (else OBR-2) the placer order number (EI number ^ namespace). Required.
* The accession: SPM-2 (EIP, placer-assigned then filler-assigned id), else ORC-3/OBR-3 the filler
  order number. Required: results are filed and returned under it.
* ORC-12 (else OBR-16) the ordering provider (XCN id ^ family ^ given); SPM-17 (else OBR-7) the
  collection time.
* The white-cell count, optional: an OBX of the order (OML_O21 OBSERVATION_REQUEST's OBSERVATION,
  ORM_O01's likewise) coded LOINC 6690-2 "Leukocytes [#/volume] in Blood by Automated count" or
  26464-8 "Leukocytes [#/volume] in Blood" (OBX-3, as CWE.1 or the alternate CWE.4), value type NM,
  OBX-5 the count and OBX-6 its unit: ``10*9/L``, ``10*3/uL`` (or ``10^9/L``, ``10^3/uL``, ``/nL``,
  ``K/uL``) as they are, ``/uL`` (cells per microlitre) divided by 1000. Stored in 10^9/L as the REST
  order's ``wbc_count``; a count that is not a number, negative, or in another unit is refused (AE 102).

Answers (original mode, HL7 table 0008): ``AA`` filed (or the same order again), ``AE`` understood
but refused (a required field missing, a conflict with a stored order: ERR-3 from table 0357 and
the reason in ERR-8), ``AR`` not processable (not OML^O21/ORM^O01, an unsupported version).
"""

from __future__ import annotations

import logging
import re
from datetime import date, datetime

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError

from classifier.interop.er7 import Er7, parse_date, parse_ts
from classifier.interop.mllp import ack

logger = logging.getLogger(__name__)

ACCEPTED_TYPES = {("OML", "O21"), ("ORM", "O01")}
ACCEPTED_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8")


class Refused(Exception):
    def __init__(self, code: str, reason: str, error_code: str):
        super().__init__(reason)
        self.code, self.reason, self.error_code = code, reason, error_code


# LOINC: 6690-2 (loinc.org mapping guidance: "most leukocyte counts ... will be reported under 6690-2")
# and 26464-8 (the count in panel 24318-8 "Manual Differential panel - Blood", loinc.org/24318-8).
WBC_CODES = {"6690-2", "26464-8"}
WBC_UNITS = {  # OBX-6 unit -> factor to 10^9/L
    **dict.fromkeys(("10*9/L", "10^9/L", "10*3/uL", "10^3/uL", "/nL", "K/uL", "10*3/ul", "10^3/ul"), 1.0),
    **dict.fromkeys(("/uL", "{cells}/uL", "/ul"), 0.001),
}


def _wbc_count(message: Er7) -> float | None:
    """The white-cell count in 10^9/L from the order's OBX coded 6690-2 or 26464-8; None without one."""
    for index, _ in enumerate(message.all("OBX")):
        code = {message.get("OBX", 3, 1, occurrence=index), message.get("OBX", 3, 4, occurrence=index)}
        if not code & WBC_CODES:
            continue
        raw = message.get("OBX", 5, occurrence=index)
        unit = message.get("OBX", 6, 1, occurrence=index)
        if message.get("OBX", 2, occurrence=index) not in ("NM", "") or not re.fullmatch(r"\d+(\.\d+)?", raw):
            raise Refused("AE", f"OBX-5 white-cell count {raw!r} is not a number (value type NM).", "102")
        if unit not in WBC_UNITS:
            reason = f"OBX-6 unit {unit!r} of the white-cell count is not understood; send 10*9/L or 10*3/uL."
            raise Refused("AE", reason, "102")
        return round(float(raw) * WBC_UNITS[unit], 3)
    return None


def _message(text: str) -> Er7:
    """The parsed message, once it is an order this endpoint files (type, version, PID, ORC NW)."""
    try:
        message = Er7(text)
    except ValueError as exc:
        raise Refused("AR", str(exc), "100") from exc
    kind = (message.get("MSH", 9, 1), message.get("MSH", 9, 2))
    if kind not in ACCEPTED_TYPES:
        raise Refused("AR", f"Unsupported message type {'^'.join(kind)}; send OML^O21 or ORM^O01.", "200")
    version = message.get("MSH", 12, 1)
    if version not in ACCEPTED_VERSIONS:
        raise Refused("AR", f"Unsupported HL7 version {version!r}.", "203")
    if not message.all("PID"):
        raise Refused("AE", "No PID segment: an order needs its patient.", "100")
    if not message.all("ORC"):
        raise Refused("AE", "No ORC segment.", "100")
    control = message.get("ORC", 1)
    if control != "NW":
        raise Refused("AR", f"Order control {control!r} is not supported; only NW (new order).", "201")
    return message


def _patient_identifier(message: Er7) -> tuple[str, str]:
    """PID-3's MR repetition (else the first): the MRN and its assigning authority, both required."""
    identifiers = message.repetitions("PID", 3)
    chosen = next(
        (r for r in identifiers if message.part(r, 5) == "MR"), identifiers[0] if identifiers else ""
    )
    mrn = message.part(chosen, 1)
    authority = message.part(chosen, 4, 1) or message.part(chosen, 4, 2)
    if not mrn or not authority:
        raise Refused(
            "AE", "PID-3 needs the patient's identifier and its assigning authority (CX.1, CX.4).", "101"
        )
    return mrn, authority


def _order_numbers(message: Er7) -> tuple[str, str, str]:
    """The placer order number and namespace (ORC-2, else OBR-2) and the accession, both required."""
    placer = message.get("ORC", 2, 1) or message.get("OBR", 2, 1)
    placer_ns = message.get("ORC", 2, 2) or message.get("OBR", 2, 2)
    if not placer:
        raise Refused("AE", "No placer order number (ORC-2 or OBR-2).", "101")
    accession = (
        message.get("SPM", 2, 1, 1)
        or message.get("SPM", 2, 2, 1)
        or message.get("ORC", 3, 1)
        or message.get("OBR", 3, 1)
    )
    if not accession:
        raise Refused(
            "AE", "No accession: send the specimen id in SPM-2 or the filler order number in ORC-3.", "101"
        )
    return placer, placer_ns, accession


def _dates(message: Er7) -> tuple[date | None, datetime | None]:
    """The patient's date of birth (PID-7) and the collection time (SPM-17, else OBR-7)."""
    try:
        birth_date = parse_date(message.get("PID", 7, 1))
        collected = parse_ts(message.get("SPM", 17, 1) or message.get("OBR", 7, 1))
    except ValueError as exc:
        raise Refused("AE", str(exc), "102") from exc
    return birth_date, collected


def _ordering_provider(message: Er7) -> dict:
    """The ordering provider's id and name: ORC-12 when it is there, else OBR-16."""
    segment, field = ("ORC", 12) if message.get("ORC", 12) else ("OBR", 16)
    return {
        "ordering_provider_id": message.get(segment, field, 1),
        "ordering_provider_family_name": message.get(segment, field, 2, 1),
        "ordering_provider_given_name": message.get(segment, field, 3),
    }


def parse_order(text: str) -> dict:
    """The order's facts as ``order_services.order_create`` takes them; raises Refused."""
    message = _message(text)
    mrn, authority = _patient_identifier(message)
    placer, placer_ns, accession = _order_numbers(message)
    birth_date, collected = _dates(message)
    sex = message.get("PID", 8)
    return {
        "accession": accession,
        "placer_order_number": placer,
        "placer_namespace": placer_ns,
        "patient_id": mrn,
        "patient_id_authority": authority,
        "patient_family_name": message.get("PID", 5, 1, 1),
        "patient_given_name": message.get("PID", 5, 2),
        "patient_birth_date": birth_date,
        "patient_sex": sex if sex in ("F", "M", "O", "U") else "U",
        **_ordering_provider(message),
        "collected_at": collected,
        "wbc_count": _wbc_count(message),
        "source": "hl7",
        "message_control_id": message.get("MSH", 10),
    }


def handle_order(text: str, *, user) -> str:
    """File the order in ``text`` as ``user`` (an Interface account); the ACK to send back."""
    from classifier.interop import order_services

    try:
        fields = parse_order(text)
        order, created = order_services.order_create(user=user, data=fields)
    except Refused as exc:
        logger.warning("HL7 order refused (%s %s): %s", exc.code, exc.error_code, exc.reason)
        return ack(text, exc.code, reason=exc.reason, error_code=exc.error_code)
    except ValidationError as exc:
        reason = " ".join(exc.messages)
        logger.warning("HL7 order refused (AE): %s", reason)
        return ack(text, "AE", reason=reason, error_code="205" if exc.code == "order_conflict" else "207")
    except PermissionDenied as exc:
        return ack(text, "AR", reason=str(exc), error_code="207")
    logger.info(
        "HL7 order %s for %s %s",
        order.placer_order_number,
        order.specimen.accession,
        "filed" if created else "already filed",
    )
    return ack(text, "AA")


def order_user(username: str):
    """The Interface account HL7 orders are filed as (HEMATOVISION_HL7_ORDER_USER)."""
    from classifier.permissions import can_order

    user = get_user_model().objects.get(username=username)
    if not can_order(user):
        raise PermissionDenied(f"{username} may not place orders: give it the Interface role.")
    return user
