"""Whole fields of view: locate each white cell, classify a crop of it, draw the result.

A microscope camera delivers a field with many red cells and one or more
white cells. The serving model locates the stained nuclei and frames each cell
so that it is read at the field's own scale (``inference.field_cells``); each
framed cell is then an ordinary classification of the specimen.
"""

import io
from collections.abc import Callable
from pathlib import PurePosixPath

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from classifier import inference
from classifier.cells import classes
from classifier.cells import services as cell_services
from classifier.cells.validation import ImageRejected, check_image

# Box colours per class, RGB: the table's badge colours (grey for unidentified / pending cells).
COLOURS = {**{cell.code: cell.rgb for cell in classes.TABLE}, None: (108, 117, 125)}


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def field_classify(
    *, user, data: bytes, filename: str, accession: str, external_id: Callable[[int], str]
) -> list[dict]:
    """Classify every white cell found in one field; returns ``[{n, box, classification_id}]``.

    ``external_id(n)`` gives the idempotency key of cell ``n`` so a re-run
    returns the same classifications. Raises ImageRejected when the file is
    not an image or no white cell is found.
    """
    checked = check_image(data, filename=filename)
    rgb = np.asarray(checked.image.convert("RGB"))
    located = inference.field_cells(rgb)
    if not located:
        raise ImageRejected("no_cells_found", "No white cell was found in this field of view.", 422)
    stem = PurePosixPath(filename).stem or "field"
    cells = []
    for n, (box, crop) in enumerate(located, start=1):
        classification = cell_services.classification_create(
            user=user,
            data=_png(np.ascontiguousarray(crop)),
            filename=f"{stem}-cell{n}.png",
            accession=accession,
            external_id=external_id(n),
        )
        cells.append({"n": n, "box": list(box), "classification_id": classification.pk})
    return cells


def field_annotated_png(*, data: bytes, cells: list[dict]) -> bytes:
    """The field with a numbered, labelled box around each located cell.

    ``cells`` are the rows of ``jobs.job_progress`` for the field (n, box, label).
    """
    image = Image.open(io.BytesIO(data))
    image.load()
    image = image.convert("RGB")
    draw = ImageDraw.Draw(image)
    try:
        font = ImageFont.load_default(size=max(12, image.width // 40))
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    width = max(2, image.width // 200)
    for cell in cells:
        x0, y0, x1, y1 = cell["box"]
        pad = max(4, (x1 - x0) // 6)
        x0, y0, x1, y1 = (
            max(0, x0 - pad),
            max(0, y0 - pad),
            min(image.width - 1, x1 + pad),
            min(image.height - 1, y1 + pad),
        )
        colour = COLOURS.get(cell.get("label"), COLOURS[None])
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=width)
        text = f"{cell['n']} {(cell.get('label') or '?')[:3]}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        ty = y0 - (bottom - top) - 6 if y0 - (bottom - top) - 6 >= 0 else y1 + 2
        draw.rectangle((x0, ty, x0 + (right - left) + 6, ty + (bottom - top) + 6), fill=colour)
        draw.text((x0 + 3 - left, ty + 3 - top), text, fill=(255, 255, 255), font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
