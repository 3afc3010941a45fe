"""Fine-tuning, calibration and the bundle of the multi-lab recipe (``python -m ml.multilab fit``):
the whole EfficientNet-Lite0 on the chosen sources' training sides, temperature, class offsets and
flag thresholds on their validation sides, out-of-distribution statistics, the card.

Validation never touches a test split: PBC's training side loses 10 % of each class (by file),
BCCD's TRAIN loses ~15 % of its source fields (augmented copies of one field stay together,
``ml.cropcache.bccd_groups``)."""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml import normalize, ood
from ml.augment import augment
from ml.bundle import bundle_version
from ml.calibration import fit_calibration
from ml.cropcache import centre_field, load_cache, split_groups
from ml.data import group_split
from ml.model import FEATURES_LAYER, build_classifier, freeze_batchnorm
from ml.multieval import figures
from ml.taxonomy import CLASSES
from ml.tta import tta_predict


@dataclass
class FitConfig:
    """Every knob of ``fit``; recorded in the card."""

    sources: tuple[str, ...] = ("bccd", "pbc")
    input_size: int = 160  # network input (px); the canonical field is resampled to it
    field_rbc: float = normalize.FIELD_RBC  # canonical crop side, red-cell diameters
    epochs: int = 5  # whole-network epochs (BatchNorm frozen), after one head-only epoch (shipped: 5)
    lr: float = 3e-4  # peak AdamW rate (cosine decay, one epoch of warm-up)
    weight_decay: float = 0.01
    batch: int = 48
    dropout: float = 0.3
    label_smoothing: float = 0.1
    class_weight_power: float = 0.5  # loss weight per class: (mean count / count) ** power
    bccd_per_epoch: int = 3000  # BCCD TRAIN is ~33 augmented copies of ~300 fields: a fresh sample
    val_fraction_pbc: float = 0.10  # by file, per class
    val_fraction_bccd: float = 0.15  # by source field (near-duplicate group), per class
    scale_jitter: float = 0.18  # log-uniform zoom within +-18 %
    tta_views: int = 4
    max_unidentified_val: float = 0.03  # flag budget on validation
    seed: int = 1
    stain: str = "none"  # "reinhard": a stain-normalising first layer (ml.stain), reference from training
    ood_score: str = "knn"  # out-of-distribution score (ml.ood): "knn" (shipped) or "mahalanobis"

    def __post_init__(self) -> None:
        # Checked here, not after an hour of training when calibration reads it.
        if self.ood_score not in ood.SCORES:
            known = " or ".join(ood.SCORES)
            raise ValueError(f"unknown out-of-distribution score {self.ood_score!r} ({known})")


def validation_mask(meta: dict, cfg: FitConfig) -> np.ndarray:
    """Validation rows of the training sides: PBC by file, BCCD by source-field group; per class.
    ``meta["groups"]`` comes from ``split_groups``."""
    val = np.zeros(len(meta["labels"]), bool)
    for s, frac in (("pbc", cfg.val_fraction_pbc), ("bccd", cfg.val_fraction_bccd)):
        for c in np.unique(meta["labels"]):
            rows = np.flatnonzero((meta["source"] == s) & (meta["split"] == "train") & (meta["labels"] == c))
            if len(np.unique(meta["groups"][rows])) >= 2:  # a single field stays on the training side
                val[rows[group_split(meta["groups"][rows], meta["labels"][rows], frac, cfg.seed)]] = True
    return val


def epoch_rows(meta: dict, train: np.ndarray, cfg: FitConfig, epoch: int) -> np.ndarray:
    """This epoch's training rows: every non-BCCD row, and a fresh sample of BCCD's copies."""
    rng = np.random.default_rng([cfg.seed, epoch])
    b = train & (meta["source"] == "bccd")
    rows = np.flatnonzero(train & ~b)
    brows = np.flatnonzero(b)
    if len(brows):
        take = min(len(brows), cfg.bccd_per_epoch if len(rows) else max(cfg.bccd_per_epoch, 4000))
        rows = np.concatenate([rows, rng.choice(brows, take, replace=False)])
    return rng.permutation(rows)


def _dataset(crops, meta, train, class_index, weights, cfg: FitConfig):
    import keras  # Keras: imported when fitting starts; the dataset subclasses its PyDataset

    class Epochs(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = 0
            self._make()

        def _make(self):
            self.rows = epoch_rows(meta, train, cfg, self.epoch)
            self.x = np.empty((len(self.rows), cfg.input_size, cfg.input_size, 3), np.uint8)

            def job(start):
                rng = np.random.default_rng([cfg.seed, self.epoch, start])
                for j in range(start, min(start + 256, len(self.rows))):
                    self.x[j] = augment(crops[self.rows[j]], rng, cfg.input_size, cfg.scale_jitter)

            with ThreadPoolExecutor(2) as ex:
                list(ex.map(job, range(0, len(self.rows), 256)))

        def __len__(self):
            return int(np.ceil(len(self.rows) / cfg.batch))

        def on_epoch_end(self):
            self.epoch += 1
            self._make()

        def __getitem__(self, i):
            sl = slice(i * cfg.batch, (i + 1) * cfg.batch)
            y = class_index[meta["labels"][self.rows[sl]]]
            onehot = np.eye(len(weights), dtype=np.float32)[y]
            return self.x[sl].astype(np.float32), onehot, weights[y].astype(np.float32)

    return Epochs()


def features_and_probs(
    model, crops: np.ndarray, views: int, batch: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """TTA-averaged pooled features and probabilities of uint8 crops (as ``ml.predictor``)."""
    import keras  # Keras: imported when a model runs (import ml.multifit stays cheap)

    both = keras.Model(model.input, [model.get_layer(FEATURES_LAYER).output, model.output])
    return tta_predict(lambda x: both(x, training=False), crops, views, batch)


@dataclass(frozen=True)
class FitData:
    """The crop cache in memory, split into the training and validation sides of the chosen sources."""

    crops: np.ndarray  # uint8 canonical fields (ml.cropcache)
    meta: dict  # per-row labels, source, split, groups
    cinfo: dict  # the cache's record (spec, fingerprint, field_px)
    train: np.ndarray  # row mask: training side
    val: np.ndarray  # row mask: validation side


@dataclass(frozen=True)
class Fitted:
    """A fitted (uncompiled) model and how it was fitted."""

    model: Any  # the served Keras model
    classes: list[str]  # the classes present in the training side, ml.taxonomy order
    history: dict  # loss and accuracy per epoch of each phase
    train_seconds: float
    stain: dict | None = None  # reference statistics of the stain layer (ml.stain), if any


def fit(cache_dir: Path, out: Path, cfg: FitConfig, log=print) -> dict:
    """Fine-tune on the cache's training sides, then ``finish`` (calibration and the bundle)."""
    t0 = time.time()
    data = load_sides(cache_dir, cfg, log)
    meta, train = data.meta, data.train
    present = sorted(set(meta["labels"][train].tolist()))
    classes = [CLASSES[i] for i in present]
    class_index = np.full(len(CLASSES), -1)
    class_index[present] = np.arange(len(present))
    counts = np.bincount(class_index[meta["labels"][train]], minlength=len(classes)).astype(float)
    weights = (counts.mean() / counts) ** cfg.class_weight_power
    log(
        f"classes {classes}; train {int(train.sum())}, val {int(data.val.sum())}; "
        f"class weights {np.round(weights, 2)}"
    )
    stain = stain_reference(data, cfg)
    model, history = _train(data, class_index, weights, cfg, out, stain=stain)
    train_seconds = time.time() - t0
    served = build_classifier(
        "efficientnet_lite0", cfg.input_size, len(classes), cfg.dropout, imagenet=False, stain=stain
    )
    served.set_weights(model.get_weights())
    return finish(Fitted(served, classes, history, train_seconds, stain), data, cfg, out, log=log)


def stain_reference(data: FitData, cfg: FitConfig) -> dict | None:
    """``cfg.stain == "reinhard"``: the reference colour statistics of (a sample of 2,000 of) the
    training side's canonical fields, as the network reads them; otherwise None."""
    if cfg.stain == "none":
        return None
    if cfg.stain != "reinhard":
        raise ValueError(f"unknown stain normalisation {cfg.stain!r} (none or reinhard)")
    from ml.stain import reference  # imports Keras (the layer it defines)

    rows = np.flatnonzero(data.train)
    rows = np.random.default_rng(cfg.seed).choice(rows, min(2000, len(rows)), replace=False)
    return reference(centre_field(data.crops[np.sort(rows)], cfg.input_size))


def load_sides(cache_dir: Path, cfg: FitConfig, log=print) -> FitData:
    """The cache in memory, its near-duplicate groups, the training and validation rows of ``cfg.sources``."""
    crops, meta, cinfo = load_cache(cache_dir)
    field_px = cinfo.get("field_px", 102)
    if cfg.input_size > field_px:
        log(f"warning: input {cfg.input_size} px > the cache's field ({field_px} px): upsampled pixels")
    crops = np.asarray(crops)  # into memory
    meta["groups"] = split_groups(crops, meta)
    mine = np.isin(meta["source"], list(cfg.sources)) & (meta["split"] == "train")
    val = validation_mask(meta, cfg) & mine
    return FitData(crops, meta, cinfo, train=mine & ~val, val=val)


def _train(
    data: FitData, class_index: np.ndarray, weights: np.ndarray, cfg: FitConfig, out: Path, *, stain=None
):
    """One head-only epoch, then ``cfg.epochs`` of the whole network (BatchNorm frozen, cosine rate,
    a checkpoint each epoch in ``out``). Returns the model and the history of both phases."""
    import keras  # Keras: imported when fitting starts (import ml.multifit stays cheap)

    keras.utils.set_random_seed(cfg.seed)
    model = build_classifier("efficientnet_lite0", cfg.input_size, len(weights), cfg.dropout, stain=stain)
    seq = _dataset(data.crops, data.meta, data.train, class_index, weights, cfg)
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
    for layer in model.layers:
        layer.trainable = layer.name == "predictions"
    model.compile(keras.optimizers.Adam(1e-3), loss, weighted_metrics=["accuracy"])
    h1 = model.fit(seq, epochs=1, verbose=2)
    for layer in model.layers:
        layer.trainable = True
    freeze_batchnorm(model)
    steps = cfg.epochs * len(seq)
    sched = keras.optimizers.schedules.CosineDecay(
        cfg.lr / 10, max(1, steps - len(seq)), warmup_target=cfg.lr, warmup_steps=len(seq)
    )
    model.compile(
        keras.optimizers.AdamW(sched, weight_decay=cfg.weight_decay), loss, weighted_metrics=["accuracy"]
    )
    out.mkdir(parents=True, exist_ok=True)
    ckpt = keras.callbacks.ModelCheckpoint(str(out / "checkpoint.weights.h5"), save_weights_only=True)
    h2 = model.fit(seq, epochs=cfg.epochs, verbose=2, callbacks=[ckpt])
    history = {
        "phase1_head": {k: [float(x) for x in v] for k, v in h1.history.items()},
        "phase2_finetune": {k: [float(x) for x in v] for k, v in h2.history.items()},
    }
    return model, history


@dataclass
class Calibration:
    """What ``calibrate`` sets on the validation sides; the card and the bundle's files record it."""

    stats: dict  # out-of-distribution statistics of training features (ml.ood)
    temperature: float
    bias: np.ndarray
    thresholds: dict
    metrics: dict  # pooled and per-source validation figures
    flagged_rate: float
    val_outputs: dict  # raw validation outputs, for ml.oodcal


def calibrate(model, classes: list[str], data: FitData, cfg: FitConfig) -> Calibration:
    """Temperature, class offsets and flag thresholds on validation (every training source), and the
    out-of-distribution statistics of a sample of the training side."""
    crops, meta, train, val = data.crops, data.meta, data.train, data.val
    idx = {c: i for i, c in enumerate(classes)}
    yv = np.array([idx[CLASSES[i]] for i in meta["labels"][val]])
    fv, pv = features_and_probs(model, centre_field(crops[val], cfg.input_size), cfg.tta_views)
    rng = np.random.default_rng(cfg.seed)
    sub = rng.choice(np.flatnonzero(train), min(4000, int(train.sum())), replace=False)
    ft, _ = features_and_probs(model, centre_field(crops[sub], cfg.input_size), 1)
    if cfg.ood_score == "knn":  # FitConfig admits only ood.SCORES
        stats = ood.fit_knn(ft, min(ood.KNN_K, len(ft)))  # a tiny training side: its size
    else:
        stats = ood.fit(ft, np.array([idx[CLASSES[i]] for i in meta["labels"][sub]]), len(classes))
    dv = ood.distance(stats, fv)
    # Each source weighs the same in the calibration (BCCD's validation side is larger and has four
    # of the eight classes): the larger side is subsampled to the smaller's size.
    vsrc = meta["source"][val]
    sizes = {s: int((vsrc == s).sum()) for s in np.unique(vsrc).tolist()}
    keep = np.concatenate(
        [rng.choice(np.flatnonzero(vsrc == s), min(sizes.values()), replace=False) for s in sizes]
    )
    temperature, bias = fit_calibration(pv[keep], yv[keep], True)
    cal = ood.calibrate(pv, temperature, bias)
    thresholds = ood.choose_thresholds(dv, cal.max(1), cfg.max_unidentified_val, score=cfg.ood_score)
    flagged = ood.flagged(dv, cal.max(1), thresholds)
    metrics = {
        "calibrated": figures(yv, cal, flagged, classes),
        "per_source": {
            s: figures(yv[vsrc == s], cal[vsrc == s], flagged[vsrc == s], classes)
            for s in np.unique(vsrc).tolist()
        },
    }
    return Calibration(
        stats=stats,
        temperature=float(temperature),
        bias=bias,
        thresholds=thresholds,
        metrics=metrics,
        flagged_rate=float(flagged.mean()),
        val_outputs={"probs": pv, "labels": yv, "ood_distance": dv, "source": vsrc},
    )


def finish(
    fitted: Fitted, data: FitData, cfg: FitConfig, out: Path, *, log=print, card_extra: dict | None = None
) -> dict:
    """Calibrate on validation, then write the bundle: model, OOD statistics, raw validation outputs
    and the card (its version a hash of the whole bundle; ``card_extra`` entries added to it, none of
    them a serving setting)."""
    model, classes = fitted.model, fitted.classes
    c = calibrate(model, classes, data, cfg)
    short = {
        s: {k: m[k] for k in ("accuracy", "flagged", "silent_error")}
        for s, m in c.metrics["per_source"].items()
    }
    log(f"validation: {json.dumps(short)}")
    name = "hematovision_wbc"
    model_path = out / f"{name}.keras"
    model.save(model_path)
    ood.save(c.stats, out / "ood_stats.npz")
    # Raw validation outputs: ml.oodcal re-chooses the distance threshold from them.
    np.savez_compressed(out / "val_predictions.npz", **c.val_outputs)
    card = _card(name, fitted, c, data, cfg) | (card_extra or {})
    card["version"] = bundle_version(card, model_path)
    (out / "model_card.json").write_text(json.dumps(card, indent=2))
    log(f"wrote {model_path} version {card['version']}")
    return card


def _card(name: str, fitted: Fitted, c: Calibration, data: FitData, cfg: FitConfig) -> dict:
    """The model card (its ``version`` still None: a hash of the bundle, set once the files are written)."""
    classes = fitted.classes
    return {
        "name": name,
        "version": None,
        "model_file": f"{name}.keras",
        "classes": classes,
        "backbone": "efficientnet_lite0",
        "input": {
            "type": "RGB crop, 0..255 floats, any size (resized inside the model)",
            "input_size": cfg.input_size,
        },
        "crop": {
            "method": "rbc_scale",
            "locator": "ml.normalize.analyse (stain-adaptive nucleus index, red-cell ruler)",
            "field_rbc": cfg.field_rbc,
            "crop_side_ref_px": cfg.field_rbc,  # older readers: the crop side, here in red-cell diameters
            "mask_radius_ref_px": None,
        },
        "tta_views": cfg.tta_views,
        "stain": fitted.stain,
        "colour": None,
        "temperature": c.temperature,
        "class_bias": ood.class_bias_record(classes, c.bias),
        "thresholds": c.thresholds,
        "ood_stats_file": "ood_stats.npz",
        "ood_score": ood.describe(c.stats),
        "config": asdict(cfg) | {"sources": list(cfg.sources)},
        "data": _data_record(classes, data, cfg),
        "validation_metrics": c.metrics,
        "validation_flagged_rate": c.flagged_rate,
        "history": fitted.history,
        "train_seconds": round(fitted.train_seconds),
        "test_metrics": None,
        "command": "python -m ml.multilab " + " ".join(sys.argv[1:]),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _data_record(classes: list[str], data: FitData, cfg: FitConfig) -> dict:
    """The card's ``data``: sources, cache fingerprint, counts per class and source, the split rule."""
    meta, cinfo, train, val = data.meta, data.cinfo, data.train, data.val
    return {
        "sources": cinfo["spec"],
        "cache_fingerprint": cinfo["fingerprint"],
        "n_train": int(train.sum()),
        "n_val": int(val.sum()),
        "per_class": {c: int((meta["labels"][train] == CLASSES.index(c)).sum()) for c in classes},
        "per_source": {
            s: {
                "train": int((train & (meta["source"] == s)).sum()),
                "val": int((val & (meta["source"] == s)).sum()),
            }
            for s in cfg.sources
        },
        "split": (
            f"validation: PBC {cfg.val_fraction_pbc:.0%} of each class by file; BCCD TRAIN "
            f"{cfg.val_fraction_bccd:.0%} of each class by near-duplicate group (radial colour profile, "
            "ml.cropcache.bccd_groups); test splits never read in training or calibration"
        ),
    }


def refinish(model_dir: Path, cache_dir: Path, out: Path, ood_score: str, log=print) -> dict:
    """A fitted multi-lab bundle calibrated again (``finish``) with another out-of-distribution score,
    the network unchanged: its own recipe (the card's ``config``) on the cache it was trained from."""
    from ml.bundle import load_bundle  # loads Keras

    if out.exists():
        raise ValueError(f"{out} exists: refinish writes a new bundle")
    card = json.loads((model_dir / "model_card.json").read_text())
    known = set(FitConfig.__dataclass_fields__)
    recipe = {k: v for k, v in card["config"].items() if k in known}
    cfg = FitConfig(**(recipe | {"sources": tuple(recipe["sources"]), "ood_score": ood_score}))
    data = load_sides(cache_dir, cfg, log)
    if data.cinfo["fingerprint"] != card["data"]["cache_fingerprint"]:
        raise ValueError(
            f"cache {cache_dir} is {data.cinfo['fingerprint']}, the bundle was fitted on "
            f"{card['data']['cache_fingerprint']}"
        )
    model, _, _ = load_bundle(model_dir / card["model_file"])
    fitted = Fitted(model, list(card["classes"]), card["history"], card["train_seconds"], card.get("stain"))
    out.mkdir(parents=True)
    extra = {
        "trained_at": card.get("trained_at"),
        "refinished_from": card["version"],
        "refinished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return finish(fitted, data, cfg, out, log=log, card_extra=extra)
