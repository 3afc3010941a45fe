"""Reading HL7 v2 ER7 text: segments, fields, components; and escaping for writing.

A reader for what an LIS sends (orders, ACKs). It is lenient about what it does not use (unknown
segments, extra fields, ``\\n`` line ends) and exact about what it does: the field, component and
repetition separators come from MSH-1/MSH-2, escape sequences are undone (``\\F\\`` ``\\S\\``
``\\T\\`` ``\\R\\`` ``\\E\\``, HL7 v2.5.1 section 2.7).
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

_ESCAPES = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"}


def escape(text: str) -> str:
    return "".join(_ESCAPES.get(ch, ch) for ch in text)


class Er7:
    """One message: ``get(segment, field, component=None, subcomponent=None, occurrence=0)``."""

    def __init__(self, text: str):
        lines = [line for line in re.split(r"\r\n|\r|\n", text.strip("\x0b\x1c\r\n ")) if line.strip()]
        if not lines or not lines[0].startswith("MSH") or len(lines[0]) < 8:
            raise ValueError("not an HL7 v2 message (no MSH segment)")
        self.field_sep = lines[0][3]
        encoding = lines[0][4:8]
        self.component_sep, self.repetition_sep, self.escape_char, self.subcomponent_sep = encoding
        self.segments: list[tuple[str, list[str]]] = []
        for line in lines:
            fields = line.split(self.field_sep)
            if fields[0] == "MSH":  # MSH-1 is the separator itself: MSH-n is fields[n - 1]
                fields = ["MSH", self.field_sep, *fields[1:]]
            self.segments.append((fields[0], fields))

    def names(self) -> list[str]:
        return [name for name, _ in self.segments]

    def all(self, segment: str) -> list[list[str]]:
        return [fields for name, fields in self.segments if name == segment]

    def _unescape(self, value: str) -> str:
        e = re.escape(self.escape_char)
        table = {
            "F": self.field_sep,
            "S": self.component_sep,
            "T": self.subcomponent_sep,
            "R": self.repetition_sep,
            "E": self.escape_char,
        }
        return re.sub(f"{e}([FSTRE]){e}", lambda m: table[m.group(1)], value)

    def repetitions(self, segment: str, field: int, occurrence: int = 0) -> list[str]:
        found = self.all(segment)
        if occurrence >= len(found) or field >= len(found[occurrence]):
            return []
        raw = found[occurrence][field]
        return raw.split(self.repetition_sep) if raw and not (segment == "MSH" and field == 2) else [raw]

    def get(
        self,
        segment: str,
        field: int,
        component: int | None = None,
        subcomponent: int | None = None,
        *,
        occurrence: int = 0,
        repetition: int = 0,
    ) -> str:
        reps = self.repetitions(segment, field, occurrence)
        if repetition >= len(reps):
            return ""
        return self.part(reps[repetition], component, subcomponent)

    def part(self, raw: str, component: int | None = None, subcomponent: int | None = None) -> str:
        value = raw
        if component is not None:
            parts = value.split(self.component_sep)
            value = parts[component - 1] if component <= len(parts) else ""
            if subcomponent is not None:
                subs = value.split(self.subcomponent_sep)
                value = subs[subcomponent - 1] if subcomponent <= len(subs) else ""
        return self._unescape(value).strip()


def parse_ts(value: str) -> datetime | None:
    """An HL7 DTM/TS (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]) as an aware datetime; None if empty.

    Without an offset the time is the server's local time (settings.TIME_ZONE)."""
    value = value.strip()
    if not value:
        return None
    match = re.fullmatch(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d+)?([+-]\d{4})?", value)
    if not match:
        raise ValueError(f"not an HL7 timestamp: {value!r}")
    y, mo, d, h, mi, s, offset = match.groups()
    naive = datetime(int(y), int(mo or 1), int(d or 1), int(h or 0), int(mi or 0), int(s or 0))
    if offset:
        sign = 1 if offset[0] == "+" else -1
        tz = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))
        return naive.replace(tzinfo=tz)
    from django.utils import timezone as dj_timezone

    return dj_timezone.make_aware(naive)


def parse_date(value: str) -> date | None:
    value = value.strip()
    if not value:
        return None
    if not re.fullmatch(r"\d{8}(\d*)?([+-]\d{4})?", value):
        raise ValueError(f"not an HL7 date: {value!r}")
    return date(int(value[:4]), int(value[4:6]), int(value[6:8]))
