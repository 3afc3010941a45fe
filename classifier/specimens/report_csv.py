"""Specimen CSV exports: a specimen's cells (the per-cell columns of ``cells.export``) and one row per
specimen with its differential and sign-off."""

import io

from django.db.models import QuerySet

from classifier import csvsafe
from classifier.cells import classes, differential, export
from classifier.models import Specimen
from classifier.specimens import selectors as specimen_selectors


def specimen_report_csv(*, specimen: Specimen) -> str:
    """One row per cell of the specimen, the columns of the portal's history export; when the specimen
    check raised the alarm, one line after them that says so."""
    out = io.StringIO()
    writer = csvsafe.writer(out)  # every field quoted
    writer.writerow(export.HEADER)
    cells = list(specimen_selectors.specimen_cells(specimen=specimen))
    for cell in cells:
        writer.writerow(export.cell_row(cell))
    comment = differential.specimen_check_comment(specimen_selectors.specimen_check(cells=cells))
    if comment:  # the specimen check's alarm: one closing line after the cells
        writer.writerow(csvsafe.row([comment]))
    return out.getvalue()


def specimens_header() -> list[str]:
    """A fixed column set for every class of the table: count, value and flag of a white cell (% or
    per 100 white cells), the count alone of a class not counted; the specimen check last
    (``check_word``)."""
    header = ["accession", "received_at", "total_cells", "counted_cells"]
    for cell in classes.TABLE:
        code = cell.code.lower()
        if cell.counting is classes.Counting.WHITE:
            header += [f"{code}_count", f"{code}_percent", f"{code}_flag"]
        elif cell.counting is classes.Counting.PER_100_WHITE:
            header += [f"{code}_count", f"{code}_per_100_white_cells", f"{code}_flag"]
        else:
            header += [f"{code}_count"]
    return [*header, "unidentified", "pending", "unreviewed", "signed_by", "signed_at", "specimen_check"]


def specimen_row(specimen: Specimen) -> list[str]:
    """The specimen's line of ``specimens_header``: empty where its differential does not report a class."""
    d = specimen_selectors.specimen_differential(specimen=specimen)
    rows = {row.label: row for row in (*d.classes, *d.per_100_white_cells, *d.not_counted)}
    line = [specimen.accession, csvsafe.local_iso(specimen.created_at), d.total_cells, d.counted_cells]
    for cell in classes.TABLE:
        row = rows.get(cell.code)
        if cell.counting is classes.Counting.NOT_COUNTED:
            line += [row.count if row else ""]
        elif row is None:
            line += ["", "", ""]
        else:
            line += [row.count, "" if row.value is None else row.value, row.flag or ""]
    line += [d.unidentified, d.pending, d.unreviewed, d.signed_by or "", csvsafe.local_iso(d.signed_at)]
    return csvsafe.row([*line, check_word(d.specimen_check)])


def check_word(check) -> str:
    """The specimen check in one word: ``alarm``, ``clear``, or ``not_judged`` (too few cells read)."""
    if check is None or check.critical is None:
        return "not_judged"
    return "alarm" if check.alarm else "clear"


def specimens_csv(*, specimens: QuerySet[Specimen]) -> str:
    """One row per specimen: its differential, unidentified count and sign-off."""
    out = io.StringIO()
    writer = csvsafe.writer(out)  # every field quoted
    writer.writerow(specimens_header())
    for specimen in specimens.prefetch_related("cells"):
        writer.writerow(specimen_row(specimen))
    return out.getvalue()
