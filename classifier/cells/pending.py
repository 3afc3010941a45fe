"""The model's answer for one cell: ask the predictor (through ``classifier.inference``), copy the
answer onto the row, and classify what was stored while the model was unavailable (``pending``).

``classifier.cells.services`` calls ``predict`` for every upload; this module calls no service.
"""

import logging

from django.db import transaction

from classifier import inference, limits
from classifier.cells.validation import CheckedImage, ImageRejected, check_image
from classifier.models import Classification, Status

logger = logging.getLogger(__name__)


def apply_prediction(classification: Classification, prediction) -> None:
    """Copy the model's answer onto the row (not saved)."""
    classification.status = prediction.status
    classification.predicted_label = prediction.label
    classification.confidence = float(prediction.confidence)
    classification.probabilities = {k: float(v) for k, v in prediction.probabilities.items()}
    classification.flag_reason = prediction.flag_reason or ""
    classification.flag_message = prediction.flag_message or ""
    classification.model_version = prediction.model_version
    classification.cell_box = list(prediction.cell_box) if prediction.cell_box else None


def predict(checked: CheckedImage):
    """The prediction, or None when the model is unavailable. The heat map is drawn when someone
    first opens it (``classifier.cells.heatmaps``), not here."""
    try:
        return inference.get_predictor().predict_one(checked.image)
    except inference.PredictorUnavailable as exc:
        logger.error("model unavailable, keeping upload as pending: %s", exc)
        return None
    except inference.image_decode_errors() as exc:
        raise ImageRejected("not_an_image", f"The image could not be analysed: {exc}", 415) from exc


def classification_classify_pending(*, classification: Classification) -> Classification:
    """Run the model on an image stored while the model was unavailable."""
    if classification.status != Status.PENDING:
        return classification
    with classification.image.open("rb") as handle:
        data = handle.read()
    with limits.image_work():
        checked = check_image(data, filename=classification.original_filename)
        prediction = predict(checked)
        del checked
    if prediction is None:
        raise inference.PredictorUnavailable("The model is still unavailable.")
    with transaction.atomic():
        locked = Classification.objects.select_for_update().get(pk=classification.pk)
        if locked.status != Status.PENDING:
            return locked
        apply_prediction(locked, prediction)
        locked.save()
    return locked


def classification_classify_all_pending() -> int:
    """Classify every image stored while the model was unavailable; stops if it still is."""
    count = 0
    for classification in Classification.objects.filter(status=Status.PENDING).order_by("id"):
        try:
            classification_classify_pending(classification=classification)
        except inference.PredictorUnavailable as exc:
            logger.error("model still unavailable; pending images wait: %s", exc)
            break
        count += 1
    return count
