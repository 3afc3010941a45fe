"""A PDF report's text, for the tests that read what a report says.

pypdf (requirements-dev.txt) in its layout mode, which keeps each table row on one line as the
page shows it; pure Python, so ``make test-fast`` needs no poppler. The page images
(``test_reports.pdf_pages``) still come from poppler's pdftoppm, which ``make test`` installs.
"""

import io

from pypdf import PdfReader


def pdf_text(pdf: bytes) -> str:
    """Every page's text in order, laid out as on the page."""
    reader = PdfReader(io.BytesIO(pdf))
    return "\n".join(page.extract_text(extraction_mode="layout") for page in reader.pages)
