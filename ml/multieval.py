"""Held-out figures of a multi-lab bundle per source, through the served predictor
(``python -m ml.multilab evaluate``): accuracy, macro F1 over the classes present, per-class
recall, the flagged share and the silent error rate (wrong and not flagged)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ml.cropcache import load_cache
from ml.metrics import metrics_dict
from ml.predictor import load_predictor
from ml.shift import simulate
from ml.taxonomy import CLASSES


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


def evaluate(
    model_dir: Path, cache_dir: Path, which: list[str], log=print, *, select: np.ndarray | None = None
) -> dict:
    """Test figures per source through the served predictor (the images, not the cache's crops).
    ``select``: a row mask of the cache to read instead of the test splits (e.g. the two-lab recipe's
    validation sides, to judge a leave-one-lab-out change without reading a test split)."""
    _, meta, _ = load_cache(cache_dir)
    pred = load_predictor(model_dir / "hematovision_wbc.keras", backend="keras")
    split = "test" if select is None else "selected"
    out: dict = {"model_version": pred.version, "split": split, "sources": {}}
    chosen = (meta["split"] == "test") if select is None else select
    for s in which:
        rows = np.flatnonzero((meta["source"] == s) & chosen)
        rows = rows[np.isin(np.array(CLASSES)[meta["labels"][rows]], pred.classes)]
        t0 = time.time()
        results = []
        for i in range(0, len(rows), 64):
            results += pred.predict([_read(p) for p in meta["paths"][rows[i : i + 64]]])
        y = np.array([pred.classes.index(CLASSES[k]) for k in meta["labels"][rows]])
        probs = np.array([[r.probabilities[c] for c in pred.classes] for r in results])
        flagged = np.array([r.status == "unidentified" for r in results])
        out["sources"][s] = figures(y, probs, flagged, pred.classes) | {
            "specimen_check": simulate(flagged, probs.argmax(1) != y, pred.specimen_rule),
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
        c = f["specimen_check"]
        log(
            f"  specimen check (specimens of {c['specimen_size']}, base rate {c['base_rate']:.1%}): "
            f"{c['specimens_alarmed']} of {c['specimens']} alarmed, flagged {c['flagged_with_check']:.2%}, "
            f"silent errors {c['silent_error_with_check']:.2%}"
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
    if res.get("split", "test") != "test":
        raise ValueError("only test-split figures go into the card's test_metrics")
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
        "specimen_check",
    )
    card["test_metrics"] = {
        "model_version": card["version"],
        "per_source": {s: {k: m.get(k) for k in keep} for s, m in res["sources"].items()},
        "splits": {"bccd": "BCCD TEST (official, 2,487 images)", "pbc": "PBC split.csv test (3,405 images)"},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path.write_text(json.dumps(card, indent=2))


def _read(path) -> np.ndarray:
    with Image.open(str(path)) as im:
        return np.asarray(im.convert("RGB"))
