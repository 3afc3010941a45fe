"""``ml.finetune fit`` (on any Keras 3 backend, e.g. a GPU machine with PyTorch or JAX): whole-network
fine-tuning of a pack (``ml.finetune_pack``) with fresh augmentation every epoch, BatchNorm frozen."""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml.data import dihedral, fields_per_class, stain_jitter
from ml.finetune_pack import load_pack
from ml.model import (
    build_classifier,
    copy_weights_by_name,
    freeze_batchnorm,
    set_weights_by_name,
    weights_by_name,
)


def augment(crop: np.ndarray, rng: np.random.Generator, out_size: int) -> np.ndarray:
    """Zoom in (85-100 % of the crop side) at a random offset, dihedral transform, stain jitter."""
    from PIL import Image  # PIL: imported in the augmenting threads

    n = crop.shape[0]
    side = int(round(n * rng.uniform(0.85, 1.0)))
    x0, y0 = (int(v) for v in rng.integers(0, n - side + 1, 2))
    im = Image.fromarray(crop[y0 : y0 + side, x0 : x0 + side])
    im = im.resize((out_size, out_size), Image.Resampling.BILINEAR)
    return stain_jitter(np.ascontiguousarray(dihedral(np.asarray(im), int(rng.integers(8)))), rng)


class _Epochs:
    """Keras PyDataset: a freshly augmented copy of every crop each epoch (seeded, thread pool)."""

    def __new__(cls, *a, **k):
        import keras  # Keras: imported when fitting starts; the dataset class subclasses its PyDataset

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


@dataclass(frozen=True)
class FitConfig:
    """One ``ml.finetune fit`` run: the recipe (recorded in ``NAME.json``) and what to fit and save."""

    input_size: int = 192
    epochs: int = 15
    head_epochs: int = 2
    lr: float = 3e-4
    batch: int = 64
    seed: int = 1
    dropout: float = 0.3
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    jit_compile: bool | str = "auto"
    name: str | None = None  # default finetune_s<input_size>_e<epochs>_seed<seed>
    stop_at: float | None = None  # unix time: stop (marked incomplete) before an epoch would pass it
    fold: int | None = None  # (K-fold pack) train on every fold but this one
    save: str = "keras"  # or "weights16"

    def record(self) -> dict:
        """The ``config`` entry of ``NAME.json``."""
        return {
            "input_size": self.input_size,
            "fold": self.fold,
            "epochs": self.epochs,
            "head_epochs": self.head_epochs,
            "lr": self.lr,
            "batch_size": self.batch,
            "seed": self.seed,
            "dropout": self.dropout,
            "weight_decay": self.weight_decay,
            "label_smoothing": self.label_smoothing,
            "jit_compile": self.jit_compile,
            "batchnorm": "frozen (ImageNet statistics)",
            "augmentation": "zoom 85-100 % at random offset, 8 dihedral views, stain jitter; new every epoch",
        }


def fit(pack_dir: Path, out: Path, cfg: FitConfig | None = None, *, log=print) -> dict:
    """Phase 1: head on the frozen ImageNet base; phase 2: every block (BatchNorm frozen), cosine rate.

    ``cfg.fold``: (K-fold pack) train on every fold but this one. ``cfg.save``: "keras" (the served model
    file) or "weights16" (the weights in float16 by layer name, half the size, for fold models that
    only ``ml.crossval`` reads).
    """
    import keras  # Keras: imported when fitting starts, on whichever backend the machine has

    cfg = cfg or FitConfig()
    t0 = time.time()
    crops, labels, meta = _training_side(pack_dir, cfg.fold)
    classes = meta["classes"]
    log(f"pack: {len(crops)} crops {crops.shape[1:]} decoded in {time.time() - t0:.1f} s")
    keras.utils.set_random_seed(cfg.seed)
    model = build_classifier(meta["backbone"], cfg.input_size, len(classes), cfg.dropout, imagenet=False)
    set_weights_by_name(model, np.load(pack_dir / "init_weights.npz"))
    onehot = np.eye(len(classes), dtype=np.float32)[labels]
    data = _Epochs(crops, onehot, cfg.batch, cfg.input_size, cfg.seed)
    h1, h2, times, complete = _fit_phases(model, data, cfg)
    name = cfg.name or f"finetune_s{cfg.input_size}_e{cfg.epochs}_seed{cfg.seed}"
    out.mkdir(parents=True, exist_ok=True)
    _save(model, meta["backbone"], len(classes), cfg, out / name)
    info = {
        "name": name,
        "backend": keras.backend.backend(),
        "device": _device_name(),
        "pack": meta,
        "config": cfg.record(),
        "complete": complete,
        "epoch_seconds": times,
        "seconds": time.time() - t0,
        "history": {
            "phase1_head": {k: [float(x) for x in v] for k, v in h1.history.items()},
            "phase2_finetune": {k: [float(x) for x in v] for k, v in h2.history.items()},
        },
        "command": "python -m ml.finetune " + " ".join(sys.argv[1:]),
    }
    (out / f"{name}.json").write_text(json.dumps(info, indent=2))
    log(f"wrote {out / name} ({cfg.save}) in {info['seconds']:.0f} s (complete: {info['complete']})")
    return info


def _training_side(pack_dir: Path, fold: int | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """The pack's crops, labels and record; with ``fold``, only the other folds' (the record says so)."""
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
    return crops, labels, meta


def _fit_phases(model, data, cfg: FitConfig):
    """The two phases on ``data``; returns their histories, the seconds of each epoch and whether
    every epoch ran (``cfg.stop_at`` stops before an epoch would end after it)."""
    import keras

    loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
    times: list[float] = []
    stopped = {"early": False}
    stop_at = cfg.stop_at

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
    model.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"], jit_compile=cfg.jit_compile)
    h1 = model.fit(data, epochs=cfg.head_epochs, verbose=2, callbacks=[Clock()])
    for layer in model.layers:
        layer.trainable = True
    freeze_batchnorm(model)
    steps = cfg.epochs * len(data)
    sched = keras.optimizers.schedules.CosineDecay(
        cfg.lr / 10, max(1, steps - len(data)), warmup_target=cfg.lr, warmup_steps=len(data)
    )
    opt = keras.optimizers.AdamW(sched, weight_decay=cfg.weight_decay)
    model.compile(opt, loss, metrics=["accuracy"], jit_compile=cfg.jit_compile)
    h2 = model.fit(data, epochs=cfg.epochs, verbose=2, callbacks=[Clock()])
    return h1, h2, times, not stopped["early"]


def _save(model, backbone: str, n_classes: int, cfg: FitConfig, stem: Path) -> None:
    """Save as a fresh, uncompiled model (as ml.train ships): no optimizer state in the file;
    ``stem``.keras, or ``stem``.weights16.npz for ``cfg.save == "weights16"``."""
    served = build_classifier(backbone, cfg.input_size, n_classes, cfg.dropout, imagenet=False)
    copy_weights_by_name(model, served)
    if cfg.save == "weights16":
        np.savez(stem.with_name(f"{stem.name}.weights16.npz"), **weights_by_name(served, np.float16))
    else:
        served.save(stem.with_name(f"{stem.name}.keras"))


def _device_name() -> str:
    import keras  # Keras and the backend's own package: imported when a fit records its device

    if keras.backend.backend() == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    if keras.backend.backend() == "jax":
        import jax

        return str(jax.devices()[0])
    return "cpu"
