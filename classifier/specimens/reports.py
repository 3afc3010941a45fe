"""Specimen reports: a PDF (reportlab) and CSV exports, built from the selectors' data.

The PDF carries the lab header, the accession, the differential with reference
flags, a gallery of the cells grouped by class, the model version(s), the
reviewers and the sign-off; every page says PRELIMINARY until the specimen is
signed.
"""

import io
from collections import defaultdict
from datetime import date
from xml.sax.saxutils import escape

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone
from PIL import Image as PILImage
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Image, KeepTogether, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from classifier import csvsafe
from classifier.cells import classes
from classifier.models import Classification, ReviewState, Specimen
from classifier.specimens import selectors as specimen_selectors

GALLERY_COLUMNS = 8
GALLERY_LIMIT_PER_CLASS = 64
THUMB_MM = 20


def local_iso(value) -> str:
    """A timestamp for CSV exports: ISO 8601 in the lab's time zone (TIME_ZONE), with its offset,
    so the date in the file is the lab's date; empty for None."""
    return timezone.localtime(value).isoformat() if value else ""


def _when(value) -> str:
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M %Z") if value else ""


def _cells(specimen: Specimen) -> list[Classification]:
    return list(specimen.cells.select_related("reviewed_by", "signed_by").order_by("created_at", "id"))


def _thumbnail(cell: Classification, side_px: int = 160):
    try:
        with cell.image.open("rb") as handle:
            image = PILImage.open(handle)
            image.load()
    except (OSError, ValueError):
        return Paragraph("(image missing)", getSampleStyleSheet()["BodyText"])
    image = image.convert("RGB")
    image.thumbnail((side_px, side_px))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    buffer.seek(0)
    ratio = image.height / image.width
    return Image(buffer, width=THUMB_MM * mm, height=THUMB_MM * mm * ratio)


class _NumberedCanvas(Canvas):
    """Writes "Page n of N" on every page once N is known (pages are kept until the document ends)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pages = []

    def showPage(self):  # noqa: N802 - ReportLab's name
        self._pages.append(dict(self.__dict__))
        self._startPage()

    def save(self):
        total = len(self._pages)
        for state in self._pages:
            self.__dict__.update(state)
            self.saveState()
            self.setFont("Helvetica", 8)
            self.setFillColor(colors.grey)
            self.drawRightString(A4[0] - 15 * mm, 10 * mm, f"Page {self._pageNumber} of {total}")
            self.restoreState()
            super().showPage()
        super().save()


def lab_address_lines() -> list[str]:
    """HEMATOVISION_LAB_ADDRESS as lines ("|" or a newline separates them)."""
    raw = settings.HEMATOVISION_LAB_ADDRESS or ""
    return [line.strip() for line in raw.replace("|", "\n").splitlines() if line.strip()]


def _page_decorations(signed: bool, lab: str, accession: str):
    def draw(canvas, doc):
        canvas.saveState()
        width, height = A4
        canvas.setFont("Helvetica", 8)
        canvas.setFillColor(colors.grey)
        canvas.drawString(15 * mm, 10 * mm, f"{lab} · {accession} · HematoVision")
        if not signed:
            canvas.setFillColor(colors.Color(0.85, 0.1, 0.1, alpha=0.18))
            canvas.setFont("Helvetica-Bold", 72)
            canvas.translate(width / 2, height / 2)
            canvas.rotate(40)
            canvas.drawCentredString(0, 0, "PRELIMINARY")
        canvas.restoreState()

    return draw


def _person(user) -> str:
    return user.get_full_name() or user.get_username()


def _signer(specimen: Specimen) -> str:
    """The signer as the report prints them: full name and role, as recorded at sign-off."""
    if not specimen.is_signed:
        return ""
    name = specimen.signed_by_name or _person(specimen.signed_by)
    return f"{name} ({specimen.signed_by_role})" if specimen.signed_by_role else name


def _number(value) -> str:
    return "" if value is None else f"{value:g}"


def _pdf_row(row, unit: str) -> list[str]:
    reference = (
        f"{_number(row.reference_low)} – {_number(row.reference_high)} {unit}"
        if row.reference_low is not None else ""
    )
    return [
        row.name,
        str(row.count),
        "" if row.value is None else f"{row.value:.1f}",
        reference,
        {"H": "HIGH", "L": "LOW"}.get(row.flag, ""),
    ]


def _total(differential) -> str:
    return "100.0" if differential.counted_cells else ""


def specimen_report_pdf(*, specimen: Specimen) -> bytes:  # noqa: C901 - TODO(issue 17): split into header, differential table, gallery flowables
    """The specimen's report as PDF bytes (the caller has checked the user may see it)."""
    differential = specimen_selectors.specimen_differential(specimen=specimen)
    cells = _cells(specimen)
    lab = settings.HEMATOVISION_LAB_NAME
    styles = getSampleStyleSheet()
    small = ParagraphStyle("small", parent=styles["BodyText"], fontSize=8, leading=10)
    banner = ParagraphStyle("banner", parent=styles["Heading2"], textColor=colors.white, alignment=1)
    address_style = ParagraphStyle("address", parent=styles["BodyText"], alignment=1, fontSize=9, leading=11)
    address = lab_address_lines()
    signer = _signer(specimen)

    story = [
        Paragraph(escape(lab), styles["Title"]),  # the lab name is text, not ReportLab markup
        Paragraph(
            "<br/>".join(escape(line) for line in address)
            or "<i>Lab address not configured (HEMATOVISION_LAB_ADDRESS)</i>",
            address_style,
        ),
        Paragraph("White blood cell differential (automated pre-classification)", styles["Heading3"]),
        Table(
            [
                ["Accession", specimen.accession, "Received", _when(specimen.created_at)],
                ["Cells imaged", str(differential.total_cells), "Printed", _when(timezone.now())],
            ],
            colWidths=[28 * mm, 60 * mm, 25 * mm, 67 * mm],
            style=TableStyle(
                [
                    ("FONTNAME", (0, 0), (0, -1), "Helvetica-Bold"),
                    ("FONTNAME", (2, 0), (2, -1), "Helvetica-Bold"),
                ]
            ),
        ),
        Spacer(1, 4 * mm),
    ]
    if specimen.is_signed:
        status_text = f"FINAL — signed by {escape(signer)} on {_when(specimen.signed_at)}"
        status_colour = colors.HexColor("#198754")
    else:
        status_text = "PRELIMINARY — not signed; not for clinical use until a reviewer signs it"
        status_colour = colors.HexColor("#dc3545")
    story.append(
        Table(
            [[Paragraph(status_text, banner)]],
            colWidths=[180 * mm],
            style=TableStyle([("BACKGROUND", (0, 0), (-1, -1), status_colour)]),
        )
    )
    story.append(Spacer(1, 4 * mm))
    # Issue 19: a corrected report says so, with why; too few cells for flags says that too.
    amended = specimen.report_versions.filter(kind="corrected").order_by("-number").first()
    if amended is not None:
        story.append(Paragraph(
            f"<b>AMENDED</b> — report version {amended.number}, {_when(amended.released_at)}, by "
            f"{escape(amended.released_by_name)}. Reason: {escape(amended.reason)}", styles["BodyText"],
        ))
    if differential.flag_comment:
        story.append(Paragraph(escape(differential.flag_comment), styles["BodyText"]))

    rows = [["Cell class", "Count", "%", "Adult reference", "Flag"]]
    flagged = []
    for row in differential.classes:
        rows.append(_pdf_row(row, "%"))
        flagged.append(row.flag)
    rows.append(["White cells counted", str(differential.counted_cells), _total(differential), "", ""])
    flagged.append(None)
    for row in differential.per_100_white_cells:
        rows.append(_pdf_row(row, "/100 WBC"))
        flagged.append(row.flag)
    for row in differential.not_counted:
        rows.append([f"{row.name} (not counted)", str(row.count), "", "", ""])
        flagged.append(None)
    rows.append(["Unidentified (not reviewed)", str(differential.unidentified), "", "", ""])
    flagged.append(None)
    if differential.pending:
        rows.append(["Pending (model unavailable)", str(differential.pending), "", "", ""])
        flagged.append(None)
    table_style = [
        ("FONTNAME", (0, 0), (-1, 0), "Helvetica-Bold"),
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e9ecef")),
        ("GRID", (0, 0), (-1, -1), 0.4, colors.grey),
        ("ALIGN", (1, 1), (2, -1), "RIGHT"),
    ]
    for i, flag in enumerate(flagged, start=1):
        if flag:
            table_style += [
                ("TEXTCOLOR", (4, i), (4, i), colors.red),
                ("FONTNAME", (4, i), (4, i), "Helvetica-Bold"),
            ]
    story += [
        Paragraph("Differential", styles["Heading2"]),
        Table(rows, colWidths=[60 * mm, 20 * mm, 20 * mm, 45 * mm, 25 * mm], style=TableStyle(table_style)),
        Spacer(1, 3 * mm),
    ]

    versions = sorted({c.model_version for c in cells if c.model_version}) or ["(none)"]
    reviewers = sorted({escape(_person(c.reviewed_by)) for c in cells if c.reviewed_by})
    unreviewed = differential.unreviewed
    story += [
        Paragraph(f"<b>Model version:</b> {', '.join(versions)}", small),
        Paragraph(
            f"<b>Reviewed by:</b> {', '.join(reviewers) or 'nobody yet'}"
            + (f" · {unreviewed} cell(s) not reviewed yet" if unreviewed else ""),
            small,
        ),
        Paragraph(
            "<b>Signed:</b> "
            + (
                f"{escape(signer)}, {_when(specimen.signed_at)}"
                if specimen.is_signed
                else "not signed (PRELIMINARY)"
            ),
            small,
        ),
        Paragraph(
            "<b>Reviewer's comment:</b> "
            + (escape(specimen.review_comment).replace("\n", "<br/>") if specimen.review_comment else "none"),
            small,
        ),
        Paragraph(
            "Reference ranges: typical adult values, % of white cells (nucleated red cells: per 100 white "
            "cells). Platelets, smudge cells and artefacts are listed, not counted.",
            small,
        ),
    ]

    groups: dict[str, list[Classification]] = defaultdict(list)
    for cell in cells:
        groups[specimen_selectors.cell_group(cell)].append(cell)
    order = specimen_selectors.gallery_order(groups)  # as the portal's gallery: unidentified first
    names = specimen_selectors.GROUP_NAMES
    if cells:
        story += [Spacer(1, 4 * mm), Paragraph("Cell gallery", styles["Heading2"])]
    for key in order:
        members = groups.get(key, [])
        if not members:
            continue
        shown = members[:GALLERY_LIMIT_PER_CLASS]
        grid, line = [], []
        for cell in shown:
            state = "" if cell.review_state == ReviewState.UNREVIEWED else " (rev.)"
            line.append([_thumbnail(cell), Paragraph(f"#{cell.pk}{state}", small)])
            if len(line) == GALLERY_COLUMNS:
                grid.append(line)
                line = []
        if line:
            grid.append(line + [""] * (GALLERY_COLUMNS - len(line)))
        more = f" (first {len(shown)} shown)" if len(members) > len(shown) else ""
        name = names.get(key) or classes.display_name(key)
        heading = Paragraph(f"{name} — {len(members)} cell(s){more}", styles["Heading4"])
        gallery = Table(
            grid,
            colWidths=[22.5 * mm] * GALLERY_COLUMNS,
            style=TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP")]),
        )
        story.append(KeepTogether([heading, gallery]) if len(grid) <= 3 else heading)
        if len(grid) > 3:
            story.append(gallery)

    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=15 * mm,
        rightMargin=15 * mm,
        topMargin=15 * mm,
        bottomMargin=18 * mm,
        title=f"{specimen.accession} white-cell differential",
        author=lab,
        subject="HematoVision report",
    )
    decorate = _page_decorations(specimen.is_signed, lab, specimen.accession)
    doc.build(story, onFirstPage=decorate, onLaterPages=decorate, canvasmaker=_NumberedCanvas)
    return buffer.getvalue()


def _safe(value) -> str:
    """Text for a CSV cell that a spreadsheet will not run as a formula (``csvsafe.cell``)."""
    return csvsafe.cell(value)


CELL_COLUMNS = [
    "accession",
    "cell_id",
    "original_filename",
    "created_at",
    "status",
    "predicted_label",
    "confidence",
    "flag_reason",
    "final_label",
    "label",
    "review_state",
    "reviewed_by",
    "reviewed_at",
    "signed_at",
    "model_version",
    "external_id",  # the LIS's id for the image (issue 19)
]


def specimen_report_csv(*, specimen: Specimen) -> str:
    """One row per cell of the specimen."""
    out = io.StringIO()
    writer = csvsafe.writer(out)  # every field quoted
    writer.writerow(CELL_COLUMNS)
    for cell in _cells(specimen):
        writer.writerow(
            [
                _safe(v)
                for v in [
                    specimen.accession,
                    cell.pk,
                    cell.original_filename,
                    local_iso(cell.created_at),
                    cell.status,
                    cell.predicted_label,
                    "" if cell.confidence is None else f"{cell.confidence:.4f}",
                    cell.flag_reason,
                    cell.final_label,
                    cell.label,
                    cell.review_state,
                    cell.reviewed_by.get_username() if cell.reviewed_by else "",
                    local_iso(cell.reviewed_at),
                    local_iso(cell.signed_at),
                    cell.model_version,
                    cell.external_id or "",
                ]
            ]
        )
    return out.getvalue()


def specimens_in_range(*, user, start: date | None, end: date | None) -> QuerySet[Specimen]:
    """The specimens the user may see, received between ``start`` and ``end`` (inclusive, local dates)."""
    qs = specimen_selectors.specimen_list(user=user)
    if start:
        qs = qs.filter(created_at__date__gte=start)
    if end:
        qs = qs.filter(created_at__date__lte=end)
    return qs.order_by("created_at", "id")


def specimens_csv(*, specimens) -> str:
    """One row per specimen: its differential (a fixed column set for every class of the table, empty
    where a class is not reported), unidentified count and sign-off."""
    out = io.StringIO()
    writer = csvsafe.writer(out)  # every field quoted
    header = ["accession", "received_at", "total_cells", "counted_cells"]
    for cell in classes.TABLE:
        code = cell.code.lower()
        if cell.counting is classes.Counting.WHITE:
            header += [f"{code}_count", f"{code}_percent", f"{code}_flag"]
        elif cell.counting is classes.Counting.PER_100_WHITE:
            header += [f"{code}_count", f"{code}_per_100_white_cells", f"{code}_flag"]
        else:
            header += [f"{code}_count"]
    header += ["unidentified", "pending", "unreviewed", "signed_by", "signed_at"]
    writer.writerow(header)
    for specimen in specimens.prefetch_related("cells"):
        d = specimen_selectors.specimen_differential(specimen=specimen)
        rows = {row.label: row for row in (*d.classes, *d.per_100_white_cells, *d.not_counted)}
        line = [specimen.accession, local_iso(specimen.created_at), d.total_cells, d.counted_cells]
        for cell in classes.TABLE:
            row = rows.get(cell.code)
            if cell.counting is classes.Counting.NOT_COUNTED:
                line += [row.count if row else ""]
            elif row is None:
                line += ["", "", ""]
            else:
                line += [row.count, "" if row.value is None else row.value, row.flag or ""]
        line += [
            d.unidentified,
            d.pending,
            d.unreviewed,
            d.signed_by or "",
            local_iso(d.signed_at),
        ]
        writer.writerow([_safe(v) for v in line])
    return out.getvalue()
