"""A specimen from TEST images of known classes: differential, sign-off rules, the PDF checked as images."""

import csv
import io
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from django.core.exceptions import ValidationError
from PIL import Image

from classifier.cells import classes as cell_classes
from classifier.cells import export
from classifier.cells import review as cell_review
from classifier.jobs import runner
from classifier.jobs import services as job_services
from classifier.models import Classification, ReviewState, Status
from classifier.specimens import report_csv, report_pdf, signoff
from classifier.specimens import selectors as specimen_selectors
from classifier.tests.pdf_helpers import pdf_text
from classifier.tests.specimen_helpers import (
    FIXTURE_CELLS,
    sync_jobs,  # noqa: F401
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("sync_jobs")]

TEST_DIR = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "bccd-wbc" / "TEST"
CLASSES = ["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"]


def known_images(per_class: int = 3) -> list[tuple[str, str, bytes]]:
    """(true class, file name, bytes): the first images of each class of the official TEST split,
    or the committed fixtures (copied from the dataset) where the dataset is not mounted."""
    out = []
    for cls in CLASSES:
        if TEST_DIR.is_dir():
            paths = sorted((TEST_DIR / cls).glob("*.jpeg"))[:per_class]
        else:
            paths = sorted(FIXTURE_CELLS.glob(f"{cls}_*.jpeg"))[:per_class]
        out += [(cls, p.name, p.read_bytes()) for p in paths]
    assert len(out) == 4 * per_class
    return out


def build_specimen(user, accession="TEST-12"):
    images = known_images()
    job = job_services.job_create(
        user=user, accession=accession, files=[(name, data) for _, name, data in images], enqueue=False
    )
    job = runner.job_run(job_id=job.pk)
    assert job.state == "done"
    return job.specimen, images


def pdf_pages(pdf: bytes, tmp_path: Path) -> list[Image.Image]:
    """Render every page to PNG with poppler's pdftoppm and open them."""
    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm is not installed (scripts/test_prereqs.py installs poppler-utils)")
    source = tmp_path / "report.pdf"
    source.write_bytes(pdf)
    subprocess.run(
        ["pdftoppm", "-r", "40", "-png", str(source), str(tmp_path / "page")], check=True, timeout=60
    )
    return [Image.open(p).convert("RGB") for p in sorted(tmp_path.glob("page-*.png"))]


def assert_pages_look_right(pages: list[Image.Image]) -> None:
    for page in pages:
        # A4 at 40 dpi: 331 x 468 pixels.
        assert abs(page.width - 331) <= 2
        assert abs(page.height - 468) <= 2
        pixels = np.asarray(page, dtype=np.float32)
        assert pixels.std() > 10, "page is blank"
        assert (pixels.mean(axis=2) < 200).mean() > 0.002, "page has almost no ink"
    first = np.asarray(pages[0], dtype=np.float32)
    assert (first.mean(axis=2) < 200).mean() > 0.02, "the first page (header, table) is nearly empty"


def test_differential_matches_predictions_and_signing_needs_review(user, reviewer, settings, tmp_path):
    specimen, images = build_specimen(user)
    cells = list(specimen.cells.all())
    assert len(cells) == 12
    predicted = Counter(c.predicted_label for c in cells if c.status == Status.CLASSIFIED)
    differential = specimen_selectors.specimen_differential(specimen=specimen)
    counted = sum(predicted.values())
    assert differential.counted_cells == counted
    assert differential.unidentified == sum(1 for c in cells if c.status == Status.UNIDENTIFIED)
    assert {row.label: row.count for row in differential.classes} == {
        cls: predicted.get(cls, 0) for cls in CLASSES
    }
    for row in differential.classes:  # largest-remainder rounding: within a tenth, and 100.0 in all
        assert abs(row.percent - 100.0 * predicted.get(row.label, 0) / counted) <= 0.1
    assert sum(round(row.percent * 10) for row in differential.classes) == 1000
    assert differential.per_100_white_cells == ()
    assert differential.not_counted == ()
    assert differential.unreviewed == 12
    assert differential.ready_to_sign is False

    with pytest.raises(ValidationError) as info:
        signoff.specimen_sign(specimen=specimen, reviewer=reviewer)
    assert info.value.messages[0].startswith("12 cell(s) are not reviewed yet")
    assert not Classification.objects.filter(review_state=ReviewState.SIGNED).exists()

    # The preliminary report: every page checked as an image.
    pdf = report_pdf.specimen_report_pdf(specimen=specimen)
    assert pdf.startswith(b"%PDF-")
    pages = pdf_pages(pdf, tmp_path)
    assert len(pages) >= 1
    assert_pages_look_right(pages)
    text = pdf_text(pdf)
    assert settings.HEMATOVISION_LAB_NAME in text
    assert "TEST-12" in text
    assert "PRELIMINARY" in text
    assert "fake-0001" in text
    assert "Cell gallery" in text

    # The reviewer labels each cell with its true class (some reclassified), then signs.
    truth = {name: cls for cls, name, _ in images}
    for cell in cells:
        cell_review.classification_review(
            classification=cell, reviewer=reviewer, label=truth[cell.original_filename]
        )
    specimen = signoff.specimen_sign(specimen=specimen, reviewer=reviewer)
    differential = specimen_selectors.specimen_differential(specimen=specimen)
    assert {row.label: row.count for row in differential.classes} == {cls: 3 for cls in CLASSES}
    # Table order (neutrophils first): 25 % each.
    assert [(row.label, row.percent, row.flag) for row in differential.classes] == [
        ("NEUTROPHIL", 25.0, "L"),
        ("EOSINOPHIL", 25.0, "H"),
        ("LYMPHOCYTE", 25.0, None),
        ("MONOCYTE", 25.0, "H"),
    ]
    assert differential.signed is True
    assert differential.signed_by == "reviewer"

    signed_pdf = report_pdf.specimen_report_pdf(specimen=specimen)
    signed_dir = tmp_path / "signed"
    signed_dir.mkdir()
    pages = pdf_pages(signed_pdf, signed_dir)
    assert_pages_look_right(pages)
    text = pdf_text(signed_pdf)
    assert "PRELIMINARY" not in text
    assert "FINAL" in text
    assert "signed by reviewer" in text
    assert "Eosinophil — 3 cell(s)" in text
    assert "Neutrophil — 3 cell(s)" in text


def test_csv_per_specimen_and_for_a_date_range(user, other_user, reviewer):
    specimen, _ = build_specimen(user)
    other = runner.job_run(
        job_id=job_services.job_create(
            user=other_user,
            accession="OTHER-1",
            files=[("=cmd.png", FIXTURE_CELLS.joinpath("EOSINOPHIL_1.jpeg").read_bytes())],
            enqueue=False,
        ).pk
    )
    (row,) = csv.DictReader(io.StringIO(report_csv.specimen_report_csv(specimen=other.specimen)))
    assert row["original_filename"] == "'=cmd.png"  # a spreadsheet will not run it as a formula
    rows = list(csv.DictReader(io.StringIO(report_csv.specimen_report_csv(specimen=specimen))))
    assert len(rows) == 12
    assert list(rows[0]) == export.HEADER
    assert {r["accession"] for r in rows} == {"TEST-12"}
    assert {r["review_state"] for r in rows} == {"unreviewed"}
    assert Counter(r["label"] for r in rows) == Counter(c.label for c in specimen.cells.all())

    from django.utils import timezone

    today = timezone.localdate()
    in_range = specimen_selectors.specimens_in_range(user=user, start=today, end=today)
    mine = list(csv.DictReader(io.StringIO(report_csv.specimens_csv(specimens=in_range))))
    assert [r["accession"] for r in mine] == ["TEST-12"]  # not the other technologist's specimen
    assert mine[0]["total_cells"] == "12"
    assert mine[0]["signed_by"] == ""
    everything = list(
        csv.DictReader(
            io.StringIO(
                report_csv.specimens_csv(
                    specimens=specimen_selectors.specimens_in_range(user=reviewer, start=None, end=None)
                )
            )
        )
    )
    assert [r["accession"] for r in everything] == ["TEST-12", "OTHER-1"]
    assert (
        specimen_selectors.specimens_in_range(
            user=user, start=today.replace(year=today.year - 1), end=today.replace(year=today.year - 1)
        ).count()
        == 0
    )


@pytest.mark.realmodel
def test_real_model_differential_matches_its_predictions(user, settings, tmp_path):
    from ml import predictor as ml_predictor

    if not ml_predictor.DEFAULT_MODEL_PATH.exists():
        pytest.skip(f"no shipped model at {ml_predictor.DEFAULT_MODEL_PATH} yet")
    settings.HEMATOVISION_PREDICTOR = "ml"
    specimen, images = build_specimen(user, accession="REAL-12")
    cells = list(specimen.cells.all())
    classified = Counter(c.predicted_label for c in cells if c.status == Status.CLASSIFIED)
    differential = specimen_selectors.specimen_differential(specimen=specimen)
    # The rows: the white-cell classes the shipped model knows (nucleated red cells and platelets are
    # reported apart), each with the model's count.
    white = [c.code for c in cell_classes.TABLE if c.model and c.counts_in_white_total]
    counts = {row.label: row.count for row in differential.classes}
    assert counts == {cls: classified.get(cls, 0) for cls in white}
    truth = {name: cls for cls, name, _ in images}
    correct = sum(
        1 for c in cells if c.status == Status.CLASSIFIED and c.predicted_label == truth[c.original_filename]
    )
    assert correct >= 6, f"only {correct}/12 TEST cells right"
    assert_pages_look_right(pdf_pages(report_pdf.specimen_report_pdf(specimen=specimen), tmp_path))
