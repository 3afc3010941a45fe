"""A deterministic stand-in for the Keras model, for fast web tests.

Same attributes as ``ml.predictor.Predictor``. The label follows the image's
colour so tests can choose it; a flat image is "unidentified".

It acts as either model: the first shipped one (four classes, the default,
``HEMATOVISION_PREDICTOR=fake``) or the eight-class one (``classes=MODEL_CODES``,
``HEMATOVISION_PREDICTOR=fake8``); its card lists the classes it was built with.

Colours (class names from the cell-class table): red, green, blue -> the first
model's first three classes (eosinophil, lymphocyte, monocyte); balanced -> its
last or first (neutrophil or eosinophil, by a content hash). With eight classes
the four the first model lacks, in the table's order: yellow (red + green) ->
basophil, cyan -> immature granulocyte, magenta -> nucleated red cell, dark grey
-> platelet.
"""

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from classifier.cells.classes import FIRST_MODEL_CODES, MODEL_CODES

CLASSES = list(FIRST_MODEL_CODES)
# Which class a colour means, where the predictor has that class.
_PRIMARY = FIRST_MODEL_CODES[:3]  # red, green, blue dominant
_BALANCED = (FIRST_MODEL_CODES[0], FIRST_MODEL_CODES[3])  # grey-ish, picked by a content hash
_YELLOW, _CYAN, _MAGENTA, _DARK = (c for c in MODEL_CODES if c not in FIRST_MODEL_CODES)
_SECONDARY = {(0, 1): _YELLOW, (1, 2): _CYAN, (0, 2): _MAGENTA}  # two channels dominant


@dataclass(frozen=True)
class FakePrediction:
    label: str
    confidence: float
    probabilities: dict
    status: str
    flag_reason: str | None
    flag_message: str | None
    model_version: str
    cell_box: tuple | None


class FakePredictor:
    def __init__(self, classes=FIRST_MODEL_CODES):
        unknown = set(classes) - set(MODEL_CODES)
        if unknown:
            raise ValueError(f"not model classes: {sorted(unknown)}")
        self.classes = list(classes)
        self.version = "fake-0001" if set(classes) == set(FIRST_MODEL_CODES) else f"fake{len(classes)}-0001"
        self.card = {"classes": self.classes, "version": self.version, "name": "fake predictor for tests"}

    def _label(self, pixels: np.ndarray) -> str:
        means = pixels.reshape(-1, 3).mean(axis=0)
        if means.max() - means.min() > 20:
            order = [int(i) for i in np.argsort(-means, kind="stable")]
            top, second, third = order
            if means[second] - means[third] > 20 and means[top] - means[second] <= 20:
                secondary = _SECONDARY[tuple(sorted((top, second)))]
                if secondary in self.classes:
                    return secondary
            return _PRIMARY[int(np.argmax(means))]
        if means.mean() < 80 and _DARK in self.classes:
            return _DARK
        return _BALANCED[int(hashlib.sha256(pixels.tobytes()).hexdigest(), 16) % 2]

    def _pixels(self, image) -> np.ndarray:
        if isinstance(image, (bytes, bytearray)):
            image = Image.open(io.BytesIO(image))
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB"))
        return np.asarray(image, dtype=np.float32)

    def predict_one(self, image) -> FakePrediction:
        pixels = self._pixels(image)
        height, width = pixels.shape[:2]
        if pixels.std() < 2.0:
            share = round(1.0 / len(self.classes), 4)
            probabilities = {name: share for name in self.classes}
            return FakePrediction(
                "NEUTROPHIL", share, probabilities, "unidentified", "not_blood_smear",
                "This does not look like a stained blood smear.", self.version, None,
            )
        label = self._label(pixels)
        rest = round(0.12 / (len(self.classes) - 1), 4)
        probabilities = {name: rest for name in self.classes}
        probabilities[label] = 0.88
        return FakePrediction(
            label, 0.88, probabilities, "classified", None, None, self.version,
            (width // 4, height // 4, 3 * width // 4, 3 * height // 4),
        )

    def predict(self, images) -> list[FakePrediction]:
        return [self.predict_one(image) for image in images]

    def field_cells(self, rgb, max_cells: int = 10):
        """The real lab-independent locator: the field path is tested on real pixels."""
        from classifier.inference import locate_cell_windows

        return locate_cell_windows(rgb, max_cells=max_cells)

    def gradcam_png(self, image, class_name=None) -> bytes:
        pixels = self._pixels(image).astype(np.uint8)
        overlay = pixels.copy()
        overlay[..., 0] = np.maximum(overlay[..., 0], 200)
        buffer = io.BytesIO()
        Image.fromarray(overlay).save(buffer, format="PNG")
        return buffer.getvalue()
