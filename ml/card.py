"""The model card: the JSON record beside a served model (``model_card.json``).

``model_summary`` is what a lab or a laboratory information system is told about a model (served by
the web app through ``ml.predictor.model_summary``).
"""

from __future__ import annotations

# Validation figures, best estimate first: out of fold with the calibration fitted on the other folds
# (ml.crossval), the calibrated decision, then the uncalibrated argmax (older cards).
_VALIDATION_KEYS = ("calibrated_nested", "calibrated", "tta{v}_with_colour", "tta{v}")


def _figures(metrics: dict | None) -> dict | None:
    if not metrics:
        return None
    return {
        "n_images": metrics.get("n_images"),
        "accuracy": metrics.get("accuracy"),
        "macro_f1": metrics.get("macro_f1"),
        # classes the evaluated set has no cell of have no recall (BCCD has 4 of the 8)
        "recall": {
            c: m.get("recall") for c, m in (metrics.get("per_class") or {}).items() if m.get("support", 1)
        },
    }


def model_summary(card: dict) -> dict:
    """What a lab or a laboratory information system needs to know about a model, from its card:
    identity, classes, how probabilities are calibrated and flags set, and its validation and TEST
    figures. Keys a card does not have are None (older or stand-in models)."""
    views = card.get("tta_views", 1)
    vm = card.get("validation_metrics") or {}
    key = next((k.format(v=views) for k in _VALIDATION_KEYS if k.format(v=views) in vm), None)
    test = card.get("test_metrics") or {}
    if test.get("model_version") not in (None, card.get("version")):
        test = {}  # figures of another model: not this one's
    per_class = (card.get("data") or {}).get("per_class") or {}
    total = sum(per_class.values())
    validation = _figures(vm.get(key)) if key else None
    if validation is not None:
        validation |= {"estimate": key, "flagged_rate": card.get("validation_flagged_rate")}
    return {
        "name": card.get("name"),
        "version": card.get("version"),
        "classes": list(card.get("classes") or []),
        "backbone": card.get("backbone"),
        "input_size": (card.get("input") or {}).get("input_size"),
        "tta_views": card.get("tta_views"),
        "trained_at": card.get("trained_at"),
        # The labs (data sources) it learned from; None for the first model's card (BCCD only).
        "training_sources": sorted((card.get("data") or {}).get("sources") or {}) or None,
        "calibration": {
            "method": "softmax(log p / temperature + class_bias)",
            "temperature": card.get("temperature"),
            "class_bias": card.get("class_bias"),
            # The class balance the probabilities are calibrated for (the training images').
            "training_class_fractions": {c: n / total for c, n in per_class.items()} if total else None,
        },
        "thresholds": card.get("thresholds"),
        "validation": validation,
        "test": _test_figures(test),
    }


def _test_figures(test: dict) -> dict | None:
    """Held-out test figures: one lab's (the first model), or per source with the silent error rate."""
    if not test:
        return None
    if "per_source" not in test:
        return _figures(test) | {"unidentified_rate": test.get("unidentified_rate")}
    return {
        "per_source": {
            s: _figures(m) | {"flagged_rate": m.get("flagged"), "silent_error_rate": m.get("silent_error")}
            for s, m in test["per_source"].items()
        }
    }
