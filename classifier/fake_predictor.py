"""A deterministic stand-in for the Keras model, for fast web tests.

Same attributes as ``ml.predictor.Predictor``. The label follows the image's
dominant colour channel so tests can choose it; a flat image is "unidentified".
"""

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

CLASSES = ["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"]


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
    classes = CLASSES
    version = "fake-0001"
    card = {"classes": CLASSES, "version": "fake-0001", "name": "fake predictor for tests"}

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
            probabilities = {name: 0.25 for name in CLASSES}
            return FakePrediction(
                "NEUTROPHIL", 0.25, probabilities, "unidentified", "not_blood_smear",
                "This does not look like a stained blood smear.", self.version, None,
            )
        means = pixels.reshape(-1, 3).mean(axis=0)
        # R, G, B dominant -> EOS, LYM, MON; grey-ish/balanced -> NEU, picked by a content hash.
        if means.max() - means.min() > 20:
            index = int(np.argmax(means))
        else:
            index = 3 if int(hashlib.sha256(pixels.tobytes()).hexdigest(), 16) % 2 else 0
        probabilities = {name: 0.04 for name in CLASSES}
        probabilities[CLASSES[index]] = 0.88
        return FakePrediction(
            CLASSES[index], 0.88, probabilities, "classified", None, None, self.version,
            (width // 4, height // 4, 3 * width // 4, 3 * height // 4),
        )

    def predict(self, images) -> list[FakePrediction]:
        return [self.predict_one(image) for image in images]

    def gradcam_png(self, image, class_name=None) -> bytes:
        pixels = self._pixels(image).astype(np.uint8)
        overlay = pixels.copy()
        overlay[..., 0] = np.maximum(overlay[..., 0], 200)
        buffer = io.BytesIO()
        Image.fromarray(overlay).save(buffer, format="PNG")
        return buffer.getvalue()
