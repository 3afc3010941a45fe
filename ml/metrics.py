"""Figures of predictions against labels: accuracy, macro F1, per class, per source field."""

from __future__ import annotations

import numpy as np


def source_balanced_accuracy(y_pred: np.ndarray, y_true: np.ndarray, groups: np.ndarray) -> float:
    """Mean over source fields of the accuracy on that field's copies."""
    return float(np.mean([np.mean(y_pred[groups == g] == y_true[groups == g]) for g in np.unique(groups)]))


def metrics_dict(y_true, y_pred, classes, groups=None) -> dict:
    """Accuracy, macro F1, per-class figures, confusion matrix; with ``groups`` (source fields) also
    the accuracy per source field (``source_balanced_accuracy``)."""
    # scikit-learn: imported when figures are computed (``import ml.metrics`` stays cheap).
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=range(len(classes)), zero_division=0)
    out = {
        "accuracy": float(np.mean(y_true == y_pred)),
        # Over the classes the evaluated set has (BCCD has 4 of the 8): a class with no image in
        # it would add an F1 of 0 whatever the model does.
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=np.unique(y_true), average="macro", zero_division=0)
        )
        if len(y_true)
        else 0.0,
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=range(len(classes))).tolist(),
        "n_images": int(len(y_true)),
    }
    if groups is not None:
        out["accuracy_per_source_field"] = source_balanced_accuracy(y_pred, y_true, groups)
    return out
