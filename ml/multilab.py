"""Train, calibrate and evaluate the eight-class model on several labs (command-line tool).

    # 1. canonical crops of every image of every source (ml.normalize), ~10 min on 2 CPUs
    python -m ml.multilab cache --bccd ../shared/datasets/bccd-wbc \
        --pbc /work/data/PBC_dataset_normal_DIB ../shared/datasets/pbc/split.csv --out var/mlcache
    # 2. fine-tune the whole EfficientNet-Lite0 on the chosen sources' training sides, calibrate
    #    and set flags on their validation sides, write a served bundle
    python -m ml.multilab fit --cache var/mlcache --sources bccd,pbc --out var/models/multilab
    # 3. held-out test figures per source, through the served predictor (one look per candidate)
    python -m ml.multilab evaluate --model var/models/multilab --cache var/mlcache --sources bccd,pbc

Leave one lab out (the figure that predicts a new lab): ``fit --sources pbc`` then
``evaluate --sources bccd``, and ``fit --sources bccd`` then ``evaluate --sources pbc``.

Validation never touches a test split: PBC's training side loses 10 % of each class (by file),
BCCD's TRAIN loses ~15 % of its source fields (augmented copies of one field stay together,
``bccd_groups``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from ml import normalize, ood, sources
from ml.bundle import bundle_version
from ml.data import group_near_duplicates, group_split
from ml.taxonomy import CLASSES
from ml.train import fit_calibration, metrics_dict

CACHE_SIZE = 200  # cached crop side (px): the canonical field at 160 px (see ``--size``)
CACHE_MARGIN = 1.25  # cached crops span this many canonical fields (room for scale augmentation)
# Radial profiles this similar are one field's copies. On BCCD TRAIN: 0.99 -> 310 groups, the largest
# 1,646 images (distinct fields merged); 0.995 -> 651 groups, largest 879; 0.998 -> 1,230 (copies split).
GROUP_SIMILARITY = 0.995


@dataclass
class FitConfig:
    """Every knob of ``fit``; recorded in the card."""

    sources: tuple[str, ...] = ("bccd", "pbc")
    input_size: int = 160  # network input (px); the canonical field is resampled to it
    field_rbc: float = normalize.FIELD_RBC  # canonical crop side, red-cell diameters
    epochs: int = 6  # whole-network epochs (BatchNorm frozen), after one head-only epoch
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


# --------------------------------------------------------------------------- cache


def _crop_one(path: str, size: int = CACHE_SIZE):
    from PIL import Image

    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
    except OSError:
        return None
    frame = normalize.analyse(rgb)
    crop = normalize.canonical_crop(rgb, frame, out_size=size, field_rbc=normalize.FIELD_RBC * CACHE_MARGIN)
    return crop, frame.rbc_diameter, frame.scale_source == "red_cells", bool(frame.boxes)


def radial_profile(crops: np.ndarray, rings: int = 12) -> np.ndarray:
    """Mean colour in concentric rings around the crop centre: the same for rotated, flipped and
    shifted copies of one cell (crops are centred on the nucleus), different for other cells."""
    n = crops.shape[1]
    yy, xx = np.mgrid[0:n, 0:n]
    ring = np.minimum((np.hypot(xx - (n - 1) / 2, yy - (n - 1) / 2) / (n / 2) * rings).astype(int), rings)
    feats = [crops[:, ring == r].mean(1) for r in range(rings)]
    f = np.concatenate(feats, 1).astype(np.float32)
    return f - f.mean(1, keepdims=True)


def bccd_groups(crops: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Near-duplicate groups of BCCD TRAIN (augmented copies of one field), by radial profiles."""
    return group_near_duplicates(radial_profile(crops), labels, threshold=GROUP_SIMILARITY)


def cache(
    spec: dict, out: Path, workers: int = 2, limit: int | None = None, size: int = CACHE_SIZE, log=print
) -> dict:
    """Canonical crops (``size`` px, CACHE_MARGIN fields) of every image; ``limit``: at most that
    many images per source, split and class (tests, quick looks). Train no larger than
    ``size / CACHE_MARGIN`` px, or the network reads upsampled pixels."""
    items = sources.load(spec)
    if limit:
        from collections import Counter

        seen: Counter = Counter()
        kept = []
        for it in items:
            seen[it.source, it.split, it.label] += 1
            if seen[it.source, it.split, it.label] <= limit:
                kept.append(it)
        items = kept
    t0 = time.time()
    with Pool(workers) as pool:
        res = pool.map(partial(_crop_one, size=size), [it.path for it in items], chunksize=64)
    keep = [i for i, r in enumerate(res) if r is not None]
    unreadable = [items[i].path for i, r in enumerate(res) if r is None]
    items = [items[i] for i in keep]
    res = [res[i] for i in keep]
    crops = np.stack([r[0] for r in res])
    labels = np.array([CLASSES.index(it.label) for it in items])
    src = np.array([it.source for it in items])
    split = np.array([it.split for it in items])
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "crops.npy", crops)
    np.savez(
        out / "meta.npz",
        labels=labels,
        source=src,
        split=split,
        paths=np.array([it.path for it in items]),
        rbc_diameter=np.array([r[1] for r in res], np.float32),
        scale_measured=np.array([r[2] for r in res]),
        found=np.array([r[3] for r in res]),
    )
    info = {
        "n_images": len(items),
        "unreadable": unreadable,
        "fingerprint": sources.fingerprint(items),
        "spec": spec,
        "seconds": round(time.time() - t0, 1),
        "crop_size": size,
        "field_px": int(round(size / CACHE_MARGIN)),
        "per_source": {
            s: {sp: int(((src == s) & (split == sp)).sum()) for sp in ("train", "test")}
            for s in np.unique(src).tolist()
        },
        "scale_measured_fraction": {
            s: float(np.mean([r[2] for r, it in zip(res, items, strict=True) if it.source == s]))
            for s in np.unique(src).tolist()
        },
        "command": "python -m ml.multilab " + " ".join(sys.argv[1:]),
    }
    (out / "cache.json").write_text(json.dumps(info, indent=2))
    log(f"cached {len(items)} crops in {info['seconds']} s -> {out}")
    return info


def load_cache(d: Path) -> tuple[np.ndarray, dict, dict]:
    with np.load(d / "meta.npz") as z:
        meta = {k: z[k] for k in z.files}
    return np.load(d / "crops.npy", mmap_mode="r"), meta, json.loads((d / "cache.json").read_text())


def split_groups(crops: np.ndarray, meta: dict) -> np.ndarray:
    """Group id of every row: BCCD TRAIN's near-duplicate groups (``bccd_groups``), else one per file."""
    groups = np.arange(len(meta["labels"]))
    b = (meta["source"] == "bccd") & (meta["split"] == "train")
    if b.any():
        groups[b] = len(groups) + bccd_groups(np.asarray(crops[b]), meta["labels"][b])
    return groups


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


# --------------------------------------------------------------------------- augmentation


def centre_field(crops: np.ndarray, size: int) -> np.ndarray:
    """The canonical field (the centre 1/CACHE_MARGIN of cached crops) at ``size`` px: as served."""
    from PIL import Image

    n = crops.shape[1]
    side = int(round(n / CACHE_MARGIN))
    o = (n - side) // 2
    return np.stack(
        [
            np.asarray(
                Image.fromarray(np.asarray(c[o : o + side, o : o + side])).resize(
                    (size, size), Image.BILINEAR
                )
            )
            for c in crops
        ]
    )


def _hue_matrix(turn: float) -> np.ndarray:
    """RGB rotation about the grey axis by ``turn`` of a full circle (a hue shift)."""
    a = 2 * np.pi * turn
    c, s = np.cos(a), np.sin(a)
    k = 1 / 3.0
    q = np.sqrt(k)
    return np.array(
        [
            [c + (1 - c) * k, k * (1 - c) - q * s, k * (1 - c) + q * s],
            [k * (1 - c) + q * s, c + k * (1 - c), k * (1 - c) - q * s],
            [k * (1 - c) - q * s, k * (1 - c) + q * s, c + k * (1 - c)],
        ],
        np.float32,
    )


def augment(crop: np.ndarray, rng: np.random.Generator, size: int, cfg: FitConfig) -> np.ndarray:
    """A view that spans labs: zoom, offset, dihedral, hue/saturation/gamma/gain (stain), grey-level,
    blur, noise and JPEG quality."""
    import io

    from PIL import Image, ImageFilter

    n = crop.shape[0]
    side = min(n, int(round(n / CACHE_MARGIN * np.exp(rng.uniform(-cfg.scale_jitter, cfg.scale_jitter)))))
    jit = int(0.06 * side)
    cx = int(np.clip((n - side) // 2 + rng.integers(-jit, jit + 1), 0, n - side))
    cy = int(np.clip((n - side) // 2 + rng.integers(-jit, jit + 1), 0, n - side))
    im = Image.fromarray(np.asarray(crop[cy : cy + side, cx : cx + side])).resize(
        (size, size), Image.BILINEAR
    )
    if rng.random() < 0.3:
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    a = np.asarray(im, np.float32)
    k = int(rng.integers(8))
    a = np.rot90(a, k % 4)
    if k >= 4:
        a = a[:, ::-1]
    a = a @ _hue_matrix(rng.uniform(-0.08, 0.08)).T
    grey = a.mean(2, keepdims=True)
    a = grey + (a - grey) * rng.uniform(0.6, 1.5)
    a = a * (1 + rng.normal(0, 0.07, 3)) + rng.normal(0, 8, 3)
    a = 255.0 * (np.clip(a, 0, 255) / 255.0) ** rng.uniform(0.7, 1.4)
    if rng.random() < 0.15:
        a = np.repeat(a.mean(2, keepdims=True), 3, 2)
    if rng.random() < 0.2:
        a = a + rng.normal(0, rng.uniform(2, 8), a.shape)
    a = np.clip(a, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        b = io.BytesIO()
        Image.fromarray(a).save(b, "JPEG", quality=int(rng.integers(40, 90)))
        a = np.asarray(Image.open(b).convert("RGB"))
    return np.ascontiguousarray(a)


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


# --------------------------------------------------------------------------- fit


def _dataset(crops, meta, train, class_index, weights, cfg: FitConfig):
    import keras

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
                    self.x[j] = augment(crops[self.rows[j]], rng, cfg.input_size, cfg)

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
    import keras

    from ml.model import FEATURES_LAYER
    from ml.predictor import tta_predict

    both = keras.Model(model.input, [model.get_layer(FEATURES_LAYER).output, model.output])
    return tta_predict(lambda x: both(x, training=False), crops, views, batch)


def fit(cache_dir: Path, out: Path, cfg: FitConfig, log=print) -> dict:
    import keras

    from ml.model import build_classifier, freeze_batchnorm

    t0 = time.time()
    crops, meta, cinfo = load_cache(cache_dir)
    field_px = cinfo.get("field_px", 102)
    if cfg.input_size > field_px:
        log(f"warning: input {cfg.input_size} px > the cache's field ({field_px} px): upsampled pixels")
    crops = np.asarray(crops)  # into memory
    meta["groups"] = split_groups(crops, meta)
    mine = np.isin(meta["source"], list(cfg.sources)) & (meta["split"] == "train")
    val = validation_mask(meta, cfg) & mine
    train = mine & ~val
    present = sorted(set(meta["labels"][train].tolist()))
    classes = [CLASSES[i] for i in present]
    class_index = np.full(len(CLASSES), -1)
    class_index[present] = np.arange(len(present))
    counts = np.bincount(class_index[meta["labels"][train]], minlength=len(classes)).astype(float)
    weights = (counts.mean() / counts) ** cfg.class_weight_power
    log(
        f"classes {classes}; train {int(train.sum())}, val {int(val.sum())}; "
        f"class weights {np.round(weights, 2)}"
    )
    keras.utils.set_random_seed(cfg.seed)
    model = build_classifier("efficientnet_lite0", cfg.input_size, len(classes), cfg.dropout)
    data = _dataset(crops, meta, train, class_index, weights, cfg)
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
    for layer in model.layers:
        layer.trainable = layer.name == "predictions"
    model.compile(keras.optimizers.Adam(1e-3), loss, weighted_metrics=["accuracy"])
    h1 = model.fit(data, epochs=1, verbose=2)
    for layer in model.layers:
        layer.trainable = True
    freeze_batchnorm(model)
    steps = cfg.epochs * len(data)
    sched = keras.optimizers.schedules.CosineDecay(
        cfg.lr / 10, max(1, steps - len(data)), warmup_target=cfg.lr, warmup_steps=len(data)
    )
    model.compile(
        keras.optimizers.AdamW(sched, weight_decay=cfg.weight_decay), loss, weighted_metrics=["accuracy"]
    )
    out.mkdir(parents=True, exist_ok=True)
    ckpt = keras.callbacks.ModelCheckpoint(str(out / "checkpoint.weights.h5"), save_weights_only=True)
    h2 = model.fit(data, epochs=cfg.epochs, verbose=2, callbacks=[ckpt])
    train_seconds = time.time() - t0
    served = build_classifier("efficientnet_lite0", cfg.input_size, len(classes), cfg.dropout, imagenet=False)
    served.set_weights(model.get_weights())
    history = {
        "phase1_head": {k: [float(x) for x in v] for k, v in h1.history.items()},
        "phase2_finetune": {k: [float(x) for x in v] for k, v in h2.history.items()},
    }
    return finish(
        served,
        classes,
        crops=crops,
        meta=meta,
        cinfo=cinfo,
        train=train,
        val=val,
        cfg=cfg,
        out=out,
        history=history,
        train_seconds=train_seconds,
        log=log,
    )


def finish(
    model,
    classes: list[str],
    *,
    crops: np.ndarray,
    meta: dict,
    cinfo: dict,
    train: np.ndarray,
    val: np.ndarray,
    cfg: FitConfig,
    out: Path,
    history: dict,
    train_seconds: float,
    log=print,
) -> dict:
    """Calibration and flags on validation (every training source), OOD statistics, the bundle."""
    idx = {c: i for i, c in enumerate(classes)}
    yv = np.array([idx[CLASSES[i]] for i in meta["labels"][val]])
    fv, pv = features_and_probs(model, centre_field(crops[val], cfg.input_size), cfg.tta_views)
    rng = np.random.default_rng(cfg.seed)
    sub = rng.choice(np.flatnonzero(train), min(4000, int(train.sum())), replace=False)
    ft, _ = features_and_probs(model, centre_field(crops[sub], cfg.input_size), 1)
    yt = np.array([idx[CLASSES[i]] for i in meta["labels"][sub]])
    stats = ood.fit(ft, yt, len(classes))
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
    thresholds = ood.choose_thresholds(dv, cal.max(1), cfg.max_unidentified_val)
    flagged = ood.flagged(dv, cal.max(1), thresholds)
    val_metrics = {
        "calibrated": figures(yv, cal, flagged, classes),
        "per_source": {
            s: figures(yv[vsrc == s], cal[vsrc == s], flagged[vsrc == s], classes)
            for s in np.unique(vsrc).tolist()
        },
    }
    short = {
        s: {k: m[k] for k in ("accuracy", "flagged", "silent_error")}
        for s, m in val_metrics["per_source"].items()
    }
    log(f"validation: {json.dumps(short)}")
    name = "hematovision_wbc"
    model_path = out / f"{name}.keras"
    model.save(model_path)
    ood.save(stats, out / "ood_stats.npz")
    # Raw validation outputs: ml.oodcal re-chooses the distance threshold from them.
    np.savez_compressed(out / "val_predictions.npz", probs=pv, labels=yv, ood_distance=dv, source=vsrc)
    card = {
        "name": name,
        "version": None,
        "model_file": model_path.name,
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
        "colour": None,
        "temperature": float(temperature),
        "class_bias": ood.class_bias_record(classes, bias),
        "thresholds": thresholds,
        "ood_stats_file": "ood_stats.npz",
        "config": asdict(cfg) | {"sources": list(cfg.sources)},
        "data": {
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
                "ml.multilab.bccd_groups); test splits never read in training or calibration"
            ),
        },
        "validation_metrics": val_metrics,
        "validation_flagged_rate": float(flagged.mean()),
        "history": history,
        "train_seconds": round(train_seconds),
        "test_metrics": None,
        "command": "python -m ml.multilab " + " ".join(sys.argv[1:]),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    card["version"] = bundle_version(card, model_path)
    (out / "model_card.json").write_text(json.dumps(card, indent=2))
    log(f"wrote {model_path} version {card['version']}")
    return card


# --------------------------------------------------------------------------- figures


def figures(y: np.ndarray, probs: np.ndarray, flagged: np.ndarray, classes) -> dict:
    """Accuracy, macro F1, per-class recall, flagged share and the silent error rate (wrong and not
    flagged), for rows whose true class is among ``classes``."""
    pred = probs.argmax(1)
    m = metrics_dict(y, pred, list(classes))
    m["macro_f1"] = macro_f1_present(m)
    wrong = pred != y
    m |= {
        "flagged": float(flagged.mean()) if len(y) else None,
        "silent_error": float((wrong & ~flagged).mean()) if len(y) else None,
        "accuracy_unflagged": float((~wrong[~flagged]).mean()) if (~flagged).any() else None,
    }
    return m


def macro_f1_present(m: dict) -> float | None:
    """Macro F1 over the classes the evaluated set has (BCCD has 4 of the 8): a class with no cell
    in the set would add an F1 of 0 whatever the model does."""
    f1 = [c["f1"] for c in m["per_class"].values() if c["support"]]
    return float(np.mean(f1)) if f1 else None


def evaluate(model_dir: Path, cache_dir: Path, which: list[str], log=print) -> dict:
    """Test figures per source through the served predictor (the images, not the cache's crops)."""
    from ml.predictor import load_predictor

    _, meta, _ = load_cache(cache_dir)
    pred = load_predictor(model_dir / "hematovision_wbc.keras", backend="keras")
    out = {"model_version": pred.version, "sources": {}}
    for s in which:
        rows = np.flatnonzero((meta["source"] == s) & (meta["split"] == "test"))
        rows = rows[np.isin(np.array(CLASSES)[meta["labels"][rows]], pred.classes)]
        t0 = time.time()
        results = []
        for i in range(0, len(rows), 64):
            results += pred.predict([_read(p) for p in meta["paths"][rows[i : i + 64]]])
        y = np.array([pred.classes.index(CLASSES[k]) for k in meta["labels"][rows]])
        probs = np.array([[r.probabilities[c] for c in pred.classes] for r in results])
        flagged = np.array([r.status == "unidentified" for r in results])
        out["sources"][s] = figures(y, probs, flagged, pred.classes) | {
            "seconds": round(time.time() - t0, 1),
            "flag_reasons": {
                k: int(sum(r.flag_reason == k for r in results))
                for k in {r.flag_reason for r in results}
                if k
            },
        }
        f = out["sources"][s]
        log(
            f"{s}: n={len(rows)} accuracy {f['accuracy']:.4f} macro F1 {f['macro_f1']:.4f} "
            f"flagged {f['flagged']:.2%} silent errors {f['silent_error']:.2%}"
        )
        log(
            "  recall "
            + ", ".join(f"{c} {v['recall']:.3f}" for c, v in f["per_class"].items() if v["support"])
        )
    return out


def record_test(model_dir: Path, res: dict) -> None:
    """Write held-out figures into the bundle's card as ``test_metrics`` (figures are not part of the
    version, so the bundle keeps its name); refuses figures of another version."""
    path = model_dir / "model_card.json"
    card = json.loads(path.read_text())
    if res["model_version"] != card["version"]:
        raise ValueError(f"figures of {res['model_version']}, bundle is {card['version']}")
    keep = (
        "n_images",
        "accuracy",
        "macro_f1",
        "per_class",
        "confusion_matrix",
        "flagged",
        "silent_error",
        "accuracy_unflagged",
        "flag_reasons",
    )
    card["test_metrics"] = {
        "model_version": card["version"],
        "per_source": {s: {k: m.get(k) for k in keep} for s, m in res["sources"].items()},
        "splits": {"bccd": "BCCD TEST (official, 2,487 images)", "pbc": "PBC split.csv test (3,405 images)"},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path.write_text(json.dumps(card, indent=2))


def _read(path) -> np.ndarray:
    from PIL import Image

    with Image.open(str(path)) as im:
        return np.asarray(im.convert("RGB"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cache", help="canonical crops of every image of every source")
    c.add_argument("--bccd", default=None, help="BCCD folder (TRAIN/ and TEST/)")
    c.add_argument("--pbc", nargs=2, default=None, metavar=("IMAGES", "SPLIT_CSV"))
    c.add_argument("--out", required=True)
    c.add_argument("--limit", type=int, default=None, help="at most N images per source, split and class")
    c.add_argument("--size", type=int, default=CACHE_SIZE, help="cached crop side (px)")
    f = sub.add_parser("fit", help="fine-tune, calibrate and bundle")
    f.add_argument("--cache", required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--sources", default="bccd,pbc")
    f.add_argument("--epochs", type=int, default=FitConfig.epochs)
    f.add_argument("--input-size", type=int, default=FitConfig.input_size)
    f.add_argument("--seed", type=int, default=FitConfig.seed)
    f.add_argument("--bccd-per-epoch", type=int, default=FitConfig.bccd_per_epoch)
    e = sub.add_parser("evaluate", help="test figures per source through the served predictor")
    e.add_argument("--model", required=True, help="bundle folder")
    e.add_argument("--cache", required=True)
    e.add_argument("--sources", default="bccd,pbc")
    e.add_argument("--json", default=None)
    e.add_argument(
        "--update-card",
        action="store_true",
        help="record the figures as the bundle's test_metrics (not part of its version)",
    )
    a = ap.parse_args(argv)
    if a.cmd == "cache":
        if not (a.bccd or a.pbc):
            ap.error("name at least one source (--bccd, --pbc)")
        cache({"bccd": a.bccd, "pbc": a.pbc}, Path(a.out), limit=a.limit, size=a.size)
    elif a.cmd == "fit":
        cfg = FitConfig(
            sources=tuple(a.sources.split(",")),
            epochs=a.epochs,
            input_size=a.input_size,
            seed=a.seed,
            bccd_per_epoch=a.bccd_per_epoch,
        )
        fit(Path(a.cache), Path(a.out), cfg)
    else:
        res = evaluate(Path(a.model), Path(a.cache), a.sources.split(","))
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=2))
        if a.update_card:
            record_test(Path(a.model), res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
