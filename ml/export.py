"""``python -m ml.export``: export the shipped model to LiteRT (cached, verified; see ``ml.litert``)."""

from __future__ import annotations

import argparse
import json
import sys

from ml import litert
from ml.predictor import ModelLoadError, load_predictor


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Export the shipped model to LiteRT (cached, verified).")
    ap.add_argument("--model", default=None, help="path to a .keras model (default: the shipped model)")
    ap.add_argument("--force", action="store_true", help="export again even when the cache is valid")
    args = ap.parse_args(argv)
    try:
        if args.force:
            pred = load_predictor(args.model, backend="keras")
            tfl, meta = litert.export(
                pred.network,
                pred.network_fn,
                pred.version,
                pred.n_views,
                pred.input_size,
                len(pred.classes),
            )
        else:
            pred = load_predictor(args.model, backend="litert")
            if pred.litert_path is None or pred.litert_meta is None:  # a litert predictor has both
                raise litert.ExportError("the LiteRT predictor has no export")
            tfl, meta = pred.litert_path, pred.litert_meta
    except (ModelLoadError, litert.ExportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"path": str(tfl), **meta}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
