"""The model card: the JSON record beside a served model (``model_card.json``).

Writing: ``write_bundle`` saves a trained model with everything its card names and the card itself
(its version is the bundle's hash, ``ml.bundle``); ``data_record``, ``colour_card_dict`` and
``finetune_record`` build its entries. Reading: ``model_summary`` is what a lab or a laboratory
information system is told about a model (served by the web app through ``ml.predictor``).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ml import colour, ood
from ml.bundle import bundle_version
from ml.calibration import Calibration
from ml.config import TrainConfig


@dataclass(frozen=True)
class BundleContents:
    """What ``write_bundle`` saves beside the model, and the card entries it writes."""

    stats: dict  # OOD statistics (ml.ood.fit) of the training side
    calibration: Calibration
    val_metrics: dict  # the card's validation_metrics
    val_predictions: dict  # arrays saved as val_predictions.npz
    data: dict  # the card's data entry (data_record)
    history: dict  # Keras histories by phase
    card_extra: dict = field(default_factory=dict)  # entries the trainer adds to the card
    colour_model: dict | None = None  # ml.colour model, saved when colour_card names its file
    colour_card: dict | None = None  # the card's colour entry (colour_card_dict)
    command: str | None = None  # default: python -m ml.train with this process's arguments


def write_bundle(model, cfg: TrainConfig, out: Path, contents: BundleContents, *, log=print) -> dict:
    """Save the served bundle: model, OOD statistics, colour model, validation predictions, curves, card."""
    c = contents
    classes = list(cfg.classes)
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / f"{cfg.name}.keras"
    model.save(model_path)
    ood.save(c.stats, out / "ood_stats.npz")
    if c.colour_card:
        if c.colour_model is None:
            raise ValueError("the card names a colour model but none was given")
        colour.save(c.colour_model, out / c.colour_card["file"])
    np.savez_compressed(out / "val_predictions.npz", **c.val_predictions)
    save_curves(c.history, out / "training_curves.png")
    card = {
        "name": cfg.name,
        "version": None,  # below: the hash of the whole bundle (ml.bundle)
        "model_file": model_path.name,
        "classes": classes,
        "backbone": cfg.backbone,
        "input": {
            "type": "RGB crop, 0..255 floats, any size (resized inside the model)",
            "input_size": cfg.input_size,
        },
        "crop": {
            "locator": "ml.locate.locate_cells (blue-green nucleus index)",
            "crop_side_ref_px": cfg.crop_side,
            "mask_radius_ref_px": cfg.mask_radius,
            "reference_field": "320x240 px (half of the 640x480 camera field)",
        },
        "tta_views": cfg.tta_views,
        "colour": c.colour_card,
        "temperature": c.calibration.temperature,
        # Served probabilities: softmax(log p / temperature + class_bias[class]) (ml.ood.calibrate).
        "class_bias": ood.class_bias_record(classes, c.calibration.class_bias),
        "thresholds": c.calibration.thresholds,
        "ood_stats_file": "ood_stats.npz",
        "config": cfg.to_dict(),
        "data": c.data,
        "validation_metrics": c.val_metrics,
        "validation_flagged_rate": float(c.calibration.flagged.mean()),
        "history": {k: {m: [float(x) for x in v] for m, v in h.items()} for k, h in c.history.items()},
        **c.card_extra,
        "test_metrics": None,
        "command": c.command or "python -m ml.train " + " ".join(sys.argv[1:]),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    card["version"] = bundle_version(card, model_path)
    (out / "model_card.json").write_text(json.dumps(card, indent=2))
    log(f"wrote {model_path} version {card['version']}")
    return card


def save_curves(history: dict, path: Path) -> None:
    import matplotlib  # matplotlib: imported when curves are drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for phase, h in history.items():
        for key, ax in (("loss", axes[0]), ("accuracy", axes[1])):
            if key in h:
                ax.plot(range(1, len(h[key]) + 1), h[key], label=f"{phase} train")
            if "val_" + key in h:
                ax.plot(range(1, len(h["val_" + key]) + 1), h["val_" + key], "--", label=f"{phase} val")
            ax.set_xlabel("epoch")
            ax.set_title(key)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


@dataclass(frozen=True)
class SplitRecord:
    """How the images were split into the training and validation sides, as the card records it."""

    n_train: int
    n_val: int
    text: str  # the rule, in words
    source_fields: dict  # {"train": ..., "val": ...}: source fields per class of each side


def data_record(files, labels, groups, classes, split: SplitRecord) -> dict:
    """The card's ``data`` entry."""
    return {
        "train_dir": str(Path(files[0]).parent.parent),
        "n_images": len(files),
        "per_class": {c: int((labels == i).sum()) for i, c in enumerate(classes)},
        "n_train": int(split.n_train),
        "n_val": int(split.n_val),
        "n_groups": int(len(np.unique(groups))),
        "split": split.text,
        "source_fields": split.source_fields,
    }


def colour_card_dict(weight: float, by_weight: dict) -> dict:
    """The card's ``colour`` entry."""
    return {
        "file": "colour_model.npz",
        "weight": weight,
        "crop_side_ref_px": colour.CROP_SIDE_REF,
        "crop_size": colour.CROP_SIZE,
        "features": colour.FEATURE_NAMES,
        "validation_by_weight": {str(w): a for w, a in by_weight.items()},
    }


def finetune_record(info: dict) -> dict:
    """The card's ``finetune`` entry: what ``ml.finetune fit`` recorded beside the model."""
    keys = ("name", "backend", "device", "config", "complete", "seconds", "command")
    return {k: info[k] for k in keys if k in info} | {"pack": info.get("pack")}


# Validation figures, best estimate first: out of fold with the calibration fitted on the other folds
# (ml.crossval), the calibrated decision, then the uncalibrated argmax (older cards).
_VALIDATION_KEYS = ("calibrated_nested", "calibrated", "tta{v}_with_colour", "tta{v}")


def _figures(metrics: dict | None) -> dict | None:
    return _summary(metrics) if metrics else None


def _summary(metrics: dict) -> dict:
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
        # What ``ood_distance`` measures: "knn" (cosine distance to the k-th nearest training cell) or
        # "mahalanobis" (older bundles, whose cards do not say); None without a feature check.
        "ood_score": card.get("ood_score")
        or ({"method": "mahalanobis"} if card.get("ood_stats_file") else None),
        "validation": validation,
        "test": _test_figures(test),
    }


def _test_figures(test: dict) -> dict | None:
    """Held-out test figures: one lab's (the first model), or per source with the silent error rate."""
    if not test:
        return None
    if "per_source" not in test:
        return _summary(test) | {"unidentified_rate": test.get("unidentified_rate")}
    return {
        "per_source": {
            s: _summary(m) | {"flagged_rate": m.get("flagged"), "silent_error_rate": m.get("silent_error")}
            for s, m in test["per_source"].items()
        }
    }
