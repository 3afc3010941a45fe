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
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

from ml.bundle import bundle_version
from ml.config import TrainConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_ROOT = REPO_ROOT / "var" / "ml_cache"


def seed_everything(seed: int) -> None:
    import keras

    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)


def _crop_job(args):
    from ml.data import cell_crop, read_rgb

    path, crop_side, size, seed, mask_radius = args
    rng = np.random.default_rng(seed) if seed is not None else None
    return cell_crop(read_rgb(path), crop_side, size, rng, mask_radius)


def crop_all(files, cfg: TrainConfig, view: int, workers: int = 2) -> tuple[np.ndarray, np.ndarray]:
    from multiprocessing import Pool

    from tqdm import tqdm

    jobs = [
        (
            str(f),
            cfg.crop_side,
            cfg.input_size,
            None if view == 0 else cfg.seed * 1000003 + view * 100003 + i,
            cfg.mask_radius,
        )
        for i, f in enumerate(files)
    ]
    out = np.zeros((len(files), cfg.input_size, cfg.input_size, 3), np.uint8)
    found = np.zeros(len(files), bool)
    with Pool(workers) as pool:
        for i, (c, ok) in enumerate(
            tqdm(
                pool.imap(_crop_job, jobs, chunksize=32),
                total=len(jobs),
                desc=f"crop view {view}",
                mininterval=10,
            )
        ):
            out[i], found[i] = c, ok
    return out, found


def run_batched(fn, x: np.ndarray, batch: int = 64, desc: str = "forward", dtype=np.float16) -> np.ndarray:
    from tqdm import tqdm

    outs = []
    for i in tqdm(range(0, len(x), batch), desc=desc, mininterval=10):
        outs.append(np.asarray(fn(x[i : i + batch].astype(np.float32))).astype(dtype))
    return np.concatenate(outs)


def cache_dir(cfg: TrainConfig, files) -> Path:
    """Where ``build_cache`` (and ``crops_cached``) keep the crops of ``files`` for ``cfg``.

    The key names the crop settings and identifies the images (class folder, name and size of
    each file), so a changed or replaced image never reuses another data set's cache.
    """
    import hashlib

    ident = hashlib.sha256()
    for f in files:
        f = Path(f)
        ident.update(f"{f.parent.name}/{f.name}:{f.stat().st_size}\n".encode())
    key = (
        f"{cfg.backbone}_c{cfg.crop_side}_s{cfg.input_size}_b{cfg.split_block}_seed{cfg.seed}"
        f"_n{len(files)}_{ident.hexdigest()[:12]}"
    )
    return CACHE_ROOT / (key + (f"_m{cfg.mask_radius}" if cfg.mask_radius else ""))


def build_cache(files, labels, cfg: TrainConfig) -> Path:
    """Crops, lower-block activations and ImageNet pooled features, cached on disk."""
    import tensorflow as tf

    from ml.model import build_lite0_lower, build_lite0_upper

    d = cache_dir(cfg, files)
    d.mkdir(parents=True, exist_ok=True)
    (d / "files.json").write_text(json.dumps({"files": [str(f) for f in files], "labels": labels.tolist()}))
    lower = None
    for view in range(1 + cfg.aug_views):
        if (d / f"act_v{view}.npy").exists():
            continue
        crops, found = crop_all(files, cfg, view)
        np.save(d / f"found_v{view}.npy", found)
        if view == 0:
            np.save(d / "crops_v0.npy", crops)
        if lower is None:
            lower = build_lite0_lower(cfg.input_size, cfg.split_block)
            lower_fn = tf.function(lambda x, m=lower: m(x, training=False))
        act = run_batched(lower_fn, crops, desc=f"lower blocks view {view}")
        if view == 0:
            feat_model = build_lite0_upper(
                act.shape[1:], cfg.split_block, len(cfg.classes), 0.0, features_only=True
            )
            feat_fn = tf.function(lambda x, m=feat_model: m(x, training=False))
            np.save(
                d / "imagenet_feat_v0.npy",
                run_batched(feat_fn, act, desc="imagenet features", dtype=np.float32),
            )
        np.save(d / f"act_v{view}.npy", act)
        del crops, act
    return d


def original_features(cfg: TrainConfig, folder: Path):
    """ImageNet pooled features of the cells in the ORIGINAL source fields (cached)."""
    import tensorflow as tf

    from ml.data import original_cell_crops
    from ml.model import build_lite0_lower, build_lite0_upper

    f_feat, f_meta = folder / "original_feat.npy", folder / "original_meta.json"
    if not f_feat.exists():
        crops, nums, cats = original_cell_crops(cfg.originals_dir, cfg.crop_side, cfg.input_size)
        lower = build_lite0_lower(cfg.input_size, cfg.split_block)
        upper = build_lite0_upper(
            lower.output.shape[1:], cfg.split_block, len(cfg.classes), 0.0, features_only=True
        )
        fn = tf.function(lambda x: upper(lower(x, training=False), training=False))
        np.save(f_feat, run_batched(fn, crops, desc="original fields", dtype=np.float32))
        f_meta.write_text(json.dumps({"numbers": nums.tolist(), "categories": cats}))
    meta = json.loads(f_meta.read_text())
    return np.load(f_feat), np.array(meta["numbers"]), meta["categories"]


COLOUR_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def source_balanced_accuracy(y_pred: np.ndarray, y_true: np.ndarray, groups: np.ndarray) -> float:
    """Mean over source fields of the accuracy on that field's copies."""
    return float(np.mean([np.mean(y_pred[groups == g] == y_true[groups == g]) for g in np.unique(groups)]))


def colour_features_cached(gdir: Path) -> np.ndarray:
    """``ml.colour`` features of the unmasked 144 px crops cached in ``gdir`` (computed once)."""
    from ml import colour

    path = gdir / "colour_v0.npy"
    if not path.exists():
        crops = np.load(gdir / "crops_v0.npy", mmap_mode="r")
        if crops.shape[1] != colour.CROP_SIZE:
            raise ValueError(f"colour features need {colour.CROP_SIZE} px crops, cache has {crops.shape[1]}")
        feats = [colour.colour_features(np.asarray(crops[i : i + 500])) for i in range(0, len(crops), 500)]
        np.save(path, np.concatenate(feats))
    return np.load(path)


class _ActivationBatches:
    """Keras PyDataset over cached activations: a random view per sample, random dihedral flips."""

    def __new__(cls, *a, **k):
        import keras

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


def fit_calibration(
    probs: np.ndarray, labels: np.ndarray, class_bias: bool = True
) -> tuple[float, np.ndarray]:
    """Temperature T, and with ``class_bias`` one offset per class b, minimising the held-out NLL of
    softmax(log p / T + b). Without offsets this is temperature scaling, which never changes a
    decision; with them it is bias-corrected temperature scaling (BCTS, Alexandari et al. 2020), which
    also corrects a systematic lean towards one class on cells the network has not seen. The offsets
    are centred (they sum to 0; softmax ignores a common shift)."""
    from scipy.optimize import minimize

    logp = np.log(np.clip(probs, 1e-12, 1.0)).astype(np.float64)
    n, k = logp.shape
    rows = np.arange(n)

    def unpack(x):
        return np.exp(x[0]), (np.append(x[1:], 0.0) if class_bias else np.zeros(k))

    def nll(x):
        t, b = unpack(x)
        z = logp / t + b
        z = z - z.max(1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(1)) - z[rows, labels]))

    x0 = np.zeros(k if class_bias else 1)
    bounds = [(np.log(0.05), np.log(20.0))] + [(-10.0, 10.0)] * (len(x0) - 1)
    t, b = unpack(minimize(nll, x0, method="L-BFGS-B", bounds=bounds).x)
    return float(t), b - b.mean()


def save_curves(history: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for phase, h in history.items():
        for key, ax in (("loss", axes[0]), ("accuracy", axes[1])):
            if key in h:
                ax.plot(range(1, len(h[key]) + 1), h[key], label=f"{phase} train")
            if "val_" + key in h:
                ax.plot(range(1, len(h["val_" + key]) + 1), h["val_" + key], "--", label=f"{phase} val")
            ax.set_xlabel("epoch")
            ax.set_title(key)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def metrics_dict(y_true, y_pred, classes, groups=None) -> dict:
    """Accuracy, macro F1, per-class figures, confusion matrix; with ``groups`` (source fields) also
    the accuracy per source field (``source_balanced_accuracy``)."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=range(len(classes)), zero_division=0)
    out = {
        "accuracy": float(np.mean(y_true == y_pred)),
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=range(len(classes)), average="macro", zero_division=0)
        ),
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=range(len(classes))).tolist(),
        "n_images": int(len(y_true)),
    }
    if groups is not None:
        out["accuracy_per_source_field"] = source_balanced_accuracy(y_pred, y_true, groups)
    return out


def source_split(files, labels, cfg: TrainConfig):
    """The train/validation split: whole source fields (or near-duplicate groups) on one side.

    Returns ``(groups, val_mask, split_text, sources, gdir)``; ``gdir`` is the cache of unmasked
    144 px crops that the grouping and the colour opinion read. Shared by ``train_lite0`` and
    ``ml.finetune pack`` so that a model fine-tuned elsewhere is validated on the same fields.
    """
    from ml import colour
    from ml.data import fields_per_class, group_by_original, group_near_duplicates, group_split

    classes = list(cfg.classes)
    # Grouping always looks at the whole unmasked neighbourhood (the red-cell layout identifies a field);
    # the same unmasked crops feed the colour opinion (colour_features_cached).
    gcfg = dataclasses.replace(
        cfg,
        mask_radius=None,
        crop_side=colour.CROP_SIDE_REF,
        input_size=colour.CROP_SIZE,
        split_block=11,
        aug_views=0,
    )
    gdir = build_cache(files, labels, gcfg)
    gfeat = np.load(gdir / "imagenet_feat_v0.npy")
    if cfg.originals_dir:
        orig_feats, orig_nums, orig_cats = original_features(gcfg, gdir)
        groups = group_by_original(
            gfeat, labels, classes, orig_feats, orig_nums, orig_cats, cfg.group_similarity
        )
        split_text = (
            "by source field: every image matched to its ORIGINAL field (ImageNet features of the "
            "located cells, 8 dihedral views, same class), majority per near-duplicate component "
            f"(cosine >= {cfg.group_similarity}); whole fields, {cfg.val_fraction:.0%} of each class, to val"
        )
    else:
        groups = group_near_duplicates(gfeat, labels, cfg.group_similarity)
        split_text = (
            "near-duplicate groups (cosine similarity of ImageNet features >= "
            f"{cfg.group_similarity}) kept on one side; {cfg.val_fraction:.0%} of each class to val"
        )
    val = group_split(groups, labels, cfg.val_fraction, cfg.seed, classes)
    sources = {
        side: fields_per_class(groups[mask], labels[mask], classes)
        for side, mask in (("train", ~val), ("val", val))
    }
    return groups, val, split_text, sources, gdir


def train_lite0(files, labels, cfg: TrainConfig, out: Path, log=print) -> dict:
    import keras
    import tensorflow as tf

    from ml.model import build_classifier, build_lite0_upper, copy_weights_by_name, freeze_batchnorm

    classes = list(cfg.classes)
    groups, val, split_text, sources, gdir = source_split(files, labels, cfg)  # first: fails fast
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

    # Phase 1: head only, on pooled features of the frozen ImageNet base (inference mode).
    train_seed = cfg.seed if cfg.train_seed is None else cfg.train_seed
    seed_everything(train_seed)
    head = keras.Sequential(
        [
            keras.Input((feat0.shape[1],)),
            keras.layers.Dropout(cfg.dropout),
            keras.layers.Dense(len(classes), activation="softmax", name="predictions"),
        ]
    )
    head.compile(
        keras.optimizers.Adam(cfg.head_lr),
        keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
    )
    onehot = np.eye(len(classes), dtype=np.float32)
    h1 = head.fit(
        feat0[tr_idx],
        onehot[labels[tr_idx]],
        validation_data=(feat0[va_idx], onehot[labels[va_idx]]),
        epochs=cfg.head_epochs,
        batch_size=cfg.batch_size,
        verbose=2,
    )
    log(f"phase 1 (head on frozen base): val accuracy {h1.history['val_accuracy'][-1]:.4f}")

    # Phase 2: fine-tune the top blocks + head on cached activations, BatchNorm frozen.
    upper = build_lite0_upper(views[0].shape[1:], cfg.split_block, len(classes), cfg.dropout)
    upper.get_layer("predictions").set_weights(head.get_layer("predictions").get_weights())
    freeze_batchnorm(upper)
    steps = max(1, cfg.finetune_epochs) * int(np.ceil(len(tr_idx) / cfg.batch_size))
    sched = keras.optimizers.schedules.CosineDecay(cfg.finetune_lr, steps, warmup_target=None)
    upper.compile(
        keras.optimizers.AdamW(sched, weight_decay=cfg.weight_decay),
        keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
    )
    labels_oh = onehot[labels]
    train_ds = _ActivationBatches(views, tr_idx, labels_oh, cfg.batch_size, train_seed, True)
    val_ds = _ActivationBatches(views[:1], va_idx, labels_oh, 64, cfg.seed, False)
    best = {"acc": -1.0, "epoch": 0, "weights": None}

    class KeepBest(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs["val_accuracy"] > best["acc"]:
                best.update(acc=float(logs["val_accuracy"]), epoch=epoch + 1, weights=upper.get_weights())

    if cfg.finetune_epochs > 0:
        h2 = upper.fit(
            train_ds, validation_data=val_ds, epochs=cfg.finetune_epochs, verbose=2, callbacks=[KeepBest()]
        )
        upper.set_weights(best["weights"])
        log(
            f"phase 2 (fine-tune blocks {cfg.split_block}+): best val accuracy {best['acc']:.4f} "
            f"at epoch {best['epoch']}"
        )
    else:  # head-only model (quick)
        h2 = type("H", (), {"history": {}})()

    # Whole serving model (resize + rescale inside), weights copied by layer name.
    model = build_classifier(cfg.backbone, cfg.input_size, len(classes), cfg.dropout)
    copy_weights_by_name(upper, model)
    # Training-set features of the fine-tuned model for the out-of-distribution detector
    # (the upper blocks on the cached activations: the same numbers as the whole model, faster).
    fmodel = build_lite0_upper(views[0].shape[1:], cfg.split_block, len(classes), 0.0, features_only=True)
    copy_weights_by_name(upper, fmodel)
    ffn = tf.function(lambda x: fmodel(x, training=False))
    train_feats = run_batched(ffn, views[0][tr_idx], desc="train features", dtype=np.float32)
    extra_val = {"activations_1view_best_epoch_accuracy": best["acc"]} if best["epoch"] else {}
    return finish(
        model,
        cfg,
        files,
        labels,
        (groups, val, split_text, sources, gdir),
        np.load(d / "crops_v0.npy", mmap_mode="r"),
        train_feats,
        {"phase1_head": h1.history, "phase2_finetune": h2.history},
        {"best_finetune_epoch": best["epoch"], "nucleus_found_fraction": float(found.mean())},
        extra_val,
        out,
        log,
    )


def adopt_model(files, labels, cfg: TrainConfig, out: Path, log=print) -> dict:
    """Validate, calibrate and card a whole model trained elsewhere (``cfg.init_model``, e.g. by
    ``ml.finetune fit`` on a GPU) exactly as ``train_lite0`` does its own: same split, same steps."""
    import keras

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
    train_feats = pooled_features(model, crops[np.flatnonzero(~val)], "train features")
    extra = {"nucleus_found_fraction": float(found.mean()), "finetune": finetune_record(info)}
    return finish(
        model, cfg, files, labels, split, crops, train_feats, info.get("history", {}), extra, {}, out, log
    )


def pooled_features(model, crops: np.ndarray, desc: str) -> np.ndarray:
    """The model's pooled features (one plain view) of uint8 crops, float32: what ``ood.fit`` reads."""
    import keras
    import tensorflow as tf

    pooled = keras.Model(model.input, model.get_layer("avg_pool").output)
    fn = tf.function(lambda x: pooled(x, training=False), reduce_retracing=True)
    return run_batched(fn, crops, desc=desc, dtype=np.float32)


def finetune_record(info: dict) -> dict:
    """The card's ``finetune`` entry: what ``ml.finetune fit`` recorded beside the model."""
    keys = ("name", "backend", "device", "config", "complete", "seconds", "command")
    return {k: info[k] for k in keys if k in info} | {"pack": info.get("pack")}


def crops_cached(files, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Plain served crops (``crop_side`` reference px resized to ``input_size``), cached on disk."""
    d = cache_dir(cfg, files)  # build_cache's folder: its plain crops are these
    if not (d / "crops_v0.npy").exists():
        d.mkdir(parents=True, exist_ok=True)
        crops, found = crop_all(files, cfg, 0)
        np.save(d / "found_v0.npy", found)
        np.save(d / "crops_v0.npy", crops)
    return np.load(d / "crops_v0.npy", mmap_mode="r"), np.load(d / "found_v0.npy")


def finish(model, cfg, files, labels, split, crops, train_feats, history, card_extra, val_extra, out, log):
    """Validation through the serving path, colour opinion, calibration, flags; save model + card."""
    import keras
    import tensorflow as tf

    from ml import colour, ood
    from ml.predictor import tta_predict

    classes = list(cfg.classes)
    groups, val, split_text, sources, gdir = split
    tr_idx, va_idx = np.flatnonzero(~val), np.flatnonzero(val)
    feats_model = keras.Model(model.input, [model.get_layer("avg_pool").output, model.output])
    feats_fn = tf.function(lambda x: feats_model(x, training=False), reduce_retracing=True)
    val_crops = np.asarray(crops[va_idx])
    val_metrics = dict(val_extra)
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
    stats = ood.fit(train_feats, labels[tr_idx], len(classes))
    val_dist = ood.distance(stats, val_feats)
    calibration = calibrate_flags(val_probs, labels[va_idx], val_dist, cfg, log)
    # The served decision (argmax after the offsets); in-sample: the offsets were fitted on these cells.
    val_metrics["calibrated"] = metrics_dict(labels[va_idx], calibration.probs.argmax(1), classes)
    data = data_record(files, labels, groups, classes, len(tr_idx), len(va_idx), split_text, sources)
    val_predictions = {
        "index": va_idx,
        "labels": labels[va_idx],
        "probs": val_probs,
        "groups": groups[va_idx],
    }
    return write_bundle(
        model,
        cfg,
        out,
        stats=stats,
        colour_model=colour_model if colour_card else None,
        colour_card=colour_card,
        calibration=calibration,
        val_metrics=val_metrics,
        val_predictions=val_predictions,
        data=data,
        history=history,
        card_extra=card_extra,
        log=log,
    )


def data_record(files, labels, groups, classes, n_train: int, n_val: int, split_text: str, sources) -> dict:
    """The card's ``data`` entry."""
    return {
        "train_dir": str(Path(files[0]).parent.parent),
        "n_images": len(files),
        "per_class": {c: int((labels == i).sum()) for i, c in enumerate(classes)},
        "n_train": int(n_train),
        "n_val": int(n_val),
        "n_groups": int(len(np.unique(groups))),
        "split": split_text,
        "source_fields": sources,
    }


def choose_colour_weight(probs, clp, y, groups) -> tuple[float, dict]:
    """Weight of the colour opinion, by accuracy per source field (each field counts once): the number
    of augmented copies per field is an artefact of the dataset, and a few big fields would decide
    otherwise. Ties go to the smaller weight."""
    from ml import colour

    by_weight = {}
    for w in COLOUR_WEIGHTS:
        pred = colour.fuse(probs, clp, w).argmax(1)
        by_weight[w] = {
            "accuracy": float(np.mean(pred == y)),
            "accuracy_per_source_field": source_balanced_accuracy(pred, y, groups),
        }
    return max(COLOUR_WEIGHTS, key=lambda w: (by_weight[w]["accuracy_per_source_field"], -w)), by_weight


def colour_card_dict(weight: float, by_weight: dict) -> dict:
    from ml import colour

    return {
        "file": "colour_model.npz",
        "weight": weight,
        "crop_side_ref_px": colour.CROP_SIDE_REF,
        "crop_size": colour.CROP_SIZE,
        "features": colour.FEATURE_NAMES,
        "validation_by_weight": {str(w): a for w, a in by_weight.items()},
    }


@dataclasses.dataclass(frozen=True)
class Calibration:
    """What ``calibrate_flags`` chose on held-out predictions, and what it gives on them."""

    temperature: float
    class_bias: np.ndarray  # one offset per class, output order
    thresholds: dict  # "ood_distance", "min_confidence"
    flagged: np.ndarray  # held-out rows the thresholds flag
    probs: np.ndarray  # held-out probabilities after calibration (their argmax is the served label)


def calibrate_flags(probs, labels, dist, cfg: TrainConfig, log=print) -> Calibration:
    """Temperature and class offsets (``fit_calibration``, held-out NLL), then the "unidentified"
    thresholds for ``cfg.max_unidentified_val`` on the calibrated confidences."""
    from ml import ood

    temperature, bias = fit_calibration(probs, labels, cfg.class_bias)
    cal = ood.calibrate(probs, temperature, bias)
    thresholds = ood.choose_thresholds(dist, cal.max(1), cfg.max_unidentified_val)
    flagged = ood.flagged(dist, cal.max(1), thresholds)
    log(
        f"temperature {temperature:.3f}; class offsets {np.round(bias, 3).tolist()}; "
        f"thresholds {thresholds}; val flagged {flagged.mean():.2%}"
    )
    return Calibration(temperature, bias, thresholds, flagged, cal)


def write_bundle(
    model,
    cfg: TrainConfig,
    out: Path,
    *,
    stats: dict,
    colour_model,
    colour_card: dict | None,
    calibration: Calibration,
    val_metrics: dict,
    val_predictions: dict,
    data: dict,
    history: dict,
    card_extra: dict,
    command: str | None = None,
    log=print,
) -> dict:
    """Save the served bundle: model, OOD statistics, colour model, validation predictions, curves, card."""
    from ml import colour, ood

    classes = list(cfg.classes)
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / f"{cfg.name}.keras"
    model.save(model_path)
    ood.save(stats, out / "ood_stats.npz")
    if colour_card:
        colour.save(colour_model, out / colour_card["file"])
    np.savez_compressed(out / "val_predictions.npz", **val_predictions)
    save_curves(history, out / "training_curves.png")
    card = {
        "name": cfg.name,
        "version": None,  # below: the hash of the whole bundle (ml.bundle)
        "model_file": model_path.name,
        "classes": classes,
        "backbone": cfg.backbone,
        "input": {
            "type": "RGB crop, 0..255 floats, any size (resized inside the model)",
            "input_size": cfg.input_size,
        },
        "crop": {
            "locator": "ml.locate.locate_cells (blue-green nucleus index)",
            "crop_side_ref_px": cfg.crop_side,
            "mask_radius_ref_px": cfg.mask_radius,
            "reference_field": "320x240 px (half of the 640x480 camera field)",
        },
        "tta_views": cfg.tta_views,
        "colour": colour_card,
        "temperature": calibration.temperature,
        # Served probabilities: softmax(log p / temperature + class_bias[class]) (ml.ood.calibrate).
        "class_bias": ood.class_bias_record(classes, calibration.class_bias),
        "thresholds": calibration.thresholds,
        "ood_stats_file": "ood_stats.npz",
        "config": cfg.to_dict(),
        "data": data,
        "validation_metrics": val_metrics,
        "validation_flagged_rate": float(calibration.flagged.mean()),
        "history": {k: {m: [float(x) for x in v] for m, v in h.items()} for k, h in history.items()},
        **card_extra,
        "test_metrics": None,
        "command": command or "python -m ml.train " + " ".join(sys.argv[1:]),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    card["version"] = bundle_version(card, model_path)
    (out / "model_card.json").write_text(json.dumps(card, indent=2))
    log(f"wrote {model_path} version {card['version']}")
    return card


def main(argv=None) -> int:
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
    args = ap.parse_args(argv)
    cfg = TrainConfig(backbone=args.backbone, backbone_weights=args.backbone_weights)
    cfg.colour = not args.no_colour
    # Relative to the working directory, so the card does not carry this machine's absolute paths.
    originals = args.originals or os.path.relpath(Path(args.data).resolve().parent / "ORIGINAL")
    if originals.lower() != "none" and (Path(originals) / "labels.csv").exists():
        cfg.originals_dir = originals
    elif args.originals and originals.lower() != "none":
        print(f"--originals {originals}: no labels.csv there", file=sys.stderr)
        return 2
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
    files, labels, skipped = __import__("ml.data", fromlist=["x"]).list_class_folders(
        args.data, list(cfg.classes)
    )
    if "TEST" in Path(args.data).name.upper() and "TRAIN" not in Path(args.data).name.upper():
        print("refusing to train on a TEST folder", file=sys.stderr)
        return 2
    print(f"{len(files)} images, skipped folders: {skipped}")
    seed_everything(cfg.seed)
    from ml.backbones import BackboneWeightsError
    from ml.data import SplitError

    try:
        if args.init_model:
            cfg.init_model = args.init_model
            adopt_model(files, labels, cfg, Path(args.out))
        elif cfg.backbone == "mobilenet_v2":
            from ml.train_full import train_full

            train_full(files, labels, cfg, Path(args.out))
        else:
            train_lite0(files, labels, cfg, Path(args.out))
    except (SplitError, BackboneWeightsError) as exc:
        print(f"cannot train: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
