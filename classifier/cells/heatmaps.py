"""A cell's Grad-CAM heat map, drawn the first time someone opens it and kept from then on.

Drawing one costs a backward pass through the network (about as much as the classification
itself), and most cells are never looked at that closely, so an upload does not draw it
(issue 15, serving cost). The first request draws it with the model that classified the cell and
stores it beside the image; later requests read the stored file.
"""

import logging

from django.core.files.base import ContentFile
from django.db import transaction

from classifier import files, inference, limits
from classifier.cells.validation import check_image
from classifier.models import Classification, Status

logger = logging.getLogger(__name__)


class HeatmapUnavailable(Exception):
    """No heat map can be shown for this cell; ``str()`` says why, for the user."""


def heatmap_state(cell: Classification) -> str:
    """``"stored"``, ``"drawable"`` (drawn when first opened), ``"pending"`` (the model has not
    run) or ``"other_model"`` (classified by a model no longer served). Loads no model: while the
    served model is not loaded yet, a classified cell counts as drawable."""
    if cell.heatmap:
        return "stored"
    if cell.status == Status.PENDING:
        return "pending"
    if inference.readiness()["state"] == "ready" and inference.get_predictor().version != cell.model_version:
        return "other_model"
    return "drawable"


def classification_heatmap(*, classification: Classification):
    """The cell's stored heat map (a FieldFile), drawn and stored on first use.

    Raises HeatmapUnavailable when the model has not run on the image, or when the model that
    classified it is no longer the one served (a map from another network would show where that
    network looks, not why this cell got its class); PredictorUnavailable when the model cannot
    load.
    """
    if classification.heatmap:
        return classification.heatmap
    if classification.status == Status.PENDING:
        raise HeatmapUnavailable("This result has no heat map yet (the model has not run).")
    predictor = inference.get_predictor()
    if predictor.version != classification.model_version:
        raise HeatmapUnavailable(
            f"No heat map: this cell was classified by model {classification.model_version}, "
            f"and the model now served is {predictor.version}."
        )
    png = _draw(classification, predictor)
    with transaction.atomic():
        locked = Classification.objects.select_for_update().get(pk=classification.pk)
        if locked.heatmap:  # another request drew it first: keep theirs
            return locked.heatmap
        locked.heatmap.save("x.png", ContentFile(png), save=False)
        name = locked.heatmap.name
        try:
            locked.save(update_fields=["heatmap"])
        except BaseException:
            files.delete_files(name)
            raise
    classification.heatmap = locked.heatmap
    return locked.heatmap


def _draw(classification: Classification, predictor) -> bytes:
    with classification.image.open("rb") as handle:
        data = handle.read()
    with limits.image_work():
        checked = check_image(data, filename=classification.original_filename)
        return predictor.gradcam_png(checked.image, classification.predicted_label)
