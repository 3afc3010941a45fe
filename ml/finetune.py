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
import dataclasses
import io
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ml.config import TrainConfig

PACK_JPEG_QUALITY = 90  # 4:2:0, like the dataset's own files; ~4 kB per 144 px crop


# --------------------------------------------------------------------------- pack (here, TensorFlow)


def pack(
    data_dir: str,
    out: Path,
    cfg: TrainConfig,
    folds: int | None = None,
    jpeg_quality: int = PACK_JPEG_QUALITY,
    log=print,
) -> dict:
    """Write the training side of the split as JPEG crops + labels + ImageNet init weights.

    With ``folds`` (K-fold cross-validation) every image travels, each with its fold (whole source
    fields, ``ml.data.group_folds``); a fold model never sees its own fold, and ``ml.crossval``
    validates it on that fold here.
    """
    from PIL import Image

    from ml.data import fields_per_class, group_folds, list_class_folders
    from ml.model import build_classifier
    from ml.train import crop_all, source_split

    classes = list(cfg.classes)
    files, labels, skipped = list_class_folders(data_dir, classes)
    groups, val, split_text, sources, _ = source_split(files, labels, cfg)
    fold = None
    if folds:
        fold = group_folds(groups, labels, folds, cfg.seed)
        tr = np.arange(len(files))
        sources = {"train": fields_per_class(groups, labels, classes)}
        split_text = f"{folds}-fold cross-validation by source field (ml.data.group_folds, seed {cfg.seed})"
    else:
        tr = np.flatnonzero(~val)
    log(f"{len(files)} images; packed {len(tr)} ({sources['train']} source fields); skipped {skipped}")
    native = dataclasses.replace(cfg, input_size=cfg.crop_side)  # crops at their native resolution
    crops, found = crop_all([files[i] for i in tr], native, 0)
    out.mkdir(parents=True, exist_ok=True)
    offsets = [0]
    with open(out / "crops.bin", "wb") as fh:
        for c in crops:
            b = io.BytesIO()
            Image.fromarray(c).save(b, "JPEG", quality=jpeg_quality, subsampling=2)
            fh.write(b.getvalue())
            offsets.append(offsets[-1] + len(b.getvalue()))
    np.savez(
        out / "index.npz",
        offsets=np.array(offsets, np.int64),
        labels=labels[tr].astype(np.int64),
        groups=groups[tr].astype(np.int64),
        found=found,
        **({"folds": fold.astype(np.int64)} if fold is not None else {}),
    )
    init = build_classifier(cfg.backbone, cfg.input_size, len(classes), cfg.dropout)
    np.savez(out / "init_weights.npz", **weights_by_name(init, np.float16, skip=("predictions",)))
    meta = {
        "classes": classes,
        "backbone": cfg.backbone,
        "crop_side_ref_px": cfg.crop_side,
        "n_images": int(len(tr)),
        "per_class": {c: int((labels[tr] == i).sum()) for i, c in enumerate(classes)},
        "source_fields": sources["train"],
        "split": split_text,
        "split_seed": cfg.seed,
        "val_fraction": None if folds else cfg.val_fraction,
        "train_dir": Path(data_dir).name,
        "jpeg_quality": jpeg_quality,
        "folds": folds or None,
        "per_fold": None
        if fold is None
        else {
            str(f): {
                "n_images": int((fold == f).sum()),
                "source_fields": fields_per_class(groups[fold == f], labels[fold == f], classes),
            }
            for f in range(folds)
        },
        "nucleus_found_fraction": float(found.mean()),
        "command": "python -m ml.finetune " + " ".join(sys.argv[1:]),
    }
    (out / "pack.json").write_text(json.dumps(meta, indent=2))
    log(f"wrote {out}: {offsets[-1] / 1e6:.1f} MB of crops")
    return meta


# --------------------------------------------------------------------------- fit (any backend)


def load_pack(pack_dir: Path, workers: int = 8) -> tuple[np.ndarray, dict, dict]:
    """``(crops, index, meta)``: decoded crops, the index arrays (labels, groups, folds...), pack.json."""
    from PIL import Image

    with np.load(pack_dir / "index.npz") as z:
        idx = {k: z[k] for k in z.files}
    raw = (pack_dir / "crops.bin").read_bytes()
    off = idx["offsets"]

    def decode(i):
        with Image.open(io.BytesIO(raw[off[i] : off[i + 1]])) as im:
            return np.asarray(im.convert("RGB"))

    with ThreadPoolExecutor(workers) as ex:
        crops = np.stack(list(ex.map(decode, range(len(off) - 1))))
    return crops, idx, json.loads((pack_dir / "pack.json").read_text())


def augment(crop: np.ndarray, rng: np.random.Generator, out_size: int) -> np.ndarray:
    """Zoom in (85-100 % of the crop side) at a random offset, dihedral transform, stain jitter."""
    from PIL import Image

    from ml.data import dihedral, stain_jitter

    n = crop.shape[0]
    side = int(round(n * rng.uniform(0.85, 1.0)))
    x0, y0 = (int(v) for v in rng.integers(0, n - side + 1, 2))
    im = Image.fromarray(crop[y0 : y0 + side, x0 : x0 + side]).resize((out_size, out_size), Image.BILINEAR)
    return stain_jitter(np.ascontiguousarray(dihedral(np.asarray(im), int(rng.integers(8)))), rng)


class _Epochs:
    """Keras PyDataset: a freshly augmented copy of every crop each epoch (seeded, thread pool)."""

    def __new__(cls, *a, **k):
        import keras

        class _DS(keras.utils.PyDataset):
            def __init__(self, crops, onehot, batch, out_size, seed, workers=4):
                super().__init__()
                self.crops, self.onehot, self.batch, self.out_size = crops, onehot, batch, out_size
                self.seed, self.epoch, self.workers = seed, 0, workers
                self._make()

            def _make(self):
                n, chunk = len(self.crops), 256
                self.order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
                self.x = np.empty((n, self.out_size, self.out_size, 3), np.uint8)

                def job(start):
                    rng = np.random.default_rng([self.seed, self.epoch, start])
                    for j in range(start, min(start + chunk, n)):
                        self.x[j] = augment(self.crops[self.order[j]], rng, self.out_size)

                with ThreadPoolExecutor(self.workers) as ex:
                    list(ex.map(job, range(0, n, chunk)))

            def __len__(self):
                return int(np.ceil(len(self.crops) / self.batch))

            def on_epoch_end(self):
                self.epoch += 1
                self._make()

            def __getitem__(self, b):
                sl = slice(b * self.batch, (b + 1) * self.batch)
                return self.x[sl].astype(np.float32), self.onehot[self.order[sl]]

        return _DS(*a, **k)


def fit(
    pack_dir: Path,
    out: Path,
    input_size: int = 192,
    epochs: int = 15,
    head_epochs: int = 2,
    lr: float = 3e-4,
    batch: int = 64,
    seed: int = 1,
    dropout: float = 0.3,
    weight_decay: float = 0.01,
    label_smoothing: float = 0.1,
    name: str | None = None,
    stop_at: float | None = None,
    jit_compile: bool | str = "auto",
    fold: int | None = None,
    save: str = "keras",
    log=print,
) -> dict:
    """Phase 1: head on the frozen ImageNet base; phase 2: every block (BatchNorm frozen), cosine rate.

    ``fold``: (K-fold pack) train on every fold but this one. ``save``: "keras" (the served model
    file) or "weights16" (the weights in float16 by layer name, half the size, for fold models that
    only ``ml.crossval`` reads).
    """
    import keras

    from ml.data import fields_per_class
    from ml.model import build_classifier, copy_weights_by_name, freeze_batchnorm

    t0 = time.time()
    crops, idx, meta = load_pack(pack_dir)
    labels, classes = idx["labels"], meta["classes"]
    if fold is not None:
        if "folds" not in idx:
            raise ValueError(f"{pack_dir} has no folds (pack it with --folds K)")
        keep, groups = idx["folds"] != fold, idx["groups"]
        if keep.all():
            raise ValueError(f"fold {fold} is not in {pack_dir} (folds 0..{meta['folds'] - 1})")
        crops, labels = crops[keep], labels[keep]
        meta = meta | {
            "fold": fold,
            "n_images": int(keep.sum()),
            "source_fields": fields_per_class(groups[keep], labels, classes),
        }
    log(f"pack: {len(crops)} crops {crops.shape[1:]} decoded in {time.time() - t0:.1f} s")
    keras.utils.set_random_seed(seed)
    model = build_classifier(meta["backbone"], input_size, len(classes), dropout, imagenet=False)
    set_weights_by_name(model, np.load(pack_dir / "init_weights.npz"))
    onehot = np.eye(len(classes), dtype=np.float32)[labels]
    data = _Epochs(crops, onehot, batch, input_size, seed)
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    times: list[float] = []
    stopped = {"early": False}

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.time()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.time() - self.t)
            if stop_at and time.time() + times[-1] > stop_at:
                stopped["early"] = True
                self.model.stop_training = True

    for layer in model.layers:
        layer.trainable = layer.name == "predictions"
    model.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"], jit_compile=jit_compile)
    h1 = model.fit(data, epochs=head_epochs, verbose=2, callbacks=[Clock()])
    for layer in model.layers:
        layer.trainable = True
    freeze_batchnorm(model)
    steps = epochs * len(data)
    sched = keras.optimizers.schedules.CosineDecay(
        lr / 10, max(1, steps - len(data)), warmup_target=lr, warmup_steps=len(data)
    )
    opt = keras.optimizers.AdamW(sched, weight_decay=weight_decay)
    model.compile(opt, loss, metrics=["accuracy"], jit_compile=jit_compile)
    h2 = model.fit(data, epochs=epochs, verbose=2, callbacks=[Clock()])
    name = name or f"finetune_s{input_size}_e{epochs}_seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    # Saved as a fresh, uncompiled model (as ml.train ships): no optimizer state in the file.
    served = build_classifier(meta["backbone"], input_size, len(classes), dropout, imagenet=False)
    copy_weights_by_name(model, served)
    if save == "weights16":
        np.savez(out / f"{name}.weights16.npz", **weights_by_name(served, np.float16))
    else:
        served.save(out / f"{name}.keras")
    info = {
        "name": name,
        "backend": keras.backend.backend(),
        "device": _device_name(),
        "pack": meta,
        "config": {
            "input_size": input_size,
            "fold": fold,
            "epochs": epochs,
            "head_epochs": head_epochs,
            "lr": lr,
            "batch_size": batch,
            "seed": seed,
            "dropout": dropout,
            "weight_decay": weight_decay,
            "label_smoothing": label_smoothing,
            "jit_compile": jit_compile,
            "batchnorm": "frozen (ImageNet statistics)",
            "augmentation": "zoom 85-100 % at random offset, 8 dihedral views, stain jitter; new every epoch",
        },
        "complete": not stopped["early"],
        "epoch_seconds": times,
        "seconds": time.time() - t0,
        "history": {
            "phase1_head": {k: [float(x) for x in v] for k, v in h1.history.items()},
            "phase2_finetune": {k: [float(x) for x in v] for k, v in h2.history.items()},
        },
        "command": "python -m ml.finetune " + " ".join(sys.argv[1:]),
    }
    (out / f"{name}.json").write_text(json.dumps(info, indent=2))
    log(f"wrote {out / name} ({save}) in {info['seconds']:.0f} s (complete: {info['complete']})")
    return info


def weights_by_name(model, dtype=None, skip=()) -> dict:
    """``{"layer:i": array}`` for every weighted layer (``skip``: layer names left out)."""
    return {
        f"{layer.name}:{i}": w if dtype is None else w.astype(dtype)
        for layer in model.layers
        if layer.name not in skip
        for i, w in enumerate(layer.get_weights())
    }


def set_weights_by_name(model, weights) -> int:
    """Load ``weights_by_name`` arrays (any float dtype) into same-named layers; returns the count."""
    n = 0
    for layer in model.layers:
        ws = layer.get_weights()
        if ws and f"{layer.name}:0" in weights:
            layer.set_weights([np.asarray(weights[f"{layer.name}:{i}"], np.float32) for i in range(len(ws))])
            n += 1
    return n


def _device_name() -> str:
    import keras

    if keras.backend.backend() == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    if keras.backend.backend() == "jax":
        import jax

        return str(jax.devices()[0])
    return "cpu"


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
        fit(
            Path(args.pack),
            Path(args.out),
            input_size=args.input_size,
            epochs=args.epochs,
            head_epochs=args.head_epochs,
            lr=args.lr,
            batch=args.batch,
            seed=args.seed,
            name=args.name,
            stop_at=args.stop_at,
            jit_compile={"auto": "auto", "on": True, "off": False}[args.jit_compile],
            fold=args.fold,
            save=args.save,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
