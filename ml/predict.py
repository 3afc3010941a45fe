"""``python -m ml.predict IMAGE... [--model PATH]``: one JSON object per image."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ml.predictor import ImageDecodeError, ModelLoadError, load_predictor


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("images", nargs="+")
    ap.add_argument("--model", default=None, help="path to a .keras model (default: the shipped model)")
    args = ap.parse_args(argv)
    try:
        pred = load_predictor(args.model)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rc = 0
    for path in args.images:
        try:
            p = pred.predict_one(Path(path).read_bytes())
            print(json.dumps({"image": path, **p.to_dict()}))
        except (OSError, ImageDecodeError) as exc:
            print(json.dumps({"image": path, "error": str(exc)}))
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
