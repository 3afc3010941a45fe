"""A served bundle's version: one hash over everything that decides what the predictor answers.

A bundle is the ``.keras`` model, its ``model_card.json`` and the files the card names (OOD
statistics, colour model). Every result records the version, so the version must change whenever
any of them changes what the model says: the network, the OOD statistics, the colour model, or a
serving setting in the card (classes, input and crop, test-time views, colour weight, temperature,
class offsets, flag thresholds). Figures, history and provenance in the card are not part of it, so
recording TEST metrics in the card keeps the version. ``load_bundle`` (the predictor's loader)
refuses a bundle whose card states another version than its contents hash to.

    python -m ml.bundle ml/artifacts            # the card's version and the computed one; exit 1 if
                                                # they differ, 2 if the card's settings are unusable
    python -m ml.bundle DIR --write             # give a changed (valid) bundle its new version
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

from ml import ood


class ModelLoadError(RuntimeError):
    """The model file or its card is missing, unreadable or inconsistent."""


# Card entries that change what the predictor answers.
SERVING_KEYS = (
    "classes",
    "backbone",
    "input",
    "crop",
    "tta_views",
    "colour",
    "temperature",
    "class_bias",
    "thresholds",
)


def _number(value, what: str, low=None, high=None, above=None):
    """``value`` if it is a finite number within the bounds, else ValueError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    if (
        (low is not None and value < low)
        or (high is not None and value > high)
        or (above is not None and value <= above)
    ):
        bounds = f"> {above}" if above is not None else f"in [{low}, {high}]"
        raise ValueError(f"{what} must be {bounds}, got {value!r}")
    return value


def check_serving_settings(card: dict) -> None:
    """ValueError naming the first serving setting of the card that the predictor cannot use.

    Checked when a bundle loads and before ``--write`` versions it: a temperature of 0 gave NaN
    confidences, a string threshold failed on every prediction, a missing crop a KeyError.
    """
    if not isinstance(card, dict):
        raise ValueError(f"the card must be a JSON object, got {type(card).__name__}")
    _check_classes(card.get("classes"))
    size = (card.get("input") or {}).get("input_size") if isinstance(card.get("input"), dict) else None
    if isinstance(size, bool) or not isinstance(size, int) or size < 32:
        raise ValueError(f"input.input_size must be an integer of at least 32, got {size!r}")
    _check_crop(card.get("crop"))
    if card.get("tta_views", 1) not in (1, 2, 4, 8) or isinstance(card.get("tta_views"), bool):
        raise ValueError(f"tta_views must be 1, 2, 4 or 8, got {card.get('tta_views')!r}")
    _number(card.get("temperature", 1.0), "temperature", above=0)
    _check_thresholds(card.get("thresholds") or {})
    _check_colour(card.get("colour"))
    ood.card_class_bias(card)


def _check_classes(classes) -> None:
    if (
        not isinstance(classes, list)
        or not classes
        or not all(isinstance(c, str) and c for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise ValueError(f"classes must be a list of distinct class names, got {classes!r}")


def _check_crop(crop) -> None:
    if not isinstance(crop, dict):
        raise ValueError(f"crop must be an object with crop_side_ref_px, got {crop!r}")
    if crop.get("method", "ref_field") not in ("ref_field", "rbc_scale"):
        raise ValueError(f"crop.method must be ref_field or rbc_scale, got {crop.get('method')!r}")
    if crop.get("method") == "rbc_scale":
        _number(crop.get("field_rbc"), "crop.field_rbc", above=0)
    _number(crop.get("crop_side_ref_px"), "crop.crop_side_ref_px", above=0)
    if crop.get("mask_radius_ref_px") is not None:
        _number(crop["mask_radius_ref_px"], "crop.mask_radius_ref_px", above=0)


def _check_thresholds(thresholds) -> None:
    if not isinstance(thresholds, dict):
        raise ValueError(f"thresholds must be an object, got {thresholds!r}")
    if "ood_distance" in thresholds:
        _number(thresholds["ood_distance"], "thresholds.ood_distance", above=0)
    if "min_confidence" in thresholds:
        _number(thresholds["min_confidence"], "thresholds.min_confidence", low=0.0, high=1.0)


def _check_colour(colour) -> None:
    if colour is not None:
        if not isinstance(colour, dict) or not isinstance(colour.get("file"), str):
            raise ValueError(f"colour must be null or an object with a file and a weight, got {colour!r}")
        _number(colour.get("weight"), "colour.weight", low=0.0, high=1.0)


def file_hash(path: Path, n: int = 16) -> str:
    """The first ``n`` hex digits of the file's SHA-256."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def bundle_files(card: dict, model_path: Path) -> dict[str, Path]:
    """The files of a bundle, by what they are: the model and those its card names beside it."""
    files = {"model": Path(model_path)}
    if card.get("ood_stats_file"):
        files["OOD statistics"] = Path(model_path).parent / card["ood_stats_file"]
    if (card.get("colour") or {}).get("file"):
        files["colour model"] = Path(model_path).parent / card["colour"]["file"]
    return files


def bundle_version(card: dict, model_path: Path) -> str:
    """16 hex digits of a SHA-256 over the card's serving settings and the bundle's files.
    FileNotFoundError when a file the card names is missing."""
    h = hashlib.sha256(json.dumps({k: card.get(k) for k in SERVING_KEYS}, sort_keys=True).encode())
    for what, path in bundle_files(card, model_path).items():
        if not path.is_file():
            raise FileNotFoundError(f"the card's {what} file {path.name} is missing next to {model_path}")
        h.update(f"{what}:{file_hash(path, 64)}".encode())
    return h.hexdigest()[:16]


def load_bundle(path: Path):
    """``(keras model, card, OOD statistics)`` of the bundle whose model file is ``path``, checked:
    the card's serving settings, its class count and its version (the bundle's hash, ``ml.bundle``)."""
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    card_path = path.parent / "model_card.json"
    try:
        card = json.loads(card_path.read_text())
        _ = card["version"]
        check_serving_settings(card)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"model card {card_path} is missing or invalid: {exc}") from exc
    try:
        import keras  # Keras: imported when a model is loaded (``import ml.bundle`` stays cheap)

        import ml.stain  # noqa: F401  registers the stain layer a bundle may hold

        model = keras.saving.load_model(path, compile=False)
    except Exception as exc:  # keras raises many types for corrupt archives
        raise ModelLoadError(f"could not load model {path}: {exc}") from exc
    if model.output_shape[-1] != len(card["classes"]):
        raise ModelLoadError(
            f"model {path} has {model.output_shape[-1]} outputs but the card lists "
            f"{len(card['classes'])} classes"
        )
    stats = None
    if card.get("ood_stats_file"):
        try:
            stats = ood.load(path.parent / card["ood_stats_file"])
        except Exception as exc:
            raise ModelLoadError(f"could not read OOD statistics next to {path}: {exc}") from exc
    try:
        version = bundle_version(card, path)
    except FileNotFoundError as exc:
        raise ModelLoadError(str(exc)) from exc
    if version != card["version"]:
        raise ModelLoadError(
            f"model card {card_path} states version {card['version']}, but the bundle hashes to {version}: "
            f"a file or a serving setting changed after it was versioned (`python -m ml.bundle "
            f"{path.parent} --write` gives the changed bundle its own version)"
        )
    return model, card, stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle", help="folder with model_card.json and the files it names")
    ap.add_argument("--write", action="store_true", help="store the computed version in the card")
    args = ap.parse_args(argv)
    card_path = Path(args.bundle) / "model_card.json"
    try:
        card = json.loads(card_path.read_text())
        check_serving_settings(card)
        computed = bundle_version(card, Path(args.bundle) / card["model_file"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"error: {card_path}: {exc}", file=sys.stderr)
        return 2
    matches = card.get("version") == computed
    print(json.dumps({"card": card.get("version"), "computed": computed, "matches": matches}))
    if args.write and not matches:
        card["version"] = computed
        card_path.write_text(json.dumps(card, indent=2))
        print(f"{card_path}: version is now {computed}")
        return 0
    return 0 if matches else 1


if __name__ == "__main__":
    sys.exit(main())
