"""Evaluate a model on class folders through the serving path (locator, TTA, calibration, flags).

    python -m ml.evaluate --data DIR [--model PATH] [--json OUT] [--plots DIR] [--update-card]

Folder names are matched to the model's classes case-insensitively; other
folders are listed as skipped. Accuracy counts every image by its top class,
flagged or not; ``unidentified_rate`` is the share flagged. A file that is not
one decodable image is not counted: it is listed (``unreadable_files`` in the
JSON, with why) and reported on stderr, and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ml.data import list_class_folders
from ml.metrics import metrics_dict
from ml.predictor import ImageDecodeError, ModelLoadError, load_predictor


def evaluate(data_dir, model_path=None, batch: int = 64, progress: bool = True) -> tuple[dict, list[str]]:
    from tqdm import tqdm  # progress bar: imported when an evaluation runs

    pred = load_predictor(model_path)
    files, labels, skipped = list_class_folders(data_dir, pred.classes)
    if not files:
        raise SystemExit(f"no images in class folders under {data_dir} (classes: {pred.classes})")
    y_pred: list[int] = []
    y_true: list[int] = []
    flagged: list[bool] = []
    reasons: dict[str, int] = {}
    unreadable: list[dict] = []
    for i in tqdm(range(0, len(files), batch), desc="evaluate", disable=not progress, mininterval=10):
        chunk = list(zip(files[i : i + batch], labels[i : i + batch], strict=True))
        for (_, label), p in _predict_readable(pred, chunk, unreadable):
            y_true.append(label)
            y_pred.append(pred.classes.index(p.label))
            flagged.append(p.status == "unidentified")
            if p.flag_reason:
                reasons[p.flag_reason] = reasons.get(p.flag_reason, 0) + 1
    if not y_true:
        raise SystemExit(f"no readable images under {data_dir}: {unreadable[:3]}")
    m = metrics_dict(np.asarray(y_true), np.asarray(y_pred), pred.classes)
    m["unidentified_rate"] = float(np.mean(flagged))
    m["unidentified_reasons"] = reasons
    m["unreadable_files"] = unreadable
    m["model_version"] = pred.version
    m["data"] = str(data_dir)
    return m, skipped


def _predict_readable(pred, chunk, unreadable: list):
    """``((path, label), prediction)`` for each readable file of ``chunk``; the others go to
    ``unreadable`` as ``{"path", "error"}`` (one bad file must not stop the batch or the run)."""
    try:
        return list(zip(chunk, pred.predict([path.read_bytes() for path, _ in chunk]), strict=True))
    except (ImageDecodeError, OSError):
        pass  # find which: one at a time
    out = []
    for item in chunk:
        try:
            out.append((item, pred.predict_one(item[0].read_bytes())))
        except (ImageDecodeError, OSError) as exc:
            unreadable.append({"path": str(item[0]), "error": str(exc)})
    return out


def plot_confusion(m: dict, classes: list[str], path: Path) -> None:
    import matplotlib  # matplotlib: imported when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(m["confusion_matrix"])
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), [c[:4] for c in classes])
    ax.set_yticks(range(len(classes)), [c[:4] for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                color="white" if cm[i, j] > cm.max() / 2 else "k",
            )
    ax.set_title(f"accuracy {m['accuracy']:.3f}, macro F1 {m['macro_f1']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default=None, help="path to a .keras model (default: the shipped model)")
    ap.add_argument("--json", default=None, help="write the metrics as JSON here")
    ap.add_argument("--plots", default=None, help="folder for confusion_matrix.png")
    ap.add_argument(
        "--update-card", action="store_true", help="store the metrics as test_metrics in the card"
    )
    args = ap.parse_args(argv)
    if not Path(args.data).is_dir():
        print(f"error: --data {args.data} is not a folder (one folder per class)", file=sys.stderr)
        return 2
    try:
        pred = load_predictor(args.model)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    m, skipped = evaluate(args.data, args.model, progress=sys.stderr.isatty())
    if skipped:
        print(f"skipped folders (not a model class): {', '.join(skipped)}")
    for bad in m["unreadable_files"]:
        print(f"not counted, not one readable image: {bad['path']}: {bad['error']}", file=sys.stderr)
    print(f"model {m['model_version']} on {args.data}: {m['n_images']} images")
    print(
        f"accuracy {m['accuracy']:.4f}  macro F1 {m['macro_f1']:.4f}  "
        f"unidentified {m['unidentified_rate']:.2%}"
    )
    print(f"{'class':<12} {'prec':>6} {'recall':>6} {'f1':>6} {'n':>5}")
    for c, v in m["per_class"].items():
        print(f"{c:<12} {v['precision']:6.3f} {v['recall']:6.3f} {v['f1']:6.3f} {v['support']:5d}")
    print("confusion matrix (rows true, columns predicted):", " ".join(c[:4] for c in pred.classes))
    for c, row in zip(pred.classes, m["confusion_matrix"], strict=True):
        print(f"  {c[:4]:<5}", " ".join(f"{v:5d}" for v in row))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(m, indent=2))
    if args.plots:
        Path(args.plots).mkdir(parents=True, exist_ok=True)
        plot_confusion(m, pred.classes, Path(args.plots) / "confusion_matrix.png")
    if args.update_card:
        card_path = pred.model_path.parent / "model_card.json"
        card = json.loads(card_path.read_text())
        card["test_metrics"] = m
        card_path.write_text(json.dumps(card, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
