"""The cached EfficientNet-Lite0 trainer (2 CPUs friendly; ``python -m ml.train``'s default).

The frozen lower blocks run once over every crop (``ml.cache.build_cache``); phase 1 fits the head on
pooled ImageNet features, phase 2 fine-tunes blocks >= ``split_block`` + head on the cached
activations at a low rate with BatchNorm frozen (random dihedral flips of the activation maps as
cheap extra augmentation); the weights are then copied into the whole serving model and
``ml.finish`` validates, calibrates and writes the bundle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ml.cache import build_cache, run_batched
from ml.config import TrainConfig, seed_everything
from ml.finish import Trained, TrainingSet, finish
from ml.model import build_classifier, build_lite0_upper, copy_weights_by_name, freeze_batchnorm
from ml.split import source_split


class _ActivationBatches:
    """Keras PyDataset over cached activations: a random view per sample, random dihedral flips."""

    def __new__(cls, *a, **k):
        import keras  # Keras: imported when training starts; the dataset class subclasses its PyDataset

        class _DS(keras.utils.PyDataset):
            def __init__(self, views, idx, labels, batch, seed, augment):
                super().__init__()
                self.views, self.idx, self.labels, self.batch, self.augment = (
                    views,
                    idx,
                    labels,
                    batch,
                    augment,
                )
                self.rng = np.random.default_rng(seed)
                self.order = self.idx.copy()
                self.on_epoch_end()

            def __len__(self):
                return int(np.ceil(len(self.idx) / self.batch))

            def on_epoch_end(self):
                self.order = self.rng.permutation(self.idx) if self.augment else self.idx.copy()
                self.which = (
                    self.rng.integers(0, len(self.views), len(self.order))
                    if self.augment
                    else np.zeros(len(self.order), int)
                )

            def __getitem__(self, b):
                sl = slice(b * self.batch, (b + 1) * self.batch)
                ids, vs = self.order[sl], self.which[sl]
                x = np.stack([self.views[v][i] for i, v in zip(ids, vs, strict=True)]).astype(np.float32)
                if self.augment:
                    k = int(self.rng.integers(8))
                    x = np.rot90(x, k % 4, axes=(1, 2))
                    x = x[:, :, ::-1] if k >= 4 else x
                    x = np.ascontiguousarray(x)
                return x, self.labels[ids]

        return _DS(*a, **k)


def train_lite0(files, labels, cfg: TrainConfig, out: Path, log=print) -> dict:
    """Cached EfficientNet-Lite0 training (steps 1-5 of ``ml.train``), then ``ml.finish.finish``."""
    split = source_split(files, labels, cfg)  # first: fails fast
    groups, val, _, sources, _ = split
    d = build_cache(files, labels, cfg)
    views = [np.load(d / f"act_v{v}.npy", mmap_mode="r") for v in range(1 + cfg.aug_views)]
    views = [np.asarray(v) for v in views]
    feat0 = np.load(d / "imagenet_feat_v0.npy")
    found = np.load(d / "found_v0.npy")
    tr_idx, va_idx = np.flatnonzero(~val), np.flatnonzero(val)
    _, group_ids = np.unique(groups, return_inverse=True)
    sizes = np.bincount(group_ids)
    log(
        f"groups: {len(sizes)} (median size {np.median(sizes):.0f}, max {sizes.max()}); "
        f"train {len(tr_idx)} val {len(va_idx)}; sources {sources}; nucleus found in {found.mean():.1%}"
    )
    train_seed = cfg.seed if cfg.train_seed is None else cfg.train_seed
    seed_everything(train_seed)
    onehot = np.eye(len(cfg.classes), dtype=np.float32)[labels]
    head, h1 = _fit_head(feat0, onehot, tr_idx, va_idx, cfg)
    log(f"phase 1 (head on frozen base): val accuracy {h1.history['val_accuracy'][-1]:.4f}")
    upper, phase2_history, best = _finetune_upper(head, views, onehot, (tr_idx, va_idx), cfg, train_seed)
    if cfg.finetune_epochs > 0:
        log(
            f"phase 2 (fine-tune blocks {cfg.split_block}+): best val accuracy {best['acc']:.4f} "
            f"at epoch {best['epoch']}"
        )

    # Whole serving model (resize + rescale inside), weights copied by layer name.
    model = build_classifier(cfg.backbone, cfg.input_size, len(cfg.classes), cfg.dropout)
    copy_weights_by_name(upper, model)
    trained = Trained(
        model=model,
        train_feats=_train_features(upper, views[0], tr_idx, cfg),
        history={"phase1_head": h1.history, "phase2_finetune": phase2_history},
        card_extra={"best_finetune_epoch": best["epoch"], "nucleus_found_fraction": float(found.mean())},
        val_extra={"activations_1view_best_epoch_accuracy": best["acc"]} if best["epoch"] else {},
    )
    crops = np.load(d / "crops_v0.npy", mmap_mode="r")
    return finish(trained, TrainingSet(files, labels, split, crops), cfg, out, log=log)


def _fit_head(
    feat0: np.ndarray, onehot: np.ndarray, tr_idx: np.ndarray, va_idx: np.ndarray, cfg: TrainConfig
):
    """Phase 1: head only, on pooled features of the frozen ImageNet base (inference mode).
    Returns the head and its history."""
    import keras  # Keras and TensorFlow: imported when training starts (import ml.train_lite0 stays cheap)

    head = keras.Sequential(
        [
            keras.Input((feat0.shape[1],)),
            keras.layers.Dropout(cfg.dropout),
            keras.layers.Dense(len(cfg.classes), activation="softmax", name="predictions"),
        ]
    )
    head.compile(
        keras.optimizers.Adam(cfg.head_lr),
        keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
    )
    h1 = head.fit(
        feat0[tr_idx],
        onehot[tr_idx],
        validation_data=(feat0[va_idx], onehot[va_idx]),
        epochs=cfg.head_epochs,
        batch_size=cfg.batch_size,
        verbose=2,
    )
    return head, h1


def _finetune_upper(
    head, views: list[np.ndarray], onehot: np.ndarray, sides, cfg: TrainConfig, train_seed: int
):
    """Phase 2: fine-tune the top blocks + head on cached activations, BatchNorm frozen, keeping the
    epoch with the best validation accuracy. ``sides``: (training, validation) indices. Returns the
    upper model, its history (empty for a head-only model, ``finetune_epochs`` 0) and the best epoch."""
    import keras

    tr_idx, va_idx = sides
    upper = build_lite0_upper(views[0].shape[1:], cfg.split_block, len(cfg.classes), cfg.dropout)
    upper.get_layer("predictions").set_weights(head.get_layer("predictions").get_weights())
    freeze_batchnorm(upper)
    steps = max(1, cfg.finetune_epochs) * int(np.ceil(len(tr_idx) / cfg.batch_size))
    sched = keras.optimizers.schedules.CosineDecay(cfg.finetune_lr, steps, warmup_target=None)
    upper.compile(
        keras.optimizers.AdamW(sched, weight_decay=cfg.weight_decay),
        keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
    )
    train_ds = _ActivationBatches(views, tr_idx, onehot, cfg.batch_size, train_seed, True)
    val_ds = _ActivationBatches(views[:1], va_idx, onehot, 64, cfg.seed, False)
    best = {"acc": -1.0, "epoch": 0, "weights": None}

    class KeepBest(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs["val_accuracy"] > best["acc"]:
                best.update(acc=float(logs["val_accuracy"]), epoch=epoch + 1, weights=upper.get_weights())

    history = {}  # head-only model (quick) without phase 2
    if cfg.finetune_epochs > 0:
        h2 = upper.fit(
            train_ds, validation_data=val_ds, epochs=cfg.finetune_epochs, verbose=2, callbacks=[KeepBest()]
        )
        history = h2.history
        upper.set_weights(best["weights"])
    return upper, history, best


def _train_features(upper, activations: np.ndarray, tr_idx: np.ndarray, cfg: TrainConfig) -> np.ndarray:
    """Training-set features of the fine-tuned model for the out-of-distribution detector (the upper
    blocks on the cached activations: the same numbers as the whole model, faster)."""
    import tensorflow as tf

    fmodel = build_lite0_upper(
        activations.shape[1:], cfg.split_block, len(cfg.classes), 0.0, features_only=True
    )
    copy_weights_by_name(upper, fmodel)
    ffn = tf.function(lambda x: fmodel(x, training=False))
    return run_batched(ffn, activations[tr_idx], desc="train features", dtype=np.float32)
