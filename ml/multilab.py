"""Train, calibrate and evaluate the eight-class model on several labs (command-line tool).

    # 1. canonical crops of every image of every source (ml.normalize), ~10 min on 2 CPUs
    python -m ml.multilab cache --bccd ../shared/datasets/bccd-wbc \
        --pbc /work/data/PBC_dataset_normal_DIB ../shared/datasets/pbc/split.csv --out var/mlcache
    # 2. fine-tune the whole EfficientNet-Lite0 on the chosen sources' training sides, calibrate
    #    and set flags on their validation sides, write a served bundle
    python -m ml.multilab fit --cache var/mlcache --sources bccd,pbc --out var/models/multilab
    # 3. held-out test figures per source, through the served predictor (one look per candidate)
    python -m ml.multilab evaluate --model var/models/multilab --cache var/mlcache --sources bccd,pbc

A fitted bundle calibrated again with another out-of-distribution score (``ml.ood``), the network
unchanged: ``refinish --model D --cache C --out D2 --ood-score knn`` (then ``python -m ml.oodcal``).

Leave one lab out (the figure that predicts a new lab): ``fit --sources pbc`` then
``evaluate --sources bccd``, and ``fit --sources bccd`` then ``evaluate --sources pbc``.

Validation never touches a test split: PBC's training side loses 10 % of each class (by file),
BCCD's TRAIN loses ~15 % of its source fields (augmented copies of one field stay together,
``ml.cropcache.bccd_groups``).
This module is the command line; the library is ``ml.cropcache``, ``ml.augment``, ``ml.multifit``
and ``ml.multieval``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ml import ood
from ml.cropcache import CACHE_SIZE, cache
from ml.multieval import evaluate, record_test
from ml.multifit import FitConfig, fit, load_sides, refinish


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cache", help="canonical crops of every image of every source")
    c.add_argument("--bccd", default=None, help="BCCD folder (TRAIN/ and TEST/)")
    c.add_argument("--pbc", nargs=2, default=None, metavar=("IMAGES", "SPLIT_CSV"))
    c.add_argument("--out", required=True)
    c.add_argument("--limit", type=int, default=None, help="at most N images per source, split and class")
    c.add_argument("--size", type=int, default=CACHE_SIZE, help="cached crop side (px)")
    f = sub.add_parser("fit", help="fine-tune, calibrate and bundle")
    f.add_argument("--cache", required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--sources", default="bccd,pbc")
    f.add_argument("--epochs", type=int, default=FitConfig.epochs)
    f.add_argument("--input-size", type=int, default=FitConfig.input_size)
    f.add_argument("--seed", type=int, default=FitConfig.seed)
    f.add_argument("--bccd-per-epoch", type=int, default=FitConfig.bccd_per_epoch)
    f.add_argument("--scale-jitter", type=float, default=FitConfig.scale_jitter,
                   help="log-uniform zoom range of the training views; shipped: 0.18")
    f.add_argument("--stain", choices=("none", "reinhard"), default=FitConfig.stain,
                   help="stain normalisation layer (ml.stain); shipped: none")
    f.add_argument("--ood-score", choices=ood.SCORES, default=FitConfig.ood_score,
                   help="out-of-distribution score (ml.ood); shipped: knn")
    r = sub.add_parser("refinish", help="calibrate a fitted bundle again with another OOD score")
    r.add_argument("--model", required=True, help="bundle folder written by fit")
    r.add_argument("--cache", required=True, help="the crop cache it was fitted on")
    r.add_argument("--out", required=True, help="new bundle folder (must not exist)")
    r.add_argument("--ood-score", choices=ood.SCORES, default=FitConfig.ood_score)
    e = sub.add_parser("evaluate", help="test figures per source through the served predictor")
    e.add_argument("--model", required=True, help="bundle folder")
    e.add_argument("--cache", required=True)
    e.add_argument("--sources", default="bccd,pbc")
    e.add_argument("--json", default=None)
    e.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="val: the two-lab recipe's validation sides (to judge a change without a test look)",
    )
    e.add_argument(
        "--update-card",
        action="store_true",
        help="record the figures as the bundle's test_metrics (not part of its version)",
    )
    a = ap.parse_args(argv)
    if a.cmd == "cache":
        if not (a.bccd or a.pbc):
            ap.error("name at least one source (--bccd, --pbc)")
        cache({"bccd": a.bccd, "pbc": a.pbc}, Path(a.out), limit=a.limit, size=a.size)
    elif a.cmd == "fit":
        cfg = FitConfig(
            sources=tuple(a.sources.split(",")),
            epochs=a.epochs,
            input_size=a.input_size,
            seed=a.seed,
            bccd_per_epoch=a.bccd_per_epoch,
            stain=a.stain,
            scale_jitter=a.scale_jitter,
            ood_score=a.ood_score,
        )
        fit(Path(a.cache), Path(a.out), cfg)
    elif a.cmd == "refinish":
        try:
            refinish(Path(a.model), Path(a.cache), Path(a.out), a.ood_score)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    else:
        if a.split == "val" and a.update_card:
            ap.error("--update-card records test figures only")
        select = load_sides(Path(a.cache), FitConfig()).val if a.split == "val" else None
        res = evaluate(Path(a.model), Path(a.cache), a.sources.split(","), select=select)
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=2))
        if a.update_card:
            record_test(Path(a.model), res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
