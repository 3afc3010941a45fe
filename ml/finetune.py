"""Whole-network fine-tuning on any Keras 3 backend (for a machine with a GPU).

The cached path in ``ml.train`` fine-tunes only the top blocks because every
step of the whole network costs too much on 2 CPUs. This module fine-tunes
every block (BatchNorm frozen) with fresh augmentation every epoch, and is
meant for a GPU machine, which may have PyTorch or JAX but no TensorFlow:
Keras 3 runs the same model definition (``ml.model.build_classifier``) on any
backend, and the ``.keras`` file it writes loads in TensorFlow for serving.

Two steps, so that the GPU machine needs neither the dataset nor TensorFlow:

    # here (TensorFlow): crop the TRAINING side of ml.train's source-field split
    python -m ml.finetune pack --data ../shared/datasets/bccd-wbc/TRAIN --out var/gpu_pack
    # on the GPU machine (any backend, e.g. KERAS_BACKEND=torch)
    python -m ml.finetune fit --pack var/gpu_pack --out DIR --input-size 192 --epochs 15 --seed 1
    # here again: validation, calibration, colour opinion, flags and card, as for any model
    python -m ml.train --data ../shared/datasets/bccd-wbc/TRAIN --out DIR2 --init-model DIR/<name>.keras

The pack holds only the training side of the split (validation fields never
leave this machine, so they cannot influence the fit), the cell crops exactly
as served (``crop_side`` reference pixels around the located nucleus, native
resolution) as JPEG, and Lite0's ImageNet weights (float16, by layer name).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ml.config import TrainConfig
from ml.finetune_fit import FitConfig, fit
from ml.finetune_pack import PACK_JPEG_QUALITY, pack

JIT_COMPILE: dict[str, bool | str] = {"auto": "auto", "on": True, "off": False}  # --jit-compile


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="crop the training side of the split (needs TensorFlow)")
    p.add_argument("--data", required=True, help="TRAIN folder with one sub-folder per class")
    p.add_argument("--out", required=True)
    p.add_argument("--originals", default=None, help="ORIGINAL folder (default: beside --data)")
    p.add_argument(
        "--folds", type=int, default=None, help="K-fold: pack every image with its fold (ml.crossval)"
    )
    p.add_argument("--jpeg-quality", type=int, default=PACK_JPEG_QUALITY)
    f = sub.add_parser("fit", help="fine-tune every block on a pack (any Keras backend)")
    f.add_argument("--pack", required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--input-size", type=int, default=192)
    f.add_argument("--epochs", type=int, default=15)
    f.add_argument("--head-epochs", type=int, default=2)
    f.add_argument("--lr", type=float, default=3e-4)
    f.add_argument("--batch", type=int, default=64)
    f.add_argument("--seed", type=int, default=1)
    f.add_argument("--name", default=None)
    f.add_argument("--stop-at", type=float, default=None, help="unix time: stop (marked incomplete) before")
    f.add_argument("--fold", type=int, default=None, help="K-fold pack: train on every other fold")
    f.add_argument("--save", choices=["keras", "weights16"], default="keras")
    f.add_argument(
        "--jit-compile",
        choices=["auto", "on", "off"],
        default="auto",
        help="compile the train step (Keras: XLA on TensorFlow/JAX, torch.compile on PyTorch)",
    )
    args = ap.parse_args(argv)
    if args.cmd == "pack":
        cfg = TrainConfig()
        originals = Path(args.originals or Path(args.data).resolve().parent / "ORIGINAL")
        if not (originals / "labels.csv").exists():
            print(f"{originals}: no labels.csv (the split keeps source fields together)", file=sys.stderr)
            return 2
        cfg.originals_dir = str(originals)
        pack(args.data, Path(args.out), cfg, folds=args.folds, jpeg_quality=args.jpeg_quality)
    else:
        fit_cfg = FitConfig(
            input_size=args.input_size,
            epochs=args.epochs,
            head_epochs=args.head_epochs,
            lr=args.lr,
            batch=args.batch,
            seed=args.seed,
            name=args.name,
            stop_at=args.stop_at,
            jit_compile=JIT_COMPILE[args.jit_compile],
            fold=args.fold,
            save=args.save,
        )
        fit(Path(args.pack), Path(args.out), fit_cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
