"""Out-of-distribution calibration: set the "not a blood smear" distance threshold with non-blood images.

The distance threshold from in-distribution data alone (99th percentile x 1.1 of validation
distances) says nothing about where non-blood images fall. This module renders a calibration set of
images that are not white-cell smears, **disjoint from the test fixtures** (``ml/tests/nonblood.py``:
those stay a test): photos shipped by matplotlib and scikit-image that the fixtures do not use,
grey-level images rendered through stain-like colour maps, hue-rotated and purple-tinted photo tiles,
at several scales. Images the locator's plausibility gates already flag need no threshold; for the
others the served model's feature distance is measured, and the threshold is lowered so that each of
them is flagged with a margin, but never so far that more than ``max_in_dist`` of the in-distribution
(out-of-fold) distances would be flagged by distance alone. The confidence threshold then fills the
rest of the flag budget, as before.

    python -m ml.oodcal --bundle var/models/cv      # a bundle written by ml.crossval (needs its
                                                    # val_predictions.npz with ood_distance)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ml import ood
from ml.bundle import bundle_version, load_bundle
from ml.config import TrainConfig
from ml.predictor import Predictor

MARGIN = 0.95  # threshold at most 95 % of the smallest calibration distance
MAX_IN_DIST = 0.02  # ...but never flag more than 2 % of in-distribution images by distance alone
SIZE = (320, 240)  # the reference field
_BASE_RULE = {
    "mahalanobis": "99th percentile x 1.1 of out-of-fold distances",
    "knn": f"the {ood.KNN_QUANTILE:.0%} quantile of out-of-fold distances",
}


def calibration_images(seed: int = 0) -> dict[str, np.ndarray]:
    """Non-blood images (RGB uint8), none of them among the test fixtures' sources."""
    # matplotlib, PIL and scikit-image: imported when the calibration set is rendered. scikit-image is a
    # development requirement only (requirements-dev.txt): serving never imports this module.
    import matplotlib
    from matplotlib import cbook
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(seed)
    sample = Path(cbook._get_data_path("sample_data"))
    photos = {
        "grace_hopper": np.asarray(Image.open(sample / "grace_hopper.jpg").convert("RGB")),
        "blue_pack": np.asarray(Image.open(sample / "Minduka_Present_Blue_Pack.png").convert("RGB")),
        "mpl_logo": np.asarray(Image.open(sample / "logo2.png").convert("RGB")),
        "motorcycle_left": data.stereo_motorcycle()[0],
        "motorcycle_right": data.stereo_motorcycle()[1],
    }
    greys = {
        "horse": data.horse().astype(np.float32),
        "blobs": data.binary_blobs(length=256, rng=seed).astype(np.float32),
        "microaneurysms": data.microaneurysms().astype(np.float32),
        "phantom": data.shepp_logan_phantom().astype(np.float32),
        "faces": np.vstack([np.hstack(list(data.lfw_subset()[i : i + 8])) for i in range(0, 64, 8)]),
    }
    with np.load(sample / "jacksboro_fault_dem.npz") as z:
        greys["elevation"] = z["elevation"].astype(np.float32)
    out: dict[str, np.ndarray] = {}

    def fit(a: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(a).convert("RGB").resize(SIZE, Image.Resampling.BILINEAR))

    for name, a in photos.items():
        out[name] = fit(a)
        for k in range(3):  # tiles at 2-4x zoom, some hue-rotated, some tinted towards stain purple
            h, w = a.shape[:2]
            s = int(min(h, w) / (2 + k))
            y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
            tile = fit(a[y : y + s, x : x + s])
            out[f"{name}_tile{k}"] = tile
            out[f"{name}_tile{k}_hue"] = _hue_rotate(tile, float(rng.uniform(0.2, 0.8)))
            out[f"{name}_tile{k}_purple"] = _tint(tile, (120, 60, 160))
    for name, g in greys.items():
        g = (g - g.min()) / max(float(g.max() - g.min()), 1e-6)
        for cmap in ("Purples", "RdPu", "magma", "viridis"):
            rgb = (matplotlib.colormaps[cmap](g)[..., :3] * 255).astype(np.uint8)
            out[f"{name}_{cmap}"] = fit(rgb)
    return out


def _hue_rotate(rgb: np.ndarray, turn: float) -> np.ndarray:
    from PIL import Image

    hsv = np.asarray(Image.fromarray(rgb).convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(turn * 255)) % 256
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))


def _tint(rgb: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    grey = rgb.astype(np.float32).mean(-1, keepdims=True) / 255.0
    paper = np.array([235, 225, 235], np.float32)
    return (paper * grey + np.array(colour, np.float32) * (1 - grey)).astype(np.uint8)


def outlier_distances(predictor, images: dict[str, np.ndarray]) -> tuple[dict[str, float], list[str]]:
    """Feature distance of each image the locator's gates let through; names the gates already flag."""
    prepared = {n: predictor.prepare(a) for n, a in images.items()}
    passed = [n for n, p in prepared.items() if not p.flag_reason]
    gated = [n for n, p in prepared.items() if p.flag_reason]
    if not passed:
        return {}, gated
    d = predictor.ood_scores([images[n] for n in passed])
    return {n: float(v) for n, v in zip(passed, d, strict=True)}, gated


def choose_ood_threshold(
    in_dist: np.ndarray, base: float, outliers: np.ndarray, margin=MARGIN, max_in_dist=MAX_IN_DIST
):
    """min(base, margin x smallest outlier distance), floored at the (1 - max_in_dist) quantile."""
    t = base if not len(outliers) else min(base, margin * float(np.min(outliers)))
    return float(max(t, np.quantile(in_dist, 1.0 - max_in_dist)))


def apply(bundle: Path, log=print) -> dict:
    """Re-choose the bundle's thresholds with the calibration set; rewrite its card."""
    card_path = bundle / "model_card.json"
    card = json.loads(card_path.read_text())
    val = np.load(bundle / "val_predictions.npz")
    if "ood_distance" not in val.files:
        raise ValueError(f"{bundle}/val_predictions.npz has no ood_distance (a bundle from ml.crossval)")
    in_dist, probs, labels = val["ood_distance"], val["probs"], val["labels"]
    model, card0, stats = load_bundle(bundle / card["model_file"])
    score = ood.method(stats) if stats is not None else "mahalanobis"
    predictor = Predictor(model, card0, stats, bundle / card["model_file"], backend="keras")
    images = calibration_images()
    dist, gated = outlier_distances(predictor, images)
    base = ood.in_distribution_threshold(in_dist, score)
    t = choose_ood_threshold(in_dist, base, np.array(list(dist.values())))
    budget = card["config"].get("max_unidentified_val", TrainConfig.max_unidentified_val)
    conf = ood.calibrate(probs, card["temperature"], ood.card_class_bias(card)).max(1)
    thresholds = ood.choose_thresholds(in_dist, conf, budget, ood_threshold=t, score=score)
    flagged = ood.flagged(in_dist, conf, thresholds)
    missed = sorted(n for n, v in dist.items() if v <= thresholds["ood_distance"])
    card["ood_calibration"] = {
        "images": len(images),
        "flagged_by_locator_gates": len(gated),
        "measured": len(dist),
        "smallest_distance": min(dist.values()) if dist else None,
        "distances": {n: round(v, 4) for n, v in sorted(dist.items(), key=lambda kv: kv[1])},
        "missed_at_threshold": missed,
        "rule": f"min(in-distribution threshold ({score}: {_BASE_RULE[score]}) = {base:.3f}, {MARGIN} x "
        f"smallest calibration distance), floored at the {1 - MAX_IN_DIST:.0%} quantile of out-of-fold "
        "distances",
        "thresholds_before": card["thresholds"],
        "command": "python -m ml.oodcal " + " ".join(sys.argv[1:]),
    }
    card["thresholds"] = thresholds
    card["version"] = bundle_version(card, bundle / card["model_file"])  # new thresholds: new version
    card["validation_flagged_rate"] = float(flagged.mean())
    card["validation_metrics"]["flagged_by_class"] = {
        c: float(flagged[labels == i].mean()) for i, c in enumerate(card["classes"])
    }
    card_path.write_text(json.dumps(card, indent=2))
    log(
        f"{len(images)} calibration images: {len(gated)} gated, {len(dist)} measured, smallest distance "
        f"{card['ood_calibration']['smallest_distance']}; thresholds {thresholds} (were "
        f"{card['ood_calibration']['thresholds_before']}); out-of-fold flagged {flagged.mean():.2%}; "
        f"missed {missed}"
    )
    return card


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--bundle", required=True, help="folder written by ml.crossval (model, card, val_predictions)"
    )
    args = ap.parse_args(argv)
    try:
        apply(Path(args.bundle))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
