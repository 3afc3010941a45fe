"""Generic two-phase training on image crops (used for ``--backbone mobilenet_v2``).

Slower than the cached Lite0 path (every step runs the whole network), so on
2 CPUs it is meant for machines that have the MobileNetV2 ImageNet weights
and time. Phase 1: frozen base (inference mode) + new head; phase 2: the top
``finetune_layers`` layers of the base unfrozen, BatchNorm frozen, low rate.

The split, the served crops and everything after training (validation through
the serving path, colour opinion, calibration, flags, bundle and card) are the
Lite0 path's own (``ml.split.source_split``, ``ml.cache.crops_cached``, ``ml.finish``), so the
two backbones are compared on the same validation fields.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ml.backbones import build_mobilenet_v2
from ml.cache import crops_cached, pooled_features
from ml.config import TrainConfig
from ml.data import make_dataset
from ml.finish import Trained, TrainingSet, finish
from ml.model import FEATURES_LAYER, freeze_batchnorm
from ml.split import source_split


def train_full(files, labels, cfg: TrainConfig, out: Path, finetune_layers: int = 30, log=print) -> dict:
    import keras  # Keras: imported when training starts (``import ml.train_full`` stays cheap)

    classes = list(cfg.classes)
    feats_model, base = build_mobilenet_v2(
        cfg.input_size, cfg.backbone_weights
    )  # fails clearly without weights
    split = source_split(files, labels, cfg)
    _, val, _, sources, _ = split
    tr, va = np.flatnonzero(~val), np.flatnonzero(val)
    log(f"split: {len(tr)} train / {len(va)} val images; source fields {sources}")
    crops, found = crops_cached(files, cfg)
    onehot = np.eye(len(classes), dtype=np.float32)

    inp = keras.Input((None, None, 3), name="image")
    x = keras.layers.Resizing(cfg.input_size, cfg.input_size, name="resize")(inp)
    x = feats_model(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name=FEATURES_LAYER)(x)
    x = keras.layers.Dropout(cfg.dropout, name="head_dropout")(x)
    model = keras.Model(inp, keras.layers.Dense(len(classes), activation="softmax", name="predictions")(x))
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
    tr_ds = make_dataset(
        np.asarray(crops[tr], np.float32), onehot[labels[tr]], cfg.batch_size, True, cfg.seed, augment=True
    )
    va_ds = make_dataset(np.asarray(crops[va], np.float32), onehot[labels[va]], 64, False, cfg.seed)
    base.trainable = False
    model.compile(keras.optimizers.Adam(cfg.head_lr), loss, metrics=["accuracy"])
    fit = {"validation_data": va_ds, "verbose": 2, "shuffle": False}  # tr_ds shuffles itself
    h1 = model.fit(tr_ds, epochs=max(3, cfg.head_epochs // 6), **fit)
    base.trainable = True
    for layer in base.layers[:-finetune_layers]:
        layer.trainable = False
    freeze_batchnorm(base)
    model.compile(keras.optimizers.Adam(cfg.finetune_lr), loss, metrics=["accuracy"])
    h2 = model.fit(tr_ds, epochs=cfg.finetune_epochs, **fit)

    trained = Trained(
        model=model,
        train_feats=pooled_features(model, np.asarray(crops[tr]), "train features"),
        history={"phase1_head": h1.history, "phase2_finetune": h2.history},
        card_extra={"nucleus_found_fraction": float(found.mean()), "finetune_layers": finetune_layers},
    )
    return finish(trained, TrainingSet(files, labels, split, crops), cfg, out, log=log)
