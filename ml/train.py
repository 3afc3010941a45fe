"""Train the white-cell classifier.

    python -m ml.train --data ../shared/datasets/bccd-wbc/TRAIN --out DIR [--backbone efficientnet_lite0]

EfficientNet-Lite0 path (2 CPUs friendly):
 1. locate + crop every cell (plain view, plus ``aug_views`` augmented views);
 2. run the frozen lower blocks once and cache their activations (var/ml_cache);
 3. group near-duplicates by ImageNet-feature similarity, split train/val by group;
 4. phase 1: head on the frozen base (pooled features, base in inference mode);
 5. phase 2: fine-tune blocks >= ``split_block`` + head on the cached
    activations at a low rate with BatchNorm frozen (random dihedral flips of
    the activation maps as cheap extra augmentation);
 6. temperature scaling with class offsets + "unidentified" thresholds on validation;
 7. copy weights into the whole serving model (resize + rescale inside), save
    ``DIR/<name>.keras``, ``DIR/model_card.json``, ``DIR/training_curves.png``.
TEST is never read here.

This module is the command line only: steps 1-5 are ``ml.train_lite0`` (``ml.train_full`` for
``--backbone mobilenet_v2``), 6-7 ``ml.finish`` (``--init-model``: ``ml.finish.adopt_model``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ml.backbones import BackboneWeightsError
from ml.calibration import fit_calibration  # noqa: F401  re-exported: its home before ml.calibration
from ml.config import TrainConfig, seed_everything
from ml.data import SplitError, list_class_folders
from ml.finish import adopt_model
from ml.metrics import metrics_dict  # noqa: F401  re-exported: its home before ml.metrics
from ml.train_full import train_full
from ml.train_lite0 import train_lite0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    cfg = _config(args)
    if cfg is None:
        return 2
    files, labels, skipped = list_class_folders(args.data, list(cfg.classes))
    if "TEST" in Path(args.data).name.upper() and "TRAIN" not in Path(args.data).name.upper():
        print("refusing to train on a TEST folder", file=sys.stderr)
        return 2
    print(f"{len(files)} images, skipped folders: {skipped}")
    seed_everything(cfg.seed)
    try:
        if args.init_model:
            cfg.init_model = args.init_model
            adopt_model(files, labels, cfg, Path(args.out))
        elif cfg.backbone == "mobilenet_v2":
            train_full(files, labels, cfg, Path(args.out))
        else:
            train_lite0(files, labels, cfg, Path(args.out))
    except (SplitError, BackboneWeightsError) as exc:
        print(f"cannot train: {exc}", file=sys.stderr)
        return 2
    return 0


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="TRAIN folder with one sub-folder per class")
    ap.add_argument("--out", required=True, help="output folder for the .keras model, card and curves")
    ap.add_argument(
        "--backbone", default="efficientnet_lite0", choices=["efficientnet_lite0", "mobilenet_v2"]
    )
    ap.add_argument("--backbone-weights", default=None, help="MobileNetV2 ImageNet no-top weights file")
    ap.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs")
    ap.add_argument("--seed", type=int, default=None, help="seed of the split, the cached views and training")
    ap.add_argument(
        "--train-seed", type=int, default=None, help="seed of initialisation and batch order only"
    )
    ap.add_argument("--split-block", type=int, default=None)
    ap.add_argument("--crop-side", type=int, default=None, help="crop side, reference (320x240) pixels")
    ap.add_argument("--mask-radius", type=float, default=None, help="background mask radius, reference px")
    ap.add_argument("--no-colour", action="store_true", help="CNN alone, without the ml.colour opinion")
    ap.add_argument("--tta-views", type=int, default=None)
    ap.add_argument("--aug-views", type=int, default=None, help="augmented views cached per image")
    ap.add_argument(
        "--init-model",
        default=None,
        help="a whole .keras model trained elsewhere (ml.finetune fit): skip training, validate, "
        "calibrate and card it on the same split",
    )
    ap.add_argument(
        "--originals",
        default=None,
        help="ORIGINAL folder (source fields + labels.csv) used only to keep the copies of one field on "
        "one side of the validation split; default: ORIGINAL beside --data when present, 'none' to "
        "group by feature similarity alone",
    )
    return ap


def _config(args: argparse.Namespace) -> TrainConfig | None:
    """The training configuration the options ask for; None (said on stderr) for an --originals
    folder without labels.csv."""
    cfg = TrainConfig(backbone=args.backbone, backbone_weights=args.backbone_weights)
    cfg.colour = not args.no_colour
    # Relative to the working directory, so the card does not carry this machine's absolute paths.
    originals = args.originals or os.path.relpath(Path(args.data).resolve().parent / "ORIGINAL")
    if originals.lower() != "none" and (Path(originals) / "labels.csv").exists():
        cfg.originals_dir = originals
    elif args.originals and originals.lower() != "none":
        print(f"--originals {originals}: no labels.csv there", file=sys.stderr)
        return None
    for k, v in (
        ("finetune_epochs", args.epochs),
        ("seed", args.seed),
        ("train_seed", args.train_seed),
        ("crop_side", args.crop_side),
        ("mask_radius", args.mask_radius),
        ("split_block", args.split_block),
        ("tta_views", args.tta_views),
        ("aug_views", args.aug_views),
    ):
        if v is not None:
            setattr(cfg, k, v)
    return cfg


if __name__ == "__main__":
    sys.exit(main())
