"""Generic two-phase training on image crops (used for ``--backbone mobilenet_v2``).

Slower than the cached Lite0 path (every step runs the whole network), so on
2 CPUs it is meant for machines that have the MobileNetV2 ImageNet weights
and time. Phase 1: frozen base (inference mode) + new head; phase 2: the top
``finetune_layers`` layers of the base unfrozen, BatchNorm frozen, low rate.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from ml.config import TrainConfig


def train_full(files, labels, cfg: TrainConfig, out: Path, finetune_layers: int = 30) -> dict:
    import keras

    from ml import ood
    from ml.backbones import build_mobilenet_v2
    from ml.bundle import bundle_version
    from ml.data import group_near_duplicates, group_split, make_dataset
    from ml.model import FEATURES_LAYER, freeze_batchnorm
    from ml.predictor import tta_predict
    from ml.train import calibrate_flags, crop_all, metrics_dict, run_batched, save_curves

    classes = list(cfg.classes)
    feats_model, base = build_mobilenet_v2(
        cfg.input_size, cfg.backbone_weights
    )  # fails clearly without weights
    crops, found = crop_all(files, cfg, 0)
    pooled = run_batched(
        lambda x: keras.layers.GlobalAveragePooling2D()(feats_model(x, training=False)),
        crops,
        desc="features",
        dtype=np.float32,
    )
    groups = group_near_duplicates(pooled, labels, cfg.group_similarity)
    val = group_split(groups, labels, cfg.val_fraction, cfg.seed)
    tr, va = np.flatnonzero(~val), np.flatnonzero(val)
    onehot = np.eye(len(classes), dtype=np.float32)

    inp = keras.Input((None, None, 3), name="image")
    x = keras.layers.Resizing(cfg.input_size, cfg.input_size, name="resize")(inp)
    x = feats_model(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name=FEATURES_LAYER)(x)
    x = keras.layers.Dropout(cfg.dropout, name="head_dropout")(x)
    model = keras.Model(inp, keras.layers.Dense(len(classes), activation="softmax", name="predictions")(x))
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
    tr_ds = make_dataset(
        crops[tr].astype(np.float32), onehot[labels[tr]], cfg.batch_size, True, cfg.seed, True
    )
    va_ds = make_dataset(crops[va].astype(np.float32), onehot[labels[va]], 64, False, cfg.seed)
    base.trainable = False
    model.compile(keras.optimizers.Adam(cfg.head_lr), loss, metrics=["accuracy"])
    h1 = model.fit(tr_ds, validation_data=va_ds, epochs=max(3, cfg.head_epochs // 6), verbose=2)
    base.trainable = True
    for layer in base.layers[:-finetune_layers]:
        layer.trainable = False
    freeze_batchnorm(base)
    model.compile(keras.optimizers.Adam(cfg.finetune_lr), loss, metrics=["accuracy"])
    h2 = model.fit(tr_ds, validation_data=va_ds, epochs=cfg.finetune_epochs, verbose=2)

    both = keras.Model(model.input, [model.get_layer(FEATURES_LAYER).output, model.output])
    vf, vp = tta_predict(lambda v: both(v, training=False), crops[va], cfg.tta_views)
    tf_, _ = tta_predict(lambda v: both(v, training=False), crops[tr], 1)
    stats = ood.fit(tf_, labels[tr], len(classes))
    calibration = calibrate_flags(vp, labels[va], ood.distance(stats, vf), cfg)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{cfg.name}.keras"
    model.save(path)
    ood.save(stats, out / "ood_stats.npz")
    save_curves({"phase1_head": h1.history, "phase2_finetune": h2.history}, out / "training_curves.png")
    card = {
        "name": cfg.name,
        "version": None,  # below: the hash of the whole bundle (ml.bundle)
        "model_file": path.name,
        "classes": classes,
        "backbone": cfg.backbone,
        "input": {"input_size": cfg.input_size},
        "crop": {"crop_side_ref_px": cfg.crop_side},
        "tta_views": cfg.tta_views,
        "temperature": calibration.temperature,
        "class_bias": ood.class_bias_record(classes, calibration.class_bias),
        "thresholds": calibration.thresholds,
        "ood_stats_file": "ood_stats.npz",
        "config": cfg.to_dict(),
        "data": {"n_images": len(files), "n_train": int(len(tr)), "n_val": int(len(va))},
        "validation_metrics": {
            f"tta{cfg.tta_views}": metrics_dict(labels[va], vp.argmax(1), classes),
            "calibrated": metrics_dict(labels[va], calibration.probs.argmax(1), classes),
        },
        "test_metrics": None,
        "command": "python -m ml.train " + " ".join(sys.argv[1:]),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    card["version"] = bundle_version(card, path)
    (out / "model_card.json").write_text(json.dumps(card, indent=2))
    return card
