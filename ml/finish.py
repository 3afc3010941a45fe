"""After training: validation through the serving path, the colour opinion, calibration and flags,
then the bundle and its card. Every trainer ends here (``ml.train_lite0``, ``ml.train_full``), and so
does a model trained elsewhere (``adopt_model``: ``python -m ml.train --init-model``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ml import colour, ood
from ml.cache import colour_features_cached, crops_cached, pooled_features
from ml.calibration import calibrate_flags, choose_colour_weight
from ml.card import BundleContents, SplitRecord, colour_card_dict, data_record, finetune_record, write_bundle
from ml.config import TrainConfig
from ml.metrics import metrics_dict
from ml.split import Split, source_split
from ml.tta import tta_predict


@dataclass(frozen=True)
class Trained:
    """A trained whole model and what its trainer hands on to ``finish``."""

    model: Any  # the whole serving model (keras.Model: resize + rescale inside)
    train_feats: np.ndarray  # its pooled features of the training side (for the OOD statistics)
    history: dict  # Keras histories by phase
    card_extra: dict = field(default_factory=dict)  # entries the trainer adds to the card
    val_extra: dict = field(default_factory=dict)  # validation figures the trainer measured itself


@dataclass(frozen=True)
class TrainingSet:
    """The labelled images, their split by source field and their served crops."""

    files: list
    labels: np.ndarray
    split: Split
    crops: np.ndarray  # plain served crops of every file (uint8, input_size), e.g. ``crops_cached``


def finish(trained: Trained, data: TrainingSet, cfg: TrainConfig, out: Path, *, log=print) -> dict:
    """Validation through the serving path, colour opinion, calibration, flags; save model + card."""
    import keras  # Keras and TensorFlow: imported when a model runs (``import ml.finish`` stays cheap)
    import tensorflow as tf

    classes = list(cfg.classes)
    model, files, labels, crops = trained.model, data.files, data.labels, data.crops
    groups, val, split_text, sources, gdir = data.split
    tr_idx, va_idx = np.flatnonzero(~val), np.flatnonzero(val)
    feats_model = keras.Model(model.input, [model.get_layer("avg_pool").output, model.output])
    feats_fn = tf.function(lambda x: feats_model(x, training=False), reduce_retracing=True)
    val_crops = np.asarray(crops[va_idx])
    val_metrics = dict(trained.val_extra)
    val_feats, val_probs = tta_predict(feats_fn, val_crops, cfg.tta_views)
    key = f"tta{cfg.tta_views}"
    val_metrics[key] = metrics_dict(labels[va_idx], val_probs.argmax(1), classes, groups[va_idx])
    log(f"val accuracy with {cfg.tta_views} view(s): {val_metrics[key]['accuracy']:.4f}")
    # Colour second opinion (ml.colour): fitted on the training side, its weight chosen on validation.
    colour_card = None
    if cfg.colour:
        cfeat = colour_features_cached(gdir)
        colour_model = colour.fit(cfeat[tr_idx], labels[tr_idx], len(classes), seed=cfg.seed)
        clp = colour.log_probs(colour_model, cfeat[va_idx])
        y_val, g_val = labels[va_idx], groups[va_idx]
        weight, by_weight = choose_colour_weight(val_probs, clp, y_val, g_val)
        val_probs = colour.fuse(val_probs, clp, weight)
        val_metrics["colour_alone"] = metrics_dict(y_val, clp.argmax(1), classes)
        val_metrics[f"tta{cfg.tta_views}_with_colour"] = metrics_dict(y_val, val_probs.argmax(1), classes)
        log(f"colour weight {weight} (val accuracy by weight {by_weight})")
        colour_card = colour_card_dict(weight, by_weight)
    stats = ood.fit(trained.train_feats, labels[tr_idx], len(classes))
    val_dist = ood.distance(stats, val_feats)
    calibration = calibrate_flags(val_probs, labels[va_idx], val_dist, cfg, log)
    # The served decision (argmax after the offsets); in-sample: the offsets were fitted on these cells.
    val_metrics["calibrated"] = metrics_dict(labels[va_idx], calibration.probs.argmax(1), classes)
    record = data_record(
        files, labels, groups, classes, SplitRecord(len(tr_idx), len(va_idx), split_text, sources)
    )
    val_predictions = {
        "index": va_idx,
        "labels": labels[va_idx],
        "probs": val_probs,
        "groups": groups[va_idx],
    }
    contents = BundleContents(
        stats=stats,
        calibration=calibration,
        val_metrics=val_metrics,
        val_predictions=val_predictions,
        data=record,
        history=trained.history,
        card_extra=trained.card_extra,
        colour_model=colour_model if colour_card else None,
        colour_card=colour_card,
    )
    return write_bundle(model, cfg, out, contents, log=log)


def adopt_model(files, labels, cfg: TrainConfig, out: Path, log=print) -> dict:
    """Validate, calibrate and card a whole model trained elsewhere (``cfg.init_model``, e.g. by
    ``ml.finetune fit`` on a GPU) exactly as ``train_lite0`` does its own: same split, same steps."""
    import keras  # Keras: imported when a model is loaded

    if not cfg.init_model:
        raise ValueError("adopt_model needs cfg.init_model (the model to adopt)")
    init = Path(cfg.init_model)
    model = keras.saving.load_model(init, compile=False)
    info_path = init.with_suffix(".json")
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    cfg.input_size = int(model.get_layer("resize").output.shape[1])  # the model fixes its input size
    split = source_split(files, labels, cfg)
    groups, val, _, sources, _ = split
    pack = info.get("pack") or {}
    if pack and (pack.get("n_images"), pack.get("source_fields")) != (int((~val).sum()), sources["train"]):
        # The model was fitted on another split: its "validation" would include its training fields.
        raise ValueError(
            f"{init} was fitted on a training side of {pack.get('n_images')} images "
            f"{pack.get('source_fields')}, this split's is {int((~val).sum())} {sources['train']}: "
            "use the same data, --seed and ORIGINAL as for `ml.finetune pack`"
        )
    where = info.get("device", "device unknown")
    log(f"adopting {init} (trained on {where}): {int((~val).sum())} train, {int(val.sum())} val")
    crops, found = crops_cached(files, cfg)
    trained = Trained(
        model=model,
        train_feats=pooled_features(model, crops[np.flatnonzero(~val)], "train features"),
        history=info.get("history", {}),
        card_extra={"nucleus_found_fraction": float(found.mean()), "finetune": finetune_record(info)},
    )
    return finish(trained, TrainingSet(files, labels, split, crops), cfg, out, log=log)
