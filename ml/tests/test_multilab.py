"""Lab-independent preprocessing, multi-source data and the multi-lab training path, on tiny data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml import normalize, sources
from ml.taxonomy import CLASSES

BCCD = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "bccd-wbc"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "cells"


def _rgb(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _resized(rgb: np.ndarray, f: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    return np.asarray(Image.fromarray(rgb).resize((round(w * f), round(h * f)), Image.BICUBIC))


@pytest.fixture(scope="module")
def cells() -> dict[str, np.ndarray]:
    return {p.stem: _rgb(p) for p in sorted(FIXTURES.glob("*.jpeg"))}


def test_scale_is_measured_on_the_image_not_taken_from_its_size(cells):
    """The same field at 1.6x the pixels: the red-cell ruler grows with it, the crop stays the cell."""
    for name, rgb in cells.items():
        small, big = normalize.analyse(rgb), normalize.analyse(_resized(rgb, 1.6))
        assert small.scale_source == "red_cells", name
        assert big.rbc_diameter / small.rbc_diameter == pytest.approx(1.6, rel=0.15), name
        a = normalize.canonical_crop(rgb, small, out_size=64).astype(float)
        b = normalize.canonical_crop(_resized(rgb, 1.6), big, out_size=64).astype(float)
        # same cell, same share of the crop: far closer than two different cells' crops
        assert np.abs(a - b).mean() < 25, name


def test_a_crop_of_a_field_keeps_the_fields_scale(cells):
    """Cutting a field down to a tighter frame (as an analyzer does) must not change the cell's size."""
    rgb = cells["NEUTROPHIL_1"]
    whole = normalize.analyse(rgb)
    box = whole.boxes[0]
    cx, cy = (int(v) for v in box.center)
    half = int(1.6 * whole.rbc_diameter)
    tight = rgb[max(0, cy - half) : cy + half, max(0, cx - half) : cx + half]
    assert normalize.analyse(tight).rbc_diameter == pytest.approx(whole.rbc_diameter, rel=0.35)


def test_nucleus_found_without_a_fixed_stain_threshold(cells):
    """A paler, bluer stain (another lab) still gives the same nucleus box."""
    rgb = cells["LYMPHOCYTE_1"]
    pale = np.clip(rgb.astype(float) * [0.85, 0.95, 1.0] + [30, 20, 0], 0, 255).astype(np.uint8)
    a, b = normalize.analyse(rgb).boxes[0], normalize.analyse(pale).boxes[0]
    assert abs(a.center[0] - b.center[0]) < 10
    assert abs(a.center[1] - b.center[1]) < 10


def test_blank_and_black_images_find_no_cell():
    for img in (np.full((240, 320, 3), 230, np.uint8), np.zeros((240, 320, 3), np.uint8)):
        frame = normalize.analyse(img)
        assert frame.boxes == ()
        assert frame.smear_reason == "no_cell_found"
        assert normalize.canonical_crop(img, frame, out_size=32).shape == (32, 32, 3)


def _fake_pbc(root: Path) -> Path:
    rows = []
    for i, (folder, label) in enumerate(sources.PBC_FOLDERS.items()):
        (root / folder).mkdir(parents=True)
        for j, split in enumerate(("train", "train", "test", "exclude")):
            name = f"{label[:3]}_{i}{j}.jpg"
            Image.new("RGB", (36, 36), (200, 150 + j, 190)).save(root / folder / name)
            rows.append({"class": folder, "file": name, "sha256": "x", "split": split})
    split_csv = root / "split.csv"
    with open(split_csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["class", "file", "sha256", "split"])
        w.writeheader()
        w.writerows(rows)
    return split_csv


def test_pbc_source_follows_split_csv(tmp_path):
    split_csv = _fake_pbc(tmp_path)
    items = sources.pbc(tmp_path, split_csv)
    assert len(items) == 8 * 3  # "exclude" rows left out
    assert {it.label for it in items} == set(CLASSES)
    assert sum(it.split == "test" for it in items) == 8
    assert all(it.source == "pbc" for it in items)
    (tmp_path / "platelet" / "PLA_70.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="PLA_70.jpg"):
        sources.pbc(tmp_path, split_csv)


def test_bccd_source_reads_train_and_official_test():
    items = sources.bccd(BCCD)
    assert {it.label for it in items} == {"EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"}
    assert sum(it.split == "test" for it in items) == 2487
    assert sum(it.split == "train" for it in items) == 9957


def test_radial_profile_groups_rotated_copies():
    from ml.cropcache import bccd_groups

    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    a[24:40, 24:40] = (90, 40, 160)
    b = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    b[8:56, 8:56] = (240, 200, 200)
    views = [lambda x, k=k: np.rot90(x, k % 4)[:, ::-1] if k >= 4 else np.rot90(x, k) for k in range(8)]
    crops = np.stack([v(a) for v in views] + [v(b) for v in views])
    g = bccd_groups(crops, np.zeros(16, int))
    assert len(set(g[:8])) == 1
    assert len(set(g[8:])) == 1
    assert g[0] != g[8]


def test_multilab_cache_fit_and_serve_end_to_end(tmp_path):
    """Tiny BCCD run: cache, fit (1 epoch at 48 px), calibrate, bundle, serve through the predictor,
    adapt (``ml.adapt``)."""
    from ml import cropcache, multieval, multifit
    from ml.predictor import load_predictor

    info = cropcache.cache({"bccd": str(BCCD)}, tmp_path / "cache", limit=6, size=64)
    assert info["per_source"] == {"bccd": {"train": 24, "test": 24}}
    assert info["crop_size"] == 64
    assert info["field_px"] == 51
    cfg = multifit.FitConfig(sources=("bccd",), input_size=48, epochs=1, batch=16, tta_views=1)
    card = multifit.fit(tmp_path / "cache", tmp_path / "model", cfg, log=lambda *_: None)
    assert card["classes"] == ["NEUTROPHIL", "EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE"]  # ml.taxonomy order
    assert card["crop"]["method"] == "rbc_scale"
    on_disk = json.loads((tmp_path / "model" / "model_card.json").read_text())
    assert on_disk["version"] == card["version"]
    assert on_disk["data"]["per_source"]["bccd"]["train"] + on_disk["data"]["per_source"]["bccd"]["val"] == 24
    n_train = on_disk["data"]["per_source"]["bccd"]["train"]
    # The shipped out-of-distribution score: k-NN over the training side (all of it here, < 4,000).
    assert on_disk["ood_score"] == {"method": "knn", "k": 10, "training_sample": n_train}
    with np.load(tmp_path / "model" / "ood_stats.npz") as z:
        assert sorted(z.files) == ["knn_bank", "knn_k"]
        assert z["knn_bank"].shape == (n_train, 1280)
    pred = load_predictor(tmp_path / "model" / "hematovision_wbc.keras", backend="keras")
    rgb = _rgb(FIXTURES / "EOSINOPHIL_1.jpeg")
    p = pred.predict_one(rgb)
    assert p.model_version == card["version"]
    assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert p.cell_box is not None
    res = multieval.evaluate(tmp_path / "model", tmp_path / "cache", ["bccd"], log=lambda *_: None)
    f = res["sources"]["bccd"]
    assert f["n_images"] == 24
    assert 0.0 <= f["silent_error"] <= 1 - f["accuracy"] + 1e-9
    check = f["specimen_check"]  # 24 cells: one specimen, judged with the bundle's own rule
    assert (check["specimens"], check["specimens_judged"]) == (1, 1)
    assert check["base_rate"] == pytest.approx(pred.specimen_rule.base_rate)
    assert check["flagged_with_check"] in (f["flagged"], 1.0)
    assert check["silent_error_with_check"] in (f["silent_error"], 0.0)

    # ml.adapt on the bundle (to BCCD's own cells): a new bundle, the adaptation recorded, the
    # source bundle unchanged, an existing --out refused.
    from ml import adapt

    model_bytes = (tmp_path / "model" / "hematovision_wbc.keras").read_bytes()
    args = ["--bundle", str(tmp_path / "model"), "--cache", str(tmp_path / "cache"), "--train-sources",
            "bccd", "--lab", "bccd", "--out", str(tmp_path / "adapted"), "--n", "8"]
    assert adapt.main(args) == 0
    new = json.loads((tmp_path / "adapted" / "model_card.json").read_text())
    assert new["version"] != card["version"]
    assert new["adaptation"] == {
        "method": "ml.adapt (BatchNorm statistics, relative to the training labs')",
        "from_version": card["version"], "lab": "bccd", "train_sources": ["bccd"],
        "n_train_crops": 8, "n_lab_crops": 8, "seed": 0, "layers": 49, "labels_read": False,
    }
    assert (tmp_path / "model" / "hematovision_wbc.keras").read_bytes() == model_bytes
    adapted = load_predictor(tmp_path / "adapted" / "hematovision_wbc.keras", backend="keras")
    assert adapted.version == new["version"]
    assert sum(adapted.predict_one(rgb).probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert adapt.main(args) == 2  # refuses to overwrite

    # multilab refinish: the same network calibrated again with the other score (what older bundles
    # hold); a new version, the source bundle unchanged, an existing --out refused.
    from ml import multilab

    args = ["refinish", "--model", str(tmp_path / "model"), "--cache", str(tmp_path / "cache"),
            "--out", str(tmp_path / "maha"), "--ood-score", "mahalanobis"]
    assert multilab.main(args) == 0
    maha = json.loads((tmp_path / "maha" / "model_card.json").read_text())
    assert maha["ood_score"] == {"method": "mahalanobis", "components": 64}
    assert maha["config"]["ood_score"] == "mahalanobis"
    assert maha["refinished_from"] == card["version"]
    assert maha["version"] != card["version"]
    assert maha["history"] == card["history"]
    assert maha["trained_at"] == card["trained_at"]
    assert (tmp_path / "model" / "hematovision_wbc.keras").read_bytes() == model_bytes
    served = load_predictor(tmp_path / "maha" / "hematovision_wbc.keras", backend="keras")
    assert served.version == maha["version"]  # the rewritten card keeps a version its files hash to
    again = served.predict_one(rgb)
    assert again.probabilities == pytest.approx(p.probabilities, abs=1e-4)  # same network
    assert multilab.main(args) == 2  # refuses to overwrite


def test_training_views_zoom_out_past_the_cached_margin_by_mirroring():
    """A scale jitter wider than the cache margin (log 1.25) shows the cell smaller than the
    cached crop allows, the smear mirrored in; views keep their size."""
    from ml.augment import augment

    yy, xx = np.mgrid[:200, :200]
    crop = np.full((200, 200, 3), 235, np.uint8)
    crop[(yy - 100) ** 2 + (xx - 100) ** 2 < 40**2] = (60, 20, 90)  # a dark nucleus, 80 px across

    def dark_shares(jitter):
        rng = np.random.default_rng(0)
        views = [augment(crop, rng, 96, jitter) for _ in range(60)]
        assert all(v.shape == (96, 96, 3) and v.dtype == np.uint8 for v in views)
        return np.array([(v.mean(2) < 150).mean() for v in views])

    shipped, wide = dark_shares(0.18), dark_shares(0.40)
    # the nucleus fills pi * (40 / 160)^2 = 0.196 of an unzoomed view (160 px = 200 / 1.25)
    assert shipped.min() > 0.12
    assert shipped.max() < 0.30
    assert wide.min() < 0.11  # zoomed out by up to e^0.4 = 1.49: as small as 0.196 / 1.49^2 = 0.088
    assert wide.max() > 0.30
