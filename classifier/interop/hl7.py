"""The white-cell differential of one specimen as an HL7 v2.5.1 ORU^R01 message.

Built with hl7apy at STRICT validation level, so a message that breaks the
2.5.1 structure fails here rather than in the receiving LIS.

HematoVision holds no patient demographics, only the accession number the
LIS gave the order. ORU^R01 (and a strict 2.5.1 parser) still expects a PID
segment with an identifier (PID-3) and a name (PID-5), so PID-3 carries the
accession as a placeholder identifier with type code ``ACSN`` (accession ID,
HL7 table 0203) and PID-5 only the name type ``U`` (unspecified, table 0200):
no name is invented. The LIS matches the result to its own order and patient
by the accession in OBR-2/OBR-3 and SPM-2, as it does for analyser results.

Per reported class one OBX (the rows of the FHIR Observations): value type NM,
the class's LOINC code from the cell-class table, units ``%`` (UCUM) for the
white-cell classes and ``/100{WBCs}`` for nucleated red cells, reference range
``low-high``, abnormal flag H/L/N, and result status ``P`` (preliminary) until
a reviewer signs the specimen, ``F`` (final) after. A class with no counted
cell yet is sent without a value and status ``X`` (results cannot be obtained
for this observation... yet). Platelets, smudge cells and artefacts are not
results and are not sent.

MSH-4 is the lab's name (``HEMATOVISION_LAB_NAME``), escaped and cut to HD.1's
20 characters. MSH-18 is always ``UNICODE UTF-8`` (HL7 table 0211): the text is
always sent UTF-8-encoded, as the HTTP charset says too. Without MSH-18 a
receiver must assume ASCII, which is wrong as soon as the lab's name (say
"Labo Hématologie") is not ASCII; for an ASCII-only message the declaration is
just as true, and a constant header keeps the receiving interface's
configuration the same whatever the name.
"""

import uuid

from django.utils import timezone
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message

from ..cells.differential import Differential
from . import APPLICATION, lab_name
from .fhir import PANEL, PER_100_WHITE_UNIT

HL7_MEDIA_TYPE = "x-application/hl7-v2+er7"
VERSION = "2.5.1"
SENDING_APPLICATION = APPLICATION
CHARACTER_SET = "UNICODE UTF-8"  # HL7 table 0211; the ER7 text is always sent UTF-8-encoded


def _ts(value) -> str:
    return timezone.localtime(value).strftime("%Y%m%d%H%M%S%z")


# ER7 escape sequence of each delimiter (encoding characters ``|^~\\&``), the escape character first.
_ESCAPES = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"}
HD1_LENGTH = 20  # MSH-4.1 (HD.1, IS): 20 characters as sent, which a strict parser checks escaped


def _escape(text: str) -> str:
    """Escape HL7 delimiters in free text, character by character."""
    return "".join(_ESCAPES.get(ch, ch) for ch in text)


def _facility(name: str) -> str:
    """MSH-4 namespace id: the lab name, escaped and cut at a word to HD.1's 20 characters.

    The name is cut before it is escaped, so a cut never falls inside an escape
    sequence, and only as many characters are kept as fit escaped: a strict 2.5.1
    parser (hl7apy's) measures the field as it is sent.
    """
    kept = 0
    length = 0
    for ch in name:
        length += len(_ESCAPES.get(ch, ch))
        if length > HD1_LENGTH:
            break
        kept += 1
    cut = name[:kept]
    if kept < len(name) and name[kept] != " " and " " in cut:
        cut = cut.rsplit(" ", 1)[0]  # the last word did not fit: leave it out whole
    return _escape(cut.rstrip())


def _number(value: float) -> str:
    return f"{value:g}"


def oru_r01(specimen, differential: Differential, *, now=None, control_id: str | None = None) -> str:
    """The ER7 text of an ORU^R01 v2.5.1 message (each segment ends with a carriage return)."""
    now = now or timezone.now()
    accession = specimen.accession  # [A-Za-z0-9._-] only: no escaping needed
    final = differential.signed
    result_status = "F" if final else "P"
    facility = _facility(lab_name())

    msg = Message("ORU_R01", version=VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    msg.msh.msh_3 = SENDING_APPLICATION
    msg.msh.msh_4 = facility
    msg.msh.msh_7 = _ts(now)
    msg.msh.msh_9 = "ORU^R01^ORU_R01"
    msg.msh.msh_10 = control_id or uuid.uuid4().hex[:20]
    msg.msh.msh_11 = "P"
    msg.msh.msh_12 = VERSION
    msg.msh.msh_18 = CHARACTER_SET

    result = msg.add_group("ORU_R01_PATIENT_RESULT")
    patient = result.add_group("ORU_R01_PATIENT")
    patient.pid.pid_1 = "1"
    patient.pid.pid_3 = f"{accession}^^^{SENDING_APPLICATION}^ACSN"
    patient.pid.pid_5 = "^^^^^^U"

    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    order.obr.obr_1 = "1"
    order.obr.obr_2 = f"{accession}^{SENDING_APPLICATION}"
    order.obr.obr_3 = f"{accession}^{SENDING_APPLICATION}"
    order.obr.obr_4 = f"{PANEL[0]}^{PANEL[1]}^LN"
    order.obr.obr_7 = _ts(specimen.created_at)
    order.obr.obr_22 = _ts(specimen.signed_at or now)
    order.obr.obr_24 = "HM"
    order.obr.obr_25 = result_status

    counted = differential.counted_cells
    per_100 = {row.label for row in differential.per_100_white_cells}
    for index, row in enumerate(differential.reported, start=1):
        observation = order.add_group("ORU_R01_OBSERVATION")
        obx = observation.obx
        obx.obx_1 = str(index)
        obx.obx_2 = "NM"
        obx.obx_3 = f"{row.loinc.code}^{row.loinc.name}^LN" if row.loinc else f"^{_escape(row.name)}"
        unit = f"{PER_100_WHITE_UNIT[0]}^{PER_100_WHITE_UNIT[1]}" if row.label in per_100 else "%^percent"
        obx.obx_6 = f"{unit}^UCUM"
        if row.reference_low is not None:
            obx.obx_7 = f"{_number(row.reference_low)}-{_number(row.reference_high)}"
        if row.value is None:
            obx.obx_11 = "X"
        else:
            obx.obx_5 = _number(row.value)
            if row.reference_low is not None:
                obx.obx_8 = row.flag or "N"
            obx.obx_11 = "F" if final else "P"
        obx.obx_14 = _ts(specimen.created_at)
        if row.value is not None:
            note = observation.add_segment("NTE")
            note.nte_1 = "1"
            note.nte_3 = (
                f"{row.count} per {counted} white cells counted" if row.label in per_100
                else f"{row.count} of {counted} counted cells"
            )

    specimen_group = order.add_group("ORU_R01_SPECIMEN")
    specimen_group.spm.spm_1 = "1"
    specimen_group.spm.spm_2 = f"^{accession}&{SENDING_APPLICATION}"
    specimen_group.spm.spm_4 = "BLD^Whole blood^HL70487"

    msg.validate()
    return msg.to_er7() + "\r"  # every segment, the last one too, ends with a carriage return
