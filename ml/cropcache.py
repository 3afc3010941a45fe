"""The crop cache of the multi-lab recipe: every image of every source analysed once by
``ml.normalize`` (red-cell ruler, nucleus) and cut as a canonical crop with a margin for zoom
augmentation, plus the near-duplicate groups that keep BCCD TRAIN's augmented copies of one
field on one side of a split. Built by ``python -m ml.multilab cache``."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from functools import partial
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from ml import normalize, sources
from ml.data import group_near_duplicates
from ml.taxonomy import CLASSES

CACHE_SIZE = 200  # cached crop side (px): the canonical field at 160 px (see ``--size``)
CACHE_MARGIN = 1.25  # cached crops span this many canonical fields (room for scale augmentation)
# Radial profiles this similar are one field's copies. On BCCD TRAIN: 0.99 -> 310 groups, the largest
# 1,646 images (distinct fields merged); 0.995 -> 651 groups, largest 879; 0.998 -> 1,230 (copies split).
GROUP_SIMILARITY = 0.995


def _crop_one(path: str, size: int = CACHE_SIZE):
    from PIL import Image  # PIL: imported in the cropping worker processes

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


def centre_field(crops: np.ndarray, size: int) -> np.ndarray:
    """The canonical field (the centre 1/CACHE_MARGIN of cached crops) at ``size`` px: as served."""
    from PIL import Image  # PIL: imported when crops are resized

    n = crops.shape[1]
    side = int(round(n / CACHE_MARGIN))
    o = (n - side) // 2
    return np.stack(
        [
            np.asarray(
                Image.fromarray(np.asarray(c[o : o + side, o : o + side])).resize(
                    (size, size), Image.Resampling.BILINEAR
                )
            )
            for c in crops
        ]
    )
