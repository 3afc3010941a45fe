"""The white-cell differential of one specimen as an HL7 v2.5.1 ORU^R01 message.

Built with hl7apy at STRICT validation level, so a message that breaks the
2.5.1 structure fails here rather than in the receiving LIS.

Identity (issue 19). The patient comes from the LIS order (``models.Order``):
PID-3 is the MRN with its assigning authority (``MRN^^^AUTH^MR``), PID-5 the
name, PID-7 the date of birth, PID-8 the sex; never the accession. A specimen
without an order is sent without a PID: the PATIENT group of ORU_R01 is optional
in 2.5.1 (MSH, {PATIENT_RESULT: [PATIENT: PID ...], {ORDER_OBSERVATION: [ORC], OBR,
...}}), so no patient is invented. ORC-1 ``RE`` (observations to follow), ORC-2 and
OBR-2 the placer order number, ORC-3 and OBR-3 the filler order number (the
accession, namespace HEMATOVISION), ORC-12/OBR-16 the ordering provider, OBR-7 the
collection time, OBR-22 when this report version was released, OBR-32 the
principal result interpreter (the signer), OBX-16 the responsible observer, and
OBX-18 the equipment instance identifier (EI): the model version that read the
cells. Result status (HL7 table 0085): ``P`` preliminary, ``F`` final, ``C``
"record coming over is a correction and thus replaces a final result" for an
amended version, in OBR-25 and every OBX-11. Besides one OBX per class, local
codes (coding system ``99HV``, HL7's ``99zzz`` convention for local codes) carry
the white cells counted, the unidentified cells awaiting review and each class
listed but not counted (platelets, smudge cells, artefacts), so no format drops
them. Comments (NTE after OBR): the amendment reason, the reviewer's comment and,
below ``HEMATOVISION_MIN_CELLS_FOR_FLAGS`` counted cells, why no H/L flag is given.

Per reported class one OBX (the rows of the FHIR Observations): value type NM,
the class's LOINC code from the cell-class table, units ``%`` (UCUM) for the
white-cell classes and ``/100{WBCs}`` for nucleated red cells, reference range
``low-high``, abnormal flag H/L/N, and result status ``P`` (preliminary) until
a reviewer signs the specimen, ``F`` (final) after. A class with no counted
cell yet is sent without a value and status ``X`` (results cannot be obtained
for this observation... yet). Platelets, smudge cells and artefacts are not
results and are not sent. When the order gave the white-cell count, one more OBX
per white-cell class carries its absolute count (LOINC "[#/volume]" code, UCUM
``10*9/L``, the adult absolute range and its flag).

MSH-4 is an HD: namespace id (``HEMATOVISION_HL7_FACILITY``, else the lab's name,
``HEMATOVISION_LAB_NAME``, escaped and cut to HD.1's 20 characters), and with
``HEMATOVISION_HL7_FACILITY_OID`` the universal id and its type ``ISO``. MSH-18 is always
``UNICODE UTF-8`` (HL7 table 0211): the text is always sent UTF-8-encoded, as the HTTP charset
says too. Without MSH-18 a receiver must assume ASCII, which is wrong as soon as the lab's name (say
"Labo Hématologie") is not ASCII; for an ASCII-only message the declaration is
just as true, and a constant header keeps the receiving interface's
configuration the same whatever the name.
"""

import hashlib
import uuid

from django.conf import settings
from django.utils import timezone
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message

from classifier.cells.differential import WBC_UCUM, Differential
from classifier.interop import APPLICATION, codes, lab_name
from classifier.interop.codes import COUNTED, NOT_COUNTED_SUFFIX, PER_100_WHITE_UNIT, UNIDENTIFIED
from classifier.interop.result import ResultReport

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


LOCAL_CODES = "99HV"  # HL7's "99zzz" convention: a locally defined coding system


def facility() -> str:
    """MSH-4 as an HD: namespace id ^ universal id ^ ``ISO`` when an OID is configured."""
    namespace = _escape(settings.HEMATOVISION_HL7_FACILITY.strip()[:HD1_LENGTH]) or _facility(lab_name())
    oid = settings.HEMATOVISION_HL7_FACILITY_OID.strip()
    return f"{namespace}^{_escape(oid)}^ISO" if oid else namespace


def _cwe(loinc: str, local_key: str) -> str:
    """A coded element: the LOINC code (CWE.1-3), and the lab's own code as the alternate
    (CWE.4-6, ``HEMATOVISION_LOCAL_CODES``) where it has one."""
    local = codes.local_code(local_key)
    if local is None:
        return loinc
    parts = (loinc.split("^") + ["", "", ""])[:3]
    alternate = [_escape(local[0]), _escape(local[1]), codes.local_system_hl7()]
    return "^".join(parts + alternate)


def _date(value) -> str:
    return value.strftime("%Y%m%d")


def _xcn(identifier: str, family: str, given: str) -> str:
    """XCN (and CNN, with ``&``) as ID^family^given, escaped."""
    return "^".join(_escape(part) for part in (identifier, family, given)).rstrip("^")


def preliminary_control_id(specimen, differential: Differential, last_modified=None) -> str:
    """MSH-10 of an unsigned result: the same while nothing changes, so a poll repeats it."""
    digest = hashlib.sha256(repr((specimen.accession, differential, last_modified)).encode()).hexdigest()
    return "HVP" + digest[:17]


_STATUS = {"preliminary": "P", "final": "F", "corrected": "C"}  # HL7 table 0085


def _header(msg, *, now, control_id: str | None) -> None:
    """MSH: sender, receiver, time, message type, control id, version, character set."""
    msg.msh.msh_3 = SENDING_APPLICATION
    msg.msh.msh_4 = facility()
    if settings.HEMATOVISION_LIS_APPLICATION:
        msg.msh.msh_5 = _escape(settings.HEMATOVISION_LIS_APPLICATION[:HD1_LENGTH])
    if settings.HEMATOVISION_LIS_FACILITY:
        msg.msh.msh_6 = _escape(settings.HEMATOVISION_LIS_FACILITY[:HD1_LENGTH])
    msg.msh.msh_7 = _ts(now)
    msg.msh.msh_9 = "ORU^R01^ORU_R01"
    msg.msh.msh_10 = control_id or uuid.uuid4().hex[:20]
    msg.msh.msh_11 = "P"
    msg.msh.msh_12 = VERSION
    msg.msh.msh_18 = CHARACTER_SET


def _patient(result, order) -> None:
    """PID from the LIS order; no order, no patient: none is invented."""
    if order is None:
        return
    patient = result.add_group("ORU_R01_PATIENT")
    patient.pid.pid_1 = "1"
    patient.pid.pid_3 = f"{_escape(order.patient_id)}^^^{_escape(order.patient_id_authority)}^MR"
    name = f"{_escape(order.patient_family_name)}^{_escape(order.patient_given_name)}".rstrip("^")
    patient.pid.pid_5 = name or "^^^^^^U"
    if order.patient_birth_date:
        patient.pid.pid_7 = _date(order.patient_birth_date)
    patient.pid.pid_8 = order.patient_sex or "U"


def _order(group, report: ResultReport) -> None:
    """ORC and OBR: placer and filler numbers, provider, panel, times, status, interpreter; NTEs."""
    order, release = report.order, report.release
    filler = f"{report.accession}^{SENDING_APPLICATION}"  # [A-Za-z0-9._-] only: no escaping needed
    placer = (
        f"{_escape(order.placer_order_number)}^{_escape(order.placer_namespace)}".rstrip("^") if order else ""
    )
    provider = (
        _xcn(
            order.ordering_provider_id,
            order.ordering_provider_family_name,
            order.ordering_provider_given_name,
        )
        if order
        else ""
    )
    group.orc.orc_1 = "RE"  # observations to follow (HL7 table 0119)
    if placer:
        group.orc.orc_2 = placer
    group.orc.orc_3 = filler
    group.orc.orc_5 = "IP" if report.status == "preliminary" else "CM"  # order status, HL7 table 0038
    if provider:
        group.orc.orc_12 = provider
    obr = group.obr
    obr.obr_1 = "1"
    if placer:
        obr.obr_2 = placer
    obr.obr_3 = filler
    obr.obr_4 = _cwe(f"{report.panel[0]}^{report.panel[1]}^LN", codes.LOCAL_PANEL_KEY)
    obr.obr_7 = _ts(report.collected_at)
    if provider:
        obr.obr_16 = provider
    obr.obr_22 = _ts(report.issued_at)
    obr.obr_24 = "HM"
    obr.obr_25 = _STATUS[report.status]
    if release:
        obr.obr_32 = "&".join(
            _escape(p) for p in (release.signer_id, release.signer_family, release.signer_given)
        ).rstrip("&")
    notes = report.notes
    if report.images:  # the LIS's own ids of the images it sent (external_id)
        notes.append(
            "Images (external_id = cell): " + ", ".join(f"{ext} = #{pk}" for pk, _, ext in report.images)
        )
    for n, text in enumerate(notes, start=1):
        note = group.add_segment("NTE")
        note.nte_1 = str(n)
        note.nte_3 = _escape(" ".join(text.split()))


class _Observations:
    """Adds the OBX rows (each with its NTE) to an ORDER_OBSERVATION group, numbered from 1."""

    def __init__(self, group, report: ResultReport):
        release = report.release
        self.group = group
        self.status = _STATUS[report.status]
        self.collected = _ts(report.collected_at)
        self.observer = (
            _xcn(release.signer_id, release.signer_family, release.signer_given) if release else ""
        )
        versions = report.model_versions
        self.equipment = f"{_escape(versions[0])}^{SENDING_APPLICATION}" if versions else ""
        self.index = 0

    def add(self, code: str, unit: str, value: str | None, note: str = ""):
        self.index += 1
        observation = self.group.add_group("ORU_R01_OBSERVATION")
        segment = observation.obx
        segment.obx_1 = str(self.index)
        segment.obx_2 = "NM"
        segment.obx_3 = code
        if unit:
            segment.obx_6 = unit
        if value is None:
            segment.obx_11 = "X"
        else:
            segment.obx_5 = value
            segment.obx_11 = self.status
        segment.obx_14 = self.collected
        if self.observer:
            segment.obx_16 = self.observer
        if self.equipment:
            segment.obx_18 = self.equipment
        if note:
            nte = observation.add_segment("NTE")
            nte.nte_1 = "1"
            nte.nte_3 = _escape(note)
        return segment


def _nature(reference) -> str:
    """OBX-10, nature of abnormal test (HL7 table 0080): ``A`` an age-based population, ``S`` a
    sex-based one (both repeat), ``N`` the generic range (the adult one, also for an unknown age)."""
    natures = [code for code, on in (("A", reference.age_based), ("S", bool(reference.sex))) if on]
    return "~".join(natures) or "N"


def _results(observations: _Observations, report: ResultReport) -> None:
    """One OBX per reported class, then the counts behind the percentages (local codes)."""
    differential = report.differential
    for row in differential.reported:
        loinc = report.code(row)
        code = _cwe(f"{loinc.code}^{loinc.name}^LN" if loinc else f"^{_escape(row.name)}", row.label)
        unit = f"{PER_100_WHITE_UNIT[0]}^{PER_100_WHITE_UNIT[1]}" if report.per_100(row) else "%^percent"
        value = None if row.value is None else _number(row.value)
        note = "" if row.value is None else report.row_note(row)
        segment = observations.add(code, f"{unit}^UCUM", value, note)
        if row.reference is not None:
            segment.obx_7 = f"{_number(row.reference.low)}-{_number(row.reference.high)}"
            if row.value is not None and not differential.flags_withheld:
                segment.obx_8 = row.flag or "N"
            segment.obx_10 = _nature(row.reference)
    _absolute_results(observations, report)
    cells_unit = "{cells}^cells^UCUM"
    observations.add(f"{COUNTED[0]}^{COUNTED[1]}^{LOCAL_CODES}", cells_unit, str(differential.counted_cells))
    observations.add(
        f"{UNIDENTIFIED[0]}^{UNIDENTIFIED[1]}^{LOCAL_CODES}", cells_unit, str(differential.unidentified)
    )
    for row in differential.not_counted:
        name = _escape(f"{row.name}{NOT_COUNTED_SUFFIX}")
        observations.add(f"{row.label}^{name}^{LOCAL_CODES}", cells_unit, str(row.count))


def _absolute_results(observations: _Observations, report: ResultReport) -> None:
    """One OBX per white-cell class's absolute count (10*9/L), when the order gave a white-cell count."""
    differential = report.differential
    for row in differential.absolute:
        loinc = row.loinc
        code = f"{loinc.code}^{loinc.name}^LN" if loinc else f"^{_escape(row.name)} #"
        segment = observations.add(code, f"{WBC_UCUM}^10*9 per litre^UCUM", _number(row.value),
                                   report.absolute_note(row))
        if row.reference is not None:
            segment.obx_7 = f"{_number(row.reference.low)}-{_number(row.reference.high)}"
            if not differential.flags_withheld:
                segment.obx_8 = row.flag or "N"
            segment.obx_10 = _nature(row.reference)


def _specimen(group, report: ResultReport) -> None:
    specimen_group = group.add_group("ORU_R01_SPECIMEN")
    specimen_group.spm.spm_1 = "1"
    specimen_group.spm.spm_2 = f"^{report.accession}&{SENDING_APPLICATION}"
    specimen_group.spm.spm_4 = "BLD^Whole blood^HL70487"
    specimen_group.spm.spm_17 = _ts(report.collected_at)


def oru_r01(report: ResultReport, *, control_id: str | None = None) -> str:
    """The ER7 text of an ORU^R01 v2.5.1 message (each segment ends with a carriage return).

    ``control_id``: MSH-10 (a released version's, or ``preliminary_control_id``); else a random one.
    """
    msg = Message("ORU_R01", version=VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    _header(msg, now=report.now, control_id=control_id)
    result = msg.add_group("ORU_R01_PATIENT_RESULT")
    _patient(result, report.order)
    group = result.add_group("ORU_R01_ORDER_OBSERVATION")
    _order(group, report)
    _results(_Observations(group, report), report)
    _specimen(group, report)
    msg.validate()
    return msg.to_er7() + "\r"  # every segment, the last one too, ends with a carriage return
