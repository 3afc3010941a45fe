"""A served bundle's version: one hash over everything that decides what the predictor answers.

A bundle is the ``.keras`` model, its ``model_card.json`` and the files the card names (OOD
statistics, colour model). Every result records the version, so the version must change whenever
any of them changes what the model says: the network, the OOD statistics, the colour model, or a
serving setting in the card (classes, input and crop, test-time views, colour weight, temperature,
class offsets, flag thresholds). Figures, history and provenance in the card are not part of it, so
recording TEST metrics in the card keeps the version. ``ml.predictor`` refuses a bundle whose card
states another version than its contents hash to.

    python -m ml.bundle ml/artifacts            # the card's version and the computed one
    python -m ml.bundle DIR --write             # give a changed bundle its new version
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle", help="folder with model_card.json and the files it names")
    ap.add_argument("--write", action="store_true", help="store the computed version in the card")
    args = ap.parse_args(argv)
    card_path = Path(args.bundle) / "model_card.json"
    try:
        card = json.loads(card_path.read_text())
        computed = bundle_version(card, Path(args.bundle) / card["model_file"])
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {"card": card.get("version"), "computed": computed, "matches": card.get("version") == computed}
        )
    )
    if args.write and card.get("version") != computed:
        card["version"] = computed
        card_path.write_text(json.dumps(card, indent=2))
        print(f"{card_path}: version is now {computed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
