"""CSV that a spreadsheet will not run: every cell quoted, and no cell part that starts a formula.

OWASP's advice for CSV injection: quote every field, and make text that begins with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return start with ``'`` instead. A spreadsheet that splits a line on
another separator (``;`` in many locales, a tab, ``|``) would see ``x;=1+1`` as two cells, the second a
formula, so the same is done after each of those separators inside a cell.

Every CSV export writes with ``writer`` and builds its rows with ``row``.
"""

import csv
import re
from collections.abc import Iterable

from django.utils import timezone

_FORMULA = re.compile(r"(^|[;,\t|\r\n])(\s*)(?=[=+\-@\t\r])")


def cell(value) -> str:
    """``value`` as CSV text that no spreadsheet reads as a formula, however it splits the line."""
    text = "" if value is None else str(value)
    return _FORMULA.sub(lambda m: f"{m.group(1)}{m.group(2)}'", text)


def row(values: Iterable) -> list[str]:
    """A CSV row: every value as ``cell`` text."""
    return [cell(value) for value in values]


def local_iso(value) -> str:
    """A timestamp for CSV exports: ISO 8601 in the lab's time zone (TIME_ZONE), with its offset,
    so the date in the file is the lab's date; empty for None."""
    return timezone.localtime(value).isoformat() if value else ""


def writer(out):
    """``csv.writer`` that quotes every field (separators inside a cell stay inside it)."""
    return csv.writer(out, quoting=csv.QUOTE_ALL)
