"""K-fold cross-validation by source field: calibrate and card a model fitted on ALL training fields.

A model validated on a held-out 20 % has seen only 80 % of the source fields, and its temperature,
colour weight and "unidentified" thresholds are set on ~60 fields that decide them in lumps of ~155
copies. With K folds (``ml.finetune pack --folds K``, one ``fit --fold k`` per fold and a refit on
every field, all with the same recipe, e.g. on a GPU by ``scripts/gpu_finetune.sh``) every source
field is predicted once by a model that never saw it. Here, on TensorFlow and through the serving
path (served crops, test-time augmentation, colour opinion, OOD statistics of that fold's own
training side), those out-of-fold predictions choose the colour weight, the temperature with its
class offsets and the thresholds, exactly as ``ml.train`` does on its single split, and the refit
model is shipped with them and with OOD statistics and a colour model fitted on every field:

    python -m ml.crossval --data ../shared/datasets/bccd-wbc/TRAIN --folds-dir DIR \\
        --model DIR/finetune_s192_e12_seed2.keras --out var/models/cv

``--folds-dir`` holds ``<name>_fold<k>.weights16.npz`` + ``.json`` per fold (``fit --save
weights16``); the fold assignment is recomputed here from the same split seed and must match the
one each fold model records. The out-of-fold figures estimate a model trained on (K-1)/K of the
fields; the shipped one saw all of them. TEST is never read here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml import colour, ood, oodcal
from ml.bundle import file_hash
from ml.cache import colour_features_cached, crops_cached, pooled_features
from ml.calibration import calibrate_flags, choose_colour_weight, fit_calibration
from ml.card import BundleContents, SplitRecord, colour_card_dict, data_record, finetune_record, write_bundle
from ml.config import TrainConfig, seed_everything
from ml.data import fields_per_class, group_folds, list_class_folders
from ml.metrics import metrics_dict, source_balanced_accuracy
from ml.model import build_classifier, set_weights_by_name
from ml.split import source_split
from ml.tta import tta_predict


def fold_models(folds_dir: Path) -> dict[int, Path]:
    """``{k: <name>_fold<k>.weights16.npz}`` found in ``folds_dir``."""
    found = {}
    for p in sorted(folds_dir.glob("*_fold*.weights16.npz")):
        m = re.search(r"_fold(\d+)\.weights16\.npz$", p.name)
        if m:
            found[int(m.group(1))] = p
    return found


def check_fold(info: dict, k: int, keep: np.ndarray, fields: dict, n_folds: int, path: Path) -> None:
    """Refuse a fold model whose recorded training side is not this split's: it would leak."""
    pack = info.get("pack") or {}
    got = (pack.get("folds"), pack.get("fold"), pack.get("n_images"), pack.get("source_fields"))
    want = (n_folds, k, int(keep.sum()), fields)
    if got != want:
        raise ValueError(
            f"{path} was fitted on fold {got[1]} of {got[0]} ({got[2]} images, {got[3]} source fields); "
            f"this split's fold {k} of {n_folds} trains on {want[2]} images {want[3]}: use the same data, "
            "seed and ORIGINAL as for `ml.finetune pack --folds`"
        )


@dataclass(frozen=True)
class Folds:
    """The fold models and the split they were fitted on (recomputed here, checked against theirs)."""

    paths: dict[int, Path]  # fold k -> <name>_fold<k>.weights16.npz
    infos: dict[int, dict]  # fold k -> its ``ml.finetune fit`` record
    groups: np.ndarray  # source field of each image
    fold: np.ndarray  # fold of each image
    all_fields: dict  # source fields per class, every fold together
    gdir: Path  # the grouping cache (unmasked crops, colour features)


@dataclass
class OutOfFold:
    """Each image predicted by the fold model that never saw it."""

    probs: np.ndarray  # CNN probabilities (test-time augmentation)
    dist: np.ndarray  # OOD distance against that fold's own training side
    colour_log_probs: np.ndarray  # the colour opinion fitted on that fold's training side
    per_fold: dict  # "k" -> that fold's size, fields and accuracy


@dataclass(frozen=True)
class Models:
    """What ``ml.finetune fit`` produced: the model fitted on every field and the folder of fold models."""

    refit: Path  # the .keras model fitted on every fold (fit without --fold)
    folds_dir: Path  # <name>_fold<k>.weights16.npz + .json per fold (fit --fold k --save weights16)


def crossval(files, labels, cfg: TrainConfig, *, models: Models, out: Path, log=print) -> dict:
    """Out-of-fold validation of the fold models, the refit model shipped in ``out`` with what they chose."""
    import keras  # Keras and TensorFlow: imported when the models run

    model_path, folds_dir = models.refit, models.folds_dir
    model = keras.saving.load_model(model_path, compile=False)
    info = _info(model_path)
    cfg.input_size = int(model.get_layer("resize").output.shape[1])  # the model fixes its input size
    folds = _checked_folds(files, labels, cfg, folds_dir, model_path, info)
    n_folds = len(folds.paths)
    sizes = np.bincount(folds.fold).tolist()
    log(f"{len(files)} images, {n_folds} folds of {sizes} images; refit {model_path}")

    crops, found = crops_cached(files, cfg)
    cfeat = colour_features_cached(folds.gdir) if cfg.colour else None
    oof = _out_of_fold(crops, cfeat, labels, cfg, folds, log)
    val_metrics, probs, calibration, colour_card, colour_model = _choose_decisions(
        oof, cfeat, labels, cfg, folds, log
    )
    # The shipped model: OOD statistics of its own training side, which is every field.
    stats = ood.fit(pooled_features(model, crops, "refit train features"), labels, len(cfg.classes))
    cfg.init_model = os.path.relpath(model_path)
    contents = BundleContents(
        stats=stats,
        calibration=calibration,
        val_metrics=val_metrics,
        val_predictions={
            "index": np.arange(len(files)),
            "labels": labels,
            "probs": probs,  # out of fold, with the colour opinion (uncalibrated)
            "cnn_probs": oof.probs,  # out of fold, the CNN alone
            "ood_distance": oof.dist,  # out of fold: each fold model against its own training side
            "groups": folds.groups,
            "fold": folds.fold,
        },
        data=_data_record(files, labels, cfg, folds),
        history=info.get("history", {}),
        card_extra=_card_extra(info, folds, float(found.mean())),
        colour_model=colour_model,
        colour_card=colour_card,
        command="python -m ml.crossval " + " ".join(sys.argv[1:]),
    )
    write_bundle(model, cfg, out, contents, log=log)
    # The distance threshold, checked against non-blood images (disjoint from the test fixtures).
    return oodcal.apply(out, log=log)


def _checked_folds(files, labels, cfg: TrainConfig, folds_dir: Path, model_path: Path, info: dict) -> Folds:
    """The fold models of ``folds_dir`` and this data's split, refused unless the refit model saw every
    field of the same K-fold pack and each fold model exactly its own training side."""
    classes = list(cfg.classes)
    paths = fold_models(folds_dir)
    n_folds = len(paths)
    if n_folds < 2 or sorted(paths) != list(range(n_folds)):
        raise ValueError(f"{folds_dir}: need fold models 0..K-1 (K >= 2), found folds {sorted(paths)}")
    groups, _, _, _, gdir = source_split(files, labels, cfg)
    fold = group_folds(groups, labels, n_folds, cfg.seed)
    all_fields = fields_per_class(groups, labels, classes)
    pack = info.get("pack") or {}
    if (pack.get("folds"), pack.get("n_images"), pack.get("source_fields")) != (
        n_folds,
        len(files),
        all_fields,
    ):
        raise ValueError(
            f"{model_path} was not fitted on every field of this {n_folds}-fold pack "
            f"({pack.get('n_images')} images, folds {pack.get('folds')}; here {len(files)} images)"
        )
    infos = {}
    for k, p in paths.items():
        infos[k] = _info(p)
        keep = fold != k
        check_fold(infos[k], k, keep, fields_per_class(groups[keep], labels[keep], classes), n_folds, p)
    return Folds(paths, infos, groups, fold, all_fields, gdir)


def _out_of_fold(crops, cfeat, labels, cfg: TrainConfig, folds: Folds, log) -> OutOfFold:
    """Each fold's images predicted by its fold model; OOD statistics, colour model of its training side."""
    import keras
    import tensorflow as tf

    classes = list(cfg.classes)
    n = len(labels)
    oof = OutOfFold(
        probs=np.zeros((n, len(classes)), np.float32),
        dist=np.zeros(n, np.float32),
        colour_log_probs=np.zeros((n, len(classes)), np.float32),
        per_fold={},
    )
    groups, fold = folds.groups, folds.fold
    for k, p in folds.paths.items():
        fm = build_classifier(cfg.backbone, cfg.input_size, len(classes), cfg.dropout, imagenet=False)
        set_weights_by_name(fm, np.load(p))
        tr, va = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        both = keras.Model(fm.input, [fm.get_layer("avg_pool").output, fm.output])
        bfn = tf.function(lambda x, m=both: m(x, training=False), reduce_retracing=True)
        train_feats = pooled_features(fm, crops[tr], f"fold {k} train features")
        va_feats, va_probs = tta_predict(bfn, np.asarray(crops[va]), cfg.tta_views)
        stats = ood.fit(train_feats, labels[tr], len(classes))
        oof.probs[va], oof.dist[va] = va_probs, ood.distance(stats, va_feats)
        if cfg.colour:
            cm = colour.fit(cfeat[tr], labels[tr], len(classes), seed=cfg.seed)
            oof.colour_log_probs[va] = colour.log_probs(cm, cfeat[va])
        pred = va_probs.argmax(1)
        oof.per_fold[str(k)] = {
            "n_images": int(len(va)),
            "source_fields": fields_per_class(groups[va], labels[va], classes),
            "accuracy": float(np.mean(pred == labels[va])),
            "accuracy_per_source_field": source_balanced_accuracy(pred, labels[va], groups[va]),
            "complete": folds.infos[k].get("complete"),
        }
        log(f"fold {k}: {oof.per_fold[str(k)]}")
    return oof


def _choose_decisions(oof: OutOfFold, cfeat, labels, cfg: TrainConfig, folds: Folds, log):
    """From the out-of-fold predictions: the colour weight (and the colour model of every field), the
    calibration and thresholds, and the validation figures. Returns ``(val_metrics, probs,
    calibration, colour_card, colour_model)``, ``probs`` being the out-of-fold probabilities with the
    colour opinion."""
    classes = list(cfg.classes)
    groups, fold = folds.groups, folds.fold
    key = f"tta{cfg.tta_views}"
    val_metrics: dict = {"out_of_fold": True, "folds": oof.per_fold}
    val_metrics[key] = metrics_dict(labels, oof.probs.argmax(1), classes, groups)
    probs = oof.probs
    colour_card = colour_model = None
    if cfg.colour:
        oof_clp = oof.colour_log_probs
        weight, by_weight = choose_colour_weight(oof.probs, oof_clp, labels, groups)
        probs = colour.fuse(oof.probs, oof_clp, weight)
        val_metrics["colour_alone"] = metrics_dict(labels, oof_clp.argmax(1), classes)
        val_metrics[f"{key}_with_colour"] = metrics_dict(labels, probs.argmax(1), classes, groups)
        log(f"colour weight {weight} (out-of-fold accuracy by weight {by_weight})")
        colour_card = colour_card_dict(weight, by_weight)
        colour_model = colour.fit(cfeat, labels, len(classes), seed=cfg.seed)  # every field, for serving
    calibration = calibrate_flags(probs, labels, oof.dist, cfg, log)
    # The served decision is the argmax after the class offsets. "calibrated" is in-sample (offsets
    # fitted on these very predictions); "calibrated_nested" fits them on the other folds for each fold.
    for name, pred in (
        ("calibrated", calibration.probs.argmax(1)),
        ("calibrated_nested", nested_decisions(probs, labels, fold, cfg)),
    ):
        val_metrics[name] = metrics_dict(labels, pred, classes, groups)
        val_metrics[name]["by_fold"] = {
            str(k): float(np.mean(pred[fold == k] == labels[fold == k])) for k in folds.paths
        }
    acc = {k: round(val_metrics[k]["accuracy"], 4) for k in ("calibrated", "calibrated_nested")}
    log(f"out-of-fold accuracy after the class offsets: {acc}")
    val_metrics["flagged_by_class"] = {
        c: float(calibration.flagged[labels == i].mean()) for i, c in enumerate(classes)
    }
    return val_metrics, probs, calibration, colour_card, colour_model


def _data_record(files, labels, cfg: TrainConfig, folds: Folds) -> dict:
    """The card's ``data`` entry: every field is both the training and the (out-of-fold) validation side."""
    n = len(files)
    split_text = (
        f"{len(folds.paths)}-fold cross-validation by source field (ml.data.group_folds, seed {cfg.seed}); "
        "validation figures are out-of-fold, the shipped model was refitted on every field"
    )
    sides = {"train": folds.all_fields, "val": folds.all_fields}
    return data_record(files, labels, folds.groups, list(cfg.classes), SplitRecord(n, n, split_text, sides))


def _card_extra(info: dict, folds: Folds, nucleus_found: float) -> dict:
    """The card's cross-validation entries: the refit's fine-tuning record and each fold model."""
    return {
        "nucleus_found_fraction": nucleus_found,
        "finetune": finetune_record(info),
        "crossval": {
            "folds": len(folds.paths),
            "fold_models": {
                str(k): {"file": p.name, "version": file_hash(p), "complete": folds.infos[k].get("complete")}
                for k, p in folds.paths.items()
            },
        },
    }


def nested_decisions(probs, labels, fold, cfg: TrainConfig) -> np.ndarray:
    """Each fold's decisions under the calibration (temperature, class offsets) fitted on the other
    folds' out-of-fold predictions: an estimate of the calibrated accuracy that is not in-sample."""
    pred = np.zeros(len(labels), np.int64)
    for k in np.unique(fold):
        rest, this = fold != k, fold == k
        t, b = fit_calibration(probs[rest], labels[rest], cfg.class_bias)
        pred[this] = ood.calibrate(probs[this], t, b).argmax(1)
    return pred


def _info(path: Path) -> dict:
    """The ``ml.finetune fit`` record beside a model (``NAME.json`` for NAME.keras / NAME.weights16.npz)."""
    name = path.name.removesuffix(".keras").removesuffix(".weights16.npz")
    p = path.with_name(name + ".json")
    return json.loads(p.read_text()) if p.exists() else {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="TRAIN folder with one sub-folder per class")
    ap.add_argument(
        "--folds-dir", required=True, help="folder with the fold models (fit --fold k --save weights16)"
    )
    ap.add_argument(
        "--model", required=True, help="the .keras model fitted on every fold (fit without --fold)"
    )
    ap.add_argument(
        "--out", required=True, help="output folder for the served model, its card and statistics"
    )
    ap.add_argument("--originals", default=None, help="ORIGINAL folder (default: beside --data)")
    ap.add_argument("--no-colour", action="store_true", help="CNN alone, without the ml.colour opinion")
    args = ap.parse_args(argv)
    if "TEST" in Path(args.data).name.upper() and "TRAIN" not in Path(args.data).name.upper():
        print("refusing to calibrate on a TEST folder", file=sys.stderr)
        return 2
    cfg = TrainConfig()
    cfg.colour = not args.no_colour
    originals = args.originals or os.path.relpath(Path(args.data).resolve().parent / "ORIGINAL")
    if not (Path(originals) / "labels.csv").exists():
        print(f"{originals}: no labels.csv (the folds keep source fields together)", file=sys.stderr)
        return 2
    cfg.originals_dir = originals
    files, labels, skipped = list_class_folders(args.data, list(cfg.classes))
    print(f"{len(files)} images, skipped folders: {skipped}")
    seed_everything(cfg.seed)
    try:
        models = Models(refit=Path(args.model), folds_dir=Path(args.folds_dir))
        crossval(files, labels, cfg, models=models, out=Path(args.out))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
