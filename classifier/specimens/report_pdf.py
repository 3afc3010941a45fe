"""A specimen's PDF report (reportlab), built from the selectors' data.

The PDF carries the lab header, the accession, the differential with reference
flags, a gallery of the cells grouped by class, the model version(s), the
reviewers and the sign-off; every page says PRELIMINARY until the specimen is
signed.
"""

import io
from xml.sax.saxutils import escape

from django.conf import settings
from django.utils import timezone
from PIL import Image as PILImage
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, StyleSheet1, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    Flowable,
    Image,
    KeepTogether,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from classifier.cells.differential import Differential
from classifier.models import Classification, ReviewState, Specimen
from classifier.specimens import selectors as specimen_selectors

GALLERY_COLUMNS = 8
GALLERY_LIMIT_PER_CLASS = 64
THUMB_MM = 20


def _when(value) -> str:
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M %Z") if value else ""


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


def _header(specimen: Specimen, differential: Differential, lab: str, styles: StyleSheet1) -> list[Flowable]:
    """The lab's name and address, the title, the accession and the times."""
    address_style = ParagraphStyle("address", parent=styles["BodyText"], alignment=1, fontSize=9, leading=11)
    address = lab_address_lines()
    return [
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


def _status(specimen: Specimen, differential: Differential, styles: StyleSheet1) -> list[Flowable]:
    """FINAL or PRELIMINARY as a coloured banner; an amendment and a too-few-cells note (issue 19)."""
    banner = ParagraphStyle("banner", parent=styles["Heading2"], textColor=colors.white, alignment=1)
    if specimen.is_signed:
        status_text = f"FINAL — signed by {escape(_signer(specimen))} on {_when(specimen.signed_at)}"
        status_colour = colors.HexColor("#198754")
    else:
        status_text = "PRELIMINARY — not signed; not for clinical use until a reviewer signs it"
        status_colour = colors.HexColor("#dc3545")
    story: list[Flowable] = [
        Table(
            [[Paragraph(status_text, banner)]],
            colWidths=[180 * mm],
            style=TableStyle([("BACKGROUND", (0, 0), (-1, -1), status_colour)]),
        ),
        Spacer(1, 4 * mm),
    ]
    amended = specimen.report_versions.filter(kind="corrected").order_by("-number").first()
    if amended is not None:
        story.append(Paragraph(
            f"<b>AMENDED</b> — report version {amended.number}, {_when(amended.released_at)}, by "
            f"{escape(amended.released_by_name)}. Reason: {escape(amended.reason)}", styles["BodyText"],
        ))
    if specimen.amendment_is_open:
        story.append(Paragraph(
            f"<b>AMENDMENT IN PROGRESS</b> — opened {_when(specimen.amendment_opened_at)} to add images. "
            f"Reason: {escape(specimen.amendment_reason)}. The last released version stays valid until "
            "the specimen is signed again.",
            styles["BodyText"],
        ))
    if differential.flag_comment:
        story.append(Paragraph(escape(differential.flag_comment), styles["BodyText"]))
    if differential.specimen_check_comment:
        story.append(Paragraph(escape(differential.specimen_check_comment), styles["BodyText"]))
    return story


def _differential_rows(differential: Differential) -> tuple[list[list[str]], list]:
    """The table's rows under its header, and each row's flag (the flagged ones print red)."""
    rows: list[list[str]] = []
    flagged: list = []
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
    return rows, flagged


def _differential_table(differential: Differential, styles: StyleSheet1) -> list[Flowable]:
    rows, flagged = _differential_rows(differential)
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
    header = ["Cell class", "Count", "%", "Reference", "Flag"]
    return [
        Paragraph("Differential", styles["Heading2"]),
        Table(
            [header, *rows],
            colWidths=[60 * mm, 20 * mm, 20 * mm, 45 * mm, 25 * mm],
            style=TableStyle(table_style),
        ),
        Spacer(1, 3 * mm),
    ]


def _absolute_table(differential: Differential, styles: StyleSheet1) -> list[Flowable]:
    """Absolute counts (10^9/L), with the order's white-cell count; nothing without one."""
    if not differential.absolute:
        return []
    rows = [
        [
            row.name,
            f"{row.value:.2f}",
            f"{_number(row.reference_low)} – {_number(row.reference_high)}" if row.reference else "",
            {"H": "HIGH", "L": "LOW"}.get(row.flag or "", ""),
        ]
        for row in differential.absolute
    ]
    table_style = [
        ("FONTNAME", (0, 0), (-1, 0), "Helvetica-Bold"),
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e9ecef")),
        ("GRID", (0, 0), (-1, -1), 0.4, colors.grey),
        ("ALIGN", (1, 1), (1, -1), "RIGHT"),
    ]
    table_style += [
        ("TEXTCOLOR", (3, i), (3, i), colors.red)
        for i, row in enumerate(differential.absolute, start=1) if row.flag
    ]
    return [
        Paragraph(
            f"Absolute counts (white-cell count {differential.wbc_count:g} x10^9/L given with the order)",
            styles["Heading3"],
        ),
        Table(
            [["Cell class", "x10^9/L", "Reference (adult)", "Flag"], *rows],
            colWidths=[60 * mm, 25 * mm, 45 * mm, 25 * mm],
            style=TableStyle(table_style),
        ),
        Spacer(1, 3 * mm),
    ]


def _signoff_notes(
    specimen: Specimen, cells: list[Classification], differential: Differential, small: ParagraphStyle
) -> list[Flowable]:
    """Model version(s), reviewers, the signer, the reviewer's comment and what the ranges mean."""
    versions = sorted({c.model_version for c in cells if c.model_version}) or ["(none)"]
    reviewers = sorted({escape(_person(c.reviewed_by)) for c in cells if c.reviewed_by})
    unreviewed = differential.unreviewed
    signed = f"{escape(_signer(specimen))}, {_when(specimen.signed_at)}" if specimen.is_signed else ""
    comment = escape(specimen.review_comment).replace("\n", "<br/>") if specimen.review_comment else "none"
    return [
        Paragraph(f"<b>Model version:</b> {', '.join(versions)}", small),
        Paragraph(
            f"<b>Reviewed by:</b> {', '.join(reviewers) or 'nobody yet'}"
            + (f" · {unreviewed} cell(s) not reviewed yet" if unreviewed else ""),
            small,
        ),
        Paragraph("<b>Signed:</b> " + (signed or "not signed (PRELIMINARY)"), small),
        Paragraph("<b>Reviewer's comment:</b> " + comment, small),
        Paragraph(
            escape(differential.reference_note) + " Ranges in % of white cells (nucleated red cells: per "
            "100 white cells). Platelets, smudge cells and artefacts are listed, not counted.",
            small,
        ),
    ]


def _gallery_grid(members: list[Classification], small: ParagraphStyle) -> list[list]:
    """Thumbnails with their ids, GALLERY_COLUMNS to a row, the last row padded."""
    grid, line = [], []
    for cell in members:
        state = "" if cell.review_state == ReviewState.UNREVIEWED else " (rev.)"
        line.append([_thumbnail(cell), Paragraph(f"#{cell.pk}{state}", small)])
        if len(line) == GALLERY_COLUMNS:
            grid.append(line)
            line = []
    if line:
        grid.append(line + [""] * (GALLERY_COLUMNS - len(line)))
    return grid


def _gallery(specimen: Specimen, styles: StyleSheet1, small: ParagraphStyle) -> list[Flowable]:
    """The cells by section, as the portal's gallery (unidentified first); at most
    GALLERY_LIMIT_PER_CLASS of each; a short section kept on one page with its heading."""
    sections = specimen_selectors.specimen_gallery(specimen=specimen)
    if not sections:
        return []
    story: list[Flowable] = [Spacer(1, 4 * mm), Paragraph("Cell gallery", styles["Heading2"])]
    for _key, name, members in sections:
        shown = members[:GALLERY_LIMIT_PER_CLASS]
        grid = _gallery_grid(shown, small)
        more = f" (first {len(shown)} shown)" if len(members) > len(shown) else ""
        heading = Paragraph(f"{name} — {len(members)} cell(s){more}", styles["Heading4"])
        gallery = Table(
            grid,
            colWidths=[22.5 * mm] * GALLERY_COLUMNS,
            style=TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP")]),
        )
        if len(grid) <= 3:
            story.append(KeepTogether([heading, gallery]))
        else:
            story += [heading, gallery]
    return story


def specimen_report_pdf(*, specimen: Specimen) -> bytes:
    """The specimen's report as PDF bytes (the caller has checked the user may see it)."""
    differential = specimen_selectors.specimen_differential(specimen=specimen)
    cells = list(specimen_selectors.specimen_cells(specimen=specimen))
    lab = settings.HEMATOVISION_LAB_NAME
    styles = getSampleStyleSheet()
    small = ParagraphStyle("small", parent=styles["BodyText"], fontSize=8, leading=10)
    story = [
        *_header(specimen, differential, lab, styles),
        *_status(specimen, differential, styles),
        *_differential_table(differential, styles),
        *_absolute_table(differential, styles),
        *_signoff_notes(specimen, cells, differential, small),
        *_gallery(specimen, styles, small),
    ]
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
