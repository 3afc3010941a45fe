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
from pathlib import Path

import numpy as np

from ml import colour, ood, oodcal
from ml.bundle import file_hash
from ml.cache import colour_features_cached, crops_cached, pooled_features
from ml.calibration import calibrate_flags, choose_colour_weight, fit_calibration
from ml.card import BundleContents, colour_card_dict, data_record, finetune_record, write_bundle
from ml.config import TrainConfig, seed_everything
from ml.data import fields_per_class, group_folds, list_class_folders
from ml.metrics import metrics_dict, source_balanced_accuracy
from ml.model import build_classifier, set_weights_by_name
from ml.predictor import tta_predict
from ml.split import source_split


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


def crossval(
    files, labels, cfg: TrainConfig, folds_dir: Path, model_path: Path, out: Path, log=print
) -> dict:
    import keras  # Keras and TensorFlow: imported when the models run
    import tensorflow as tf

    classes = list(cfg.classes)
    model = keras.saving.load_model(model_path, compile=False)
    info = _info(model_path)
    cfg.input_size = int(model.get_layer("resize").output.shape[1])  # the model fixes its input size
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
    log(f"{len(files)} images, {n_folds} folds of {np.bincount(fold).tolist()} images; refit {model_path}")

    crops, found = crops_cached(files, cfg)
    cfeat = colour_features_cached(gdir) if cfg.colour else None
    n = len(files)
    oof_probs = np.zeros((n, len(classes)), np.float32)
    oof_dist = np.zeros(n, np.float32)
    oof_clp = np.zeros((n, len(classes)), np.float32)
    per_fold = {}
    for k, p in paths.items():
        fm = build_classifier(cfg.backbone, cfg.input_size, len(classes), cfg.dropout, imagenet=False)
        set_weights_by_name(fm, np.load(p))
        tr, va = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        both = keras.Model(fm.input, [fm.get_layer("avg_pool").output, fm.output])
        bfn = tf.function(lambda x, m=both: m(x, training=False), reduce_retracing=True)
        train_feats = pooled_features(fm, crops[tr], f"fold {k} train features")
        va_feats, va_probs = tta_predict(bfn, np.asarray(crops[va]), cfg.tta_views)
        stats = ood.fit(train_feats, labels[tr], len(classes))
        oof_probs[va], oof_dist[va] = va_probs, ood.distance(stats, va_feats)
        if cfg.colour:
            cm = colour.fit(cfeat[tr], labels[tr], len(classes), seed=cfg.seed)
            oof_clp[va] = colour.log_probs(cm, cfeat[va])
        pred = va_probs.argmax(1)
        per_fold[str(k)] = {
            "n_images": int(len(va)),
            "source_fields": fields_per_class(groups[va], labels[va], classes),
            "accuracy": float(np.mean(pred == labels[va])),
            "accuracy_per_source_field": source_balanced_accuracy(pred, labels[va], groups[va]),
            "complete": infos[k].get("complete"),
        }
        log(f"fold {k}: {per_fold[str(k)]}")

    key = f"tta{cfg.tta_views}"
    val_metrics = {"out_of_fold": True, "folds": per_fold}
    val_metrics[key] = metrics_dict(labels, oof_probs.argmax(1), classes, groups)
    probs = oof_probs
    colour_card = colour_model = None
    if cfg.colour:
        weight, by_weight = choose_colour_weight(oof_probs, oof_clp, labels, groups)
        probs = colour.fuse(oof_probs, oof_clp, weight)
        val_metrics["colour_alone"] = metrics_dict(labels, oof_clp.argmax(1), classes)
        val_metrics[f"{key}_with_colour"] = metrics_dict(labels, probs.argmax(1), classes, groups)
        log(f"colour weight {weight} (out-of-fold accuracy by weight {by_weight})")
        colour_card = colour_card_dict(weight, by_weight)
        colour_model = colour.fit(cfeat, labels, len(classes), seed=cfg.seed)  # every field, for serving
    calibration = calibrate_flags(probs, labels, oof_dist, cfg, log)
    # The served decision is the argmax after the class offsets. "calibrated" is in-sample (offsets
    # fitted on these very predictions); "calibrated_nested" fits them on the other folds for each fold.
    for name, pred in (
        ("calibrated", calibration.probs.argmax(1)),
        ("calibrated_nested", nested_decisions(probs, labels, fold, cfg)),
    ):
        val_metrics[name] = metrics_dict(labels, pred, classes, groups)
        val_metrics[name]["by_fold"] = {
            str(k): float(np.mean(pred[fold == k] == labels[fold == k])) for k in paths
        }
    acc = {k: round(val_metrics[k]["accuracy"], 4) for k in ("calibrated", "calibrated_nested")}
    log(f"out-of-fold accuracy after the class offsets: {acc}")
    val_metrics["flagged_by_class"] = {
        c: float(calibration.flagged[labels == i].mean()) for i, c in enumerate(classes)
    }

    # The shipped model: OOD statistics of its own training side, which is every field.
    stats = ood.fit(pooled_features(model, crops, "refit train features"), labels, len(classes))
    split_text = (
        f"{n_folds}-fold cross-validation by source field (ml.data.group_folds, seed {cfg.seed}); "
        "validation figures are out-of-fold, the shipped model was refitted on every field"
    )
    data = data_record(
        files, labels, groups, classes, n, n, split_text, {"train": all_fields, "val": all_fields}
    )
    extra = {
        "nucleus_found_fraction": float(found.mean()),
        "finetune": finetune_record(info),
        "crossval": {
            "folds": n_folds,
            "fold_models": {
                str(k): {"file": p.name, "version": file_hash(p), "complete": infos[k].get("complete")}
                for k, p in paths.items()
            },
        },
    }
    cfg.init_model = os.path.relpath(model_path)
    contents = BundleContents(
        stats=stats,
        calibration=calibration,
        val_metrics=val_metrics,
        val_predictions={
            "index": np.arange(n),
            "labels": labels,
            "probs": probs,  # out of fold, with the colour opinion (uncalibrated)
            "cnn_probs": oof_probs,  # out of fold, the CNN alone
            "ood_distance": oof_dist,  # out of fold: each fold model against its own training side
            "groups": groups,
            "fold": fold,
        },
        data=data,
        history=info.get("history", {}),
        card_extra=extra,
        colour_model=colour_model,
        colour_card=colour_card,
        command="python -m ml.crossval " + " ".join(sys.argv[1:]),
    )
    write_bundle(model, cfg, out, contents, log=log)
    # The distance threshold, checked against non-blood images (disjoint from the test fixtures).
    return oodcal.apply(out, log=log)


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
        crossval(files, labels, cfg, Path(args.folds_dir), Path(args.model), Path(args.out))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
