"""ml.metrics: macro F1 over the classes the evaluated set has."""

import numpy as np
import pytest

from ml.metrics import metrics_dict
from ml.multieval import macro_f1_present

CLASSES = ["NEUTROPHIL", "EOSINOPHIL", "BASOPHIL", "LYMPHOCYTE", "MONOCYTE", "IG", "ERYTHROBLAST", "PLATELET"]


def test_macro_f1_leaves_out_classes_the_set_has_no_image_of():
    # BCCD-like: four of the eight classes present; one neutrophil read as a platelet.
    y_true = np.array([0, 0, 0, 1, 1, 3, 4])
    y_pred = np.array([0, 0, 7, 1, 1, 3, 4])
    m = metrics_dict(y_true, y_pred, CLASSES)
    f1_neutrophil = 2 * 1.0 * (2 / 3) / (1.0 + 2 / 3)  # precision 1, recall 2/3
    assert m["macro_f1"] == pytest.approx((f1_neutrophil + 1 + 1 + 1) / 4)
    assert m["macro_f1"] == pytest.approx(macro_f1_present(m))
    assert m["per_class"]["PLATELET"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["accuracy"] == pytest.approx(6 / 7)
