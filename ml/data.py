"""Data: class folders, cell crops, smear augmentation, a leak-free split, tf.data.

TRAIN holds many augmented copies (rotations, flips, shifts) of a few hundred
original smears. The file names (``_<a>_<b>.jpeg``) do not identify the
original (checked: images sharing either number show different cells), so
near-duplicates are grouped by backbone-feature similarity and each group
stays on one side of the train/validation split.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path

import numpy as np

from ml.locate import Box, crop_cell, locate_cells

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


def list_class_folders(data_dir: str | Path, classes: list[str]) -> tuple[list[Path], np.ndarray, list[str]]:
    """Files and label indices from ``data_dir/<CLASS>/*`` (folder names matched case-insensitively;
    hidden files left out).

    Returns (files, labels, skipped_folder_names).
    """
    data_dir = Path(data_dir)
    wanted = {c.lower(): i for i, c in enumerate(classes)}
    files, labels, skipped = [], [], []
    for sub in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        i = wanted.get(sub.name.lower())
        if i is None:
            skipped.append(sub.name)
            continue
        for f in sorted(sub.iterdir()):
            # Hidden files (macOS "._x.jpeg" side files, ".DS_Store") are not images of the data set.
            if f.suffix.lower() in IMAGE_EXTS and not f.name.startswith(".") and f.is_file():
                files.append(f)
                labels.append(i)
    return files, np.asarray(labels, dtype=np.int64), skipped


def read_rgb(path: str | Path) -> np.ndarray:
    from PIL import Image  # PIL: imported in the cropping worker processes

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def dihedral(a: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 dihedral transforms (k in 0..7) of an HxWxC array."""
    a = np.rot90(a, k % 4, axes=(0, 1))
    return a[:, ::-1] if k >= 4 else a


def stain_jitter(rgb: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Small stain/colour jitter: per-channel gain and offset, brightness, contrast, saturation."""
    a: np.ndarray = rgb.astype(np.float32)  # float64 once the float64 gains apply, as trained
    gain = 1.0 + rng.normal(0, 0.05 * strength, 3)
    offset = rng.normal(0, 6.0 * strength, 3)
    a = a * gain + offset
    mean = a.mean(axis=(0, 1), keepdims=True)
    a = (a - mean) * (1.0 + rng.normal(0, 0.08 * strength)) + mean  # contrast
    grey = a.mean(axis=2, keepdims=True)
    a = (a - grey) * (1.0 + rng.normal(0, 0.1 * strength)) + grey  # saturation
    return np.clip(a, 0, 255).astype(np.uint8)


def cell_crop(
    rgb: np.ndarray,
    crop_side: int,
    out_size: int,
    rng: np.random.Generator | None = None,
    mask_radius: float | None = None,
):
    """Locate the white cell and crop it; with ``rng``, apply smear augmentation.

    Augmentation: scale jitter (+-10 % crop side), small shift, dihedral
    transform, stain jitter. Same locator as serving (``ml.locate.crop_cell``).
    """
    boxes = locate_cells(rgb, max_cells=1)
    box = boxes[0] if boxes else None
    side: float = crop_side
    if rng is not None:
        side = crop_side * float(rng.uniform(0.9, 1.1))
        if box is not None:
            dx, dy = rng.integers(-6, 7, 2)
            box = Box(box.x0 + dx, box.y0 + dy, box.x1 + dx, box.y1 + dy, box.score)
    radius = mask_radius * side / crop_side if mask_radius else None  # the mask scales with the crop
    crop, _ = crop_cell(rgb, box=box, side=side, out_size=out_size, mask_radius=radius)
    if rng is not None:
        crop = stain_jitter(dihedral(crop, int(rng.integers(8))), rng)
    return np.ascontiguousarray(crop), box is not None


def group_near_duplicates(
    features: np.ndarray, labels: np.ndarray, threshold: float, min_group: int = 5
) -> np.ndarray:
    """Group ids for augmented copies of one original (checked visually: a group shows one field).

    Connected components of same-class pairs with cosine similarity >= ``threshold``;
    then every member of a component smaller than ``min_group`` (copies whose features
    drifted, e.g. strong rotations) is joined to the component of its nearest neighbour,
    so stray copies do not leak across the split.
    """
    # SciPy: imported when images are grouped (import ml.data stays cheap)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    f = features / (np.linalg.norm(features, axis=1, keepdims=True) + 1e-8)
    n = len(f)
    rows, cols = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        sims = f[idx] @ f[idx].T
        r, cc = np.nonzero(np.triu(sims >= threshold, 1))
        rows.append(idx[r])
        cols.append(idx[cc])
        _, comp = connected_components(
            coo_matrix((np.ones(len(r)), (r, cc)), shape=(len(idx),) * 2), directed=False
        )
        sizes = np.bincount(comp)
        np.fill_diagonal(sims, -np.inf)
        for i in np.flatnonzero(sizes[comp] < min_group):
            s = np.where(comp == comp[i], -np.inf, sims[i])
            rows.append(idx[[i]])
            cols.append(idx[[int(np.argmax(s))]])
    r, cc = np.concatenate(rows), np.concatenate(cols)
    _, comp = connected_components(coo_matrix((np.ones(len(r)), (r, cc)), shape=(n, n)), directed=False)
    return comp


class SplitError(ValueError):
    """The data cannot be split into training and validation sides (too few source fields)."""


def group_split(
    groups: np.ndarray, labels: np.ndarray, val_fraction: float, seed: int, classes=None
) -> np.ndarray:
    """Boolean validation mask: whole groups, about ``val_fraction`` of each class.

    Every class keeps at least one group on the training side; a class with a single group
    cannot be validated without leaking, so it is a ``SplitError``.
    """
    rng = np.random.default_rng(seed)
    val = np.zeros(len(groups), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        gs = np.unique(groups[idx])
        if len(gs) < 2:
            name = classes[c] if classes is not None else f"class {c}"
            raise SplitError(
                f"{name} has {len(idx)} image(s) from a single source field: a validation "
                "split needs at least two fields per class (one for training, one for validation)"
            )
        rng.shuffle(gs)
        target, n = val_fraction * len(idx), 0
        for g in gs[:-1]:  # the last shuffled group always stays on the training side
            if n >= target:
                break
            members = idx[groups[idx] == g]
            if n + len(members) > 1.5 * target and n > 0:
                continue  # skip a giant group rather than overshoot
            val[members] = True
            n += len(members)
    return val


def fields_per_class(groups: np.ndarray, labels: np.ndarray, classes) -> dict:
    """Source fields (groups) per class name."""
    return {c: len(np.unique(groups[labels == i])) for i, c in enumerate(classes)}


def group_folds(groups: np.ndarray, labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold (0..k-1) of every image for K-fold cross-validation: whole groups, each class spread evenly.

    Groups go largest first (ties in a seeded random order) to the fold holding the fewest images of
    the group's class so far, so every fold gets a group of each class that has at least ``k``.
    """
    if k < 2:
        raise ValueError(f"K-fold needs at least 2 folds, got {k}")
    n_classes = int(labels.max()) + 1
    gs, inv = np.unique(groups, return_inverse=True)
    if len(gs) < k:
        raise ValueError(f"{len(gs)} groups cannot fill {k} folds")
    per_group = np.zeros((len(gs), n_classes), np.int64)
    np.add.at(per_group, (inv, labels), 1)
    order = np.random.default_rng(seed).permutation(len(gs))
    order = order[np.argsort(-per_group[order].sum(1), kind="stable")]
    counts = np.zeros((k, n_classes), np.int64)
    group_fold = np.empty(len(gs), np.int64)
    for g in order:
        c = int(per_group[g].argmax())
        f = int(np.lexsort((counts.sum(1), counts[:, c]))[0])  # fewest of this class, then fewest overall
        group_fold[g] = f
        counts[f] += per_group[g]
    return group_fold[inv]


def make_dataset(
    x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool, seed: int, augment: bool = False
):
    """tf.data over in-memory 0..255 RGB images; with ``augment``, a random dihedral flip and a small
    stain jitter (hue, saturation, brightness) per batch."""
    import tensorflow as tf  # TensorFlow: imported when a dataset is made

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if augment:

        def aug(a, b):
            k = tf.random.uniform((), 0, 4, dtype=tf.int32, seed=seed)
            a = tf.image.rot90(a, k)
            a = tf.cond(
                tf.random.uniform((), seed=seed) < 0.5, lambda: tf.image.flip_left_right(a), lambda: a
            )
            a = tf.image.random_hue(a / 255.0, 0.03, seed=seed)
            a = tf.image.random_saturation(a, 0.85, 1.15, seed=seed)
            a = tf.clip_by_value(tf.image.random_brightness(a, 0.05, seed=seed), 0.0, 1.0) * 255.0
            return a, b

        ds = ds.map(aug, num_parallel_calls=os.cpu_count() or 1)
    return ds.prefetch(2)


def read_original_labels(original_dir: str | Path) -> dict[int, str]:
    """``ORIGINAL/labels.csv`` as {image number: category text} for images present on disk."""
    d = Path(original_dir)
    out = {}
    with open(d / "labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            try:
                n = int(row["Image"])
            except (KeyError, TypeError, ValueError):
                continue
            if (d / f"BloodImage_{n:05d}.jpg").exists():
                out[n] = (row.get("Category") or "").upper()
    return out


def original_cell_crops(original_dir: str | Path, crop_side: int, out_size: int, max_cells: int = 3):
    """Every located white cell of every source field, in the 8 dihedral views.

    The 640x480 fields are halved to the 320x240 scale of TRAIN first. Returns
    (crops uint8 (M,S,S,3), image numbers (M,), categories list[str] (M)).
    """
    from PIL import Image  # PIL: imported when the fields are read

    d = Path(original_dir)
    crops, nums, cats = [], [], []
    for n, cat in sorted(read_original_labels(d).items()):
        with Image.open(d / f"BloodImage_{n:05d}.jpg") as im:
            rgb = np.asarray(im.convert("RGB").resize((320, 240), Image.Resampling.BILINEAR))
        for box in locate_cells(rgb, max_cells=max_cells):
            c, _ = crop_cell(rgb, box=box, side=crop_side, out_size=out_size)
            for k in range(8):
                crops.append(np.ascontiguousarray(dihedral(c, k)))
                nums.append(n)
                cats.append(cat)
    return np.stack(crops), np.array(nums), cats


def group_by_original(
    features: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    originals: tuple[np.ndarray, np.ndarray, list[str]],
    threshold: float = 0.92,
) -> np.ndarray:
    """Source field (``ORIGINAL`` image number) of every training image.

    ``originals``: ``(features, numbers, categories)`` of the cells located in the ORIGINAL fields
    (every dihedral view): pooled ImageNet features (M, D), field number and the field's label text
    of each, as ``ml.cache.original_features`` returns them.

    TRAIN holds rotated/flipped/shifted copies of a few hundred source fields.
    Each image is matched to the source field whose located cells (any of 8
    dihedral views) have the most similar ImageNet features, among fields whose
    label lists the image's class. Matching single images is noisy for strongly
    shifted copies, so every near-duplicate component (``group_near_duplicates``
    at ``threshold``) then takes the majority source of its members. Images
    sharing a source field must stay on one side of a split.
    """

    def unit(a):
        a = np.asarray(a, np.float32)
        return a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-8)

    orig_features, orig_numbers, orig_categories = originals
    sims = unit(features) @ unit(orig_features).T  # (N, M)
    fields = np.unique(orig_numbers)
    col = np.searchsorted(fields, orig_numbers)
    best_per_field = np.full((len(features), len(fields)), -2.0, np.float32)
    np.maximum.at(best_per_field.T, col, sims.T)
    cat_of = {n: c for n, c in zip(orig_numbers, orig_categories, strict=True)}
    allowed = np.array([[cls in cat_of[f] for f in fields] for cls in classes])  # (C, F)
    masked = np.where(allowed[labels], best_per_field, -3.0)
    source = fields[masked.argmax(1)]
    comps = group_near_duplicates(features, labels, threshold, min_group=1)
    for g in np.unique(comps):
        members = comps == g
        source[members] = Counter(source[members].tolist()).most_common(1)[0][0]
    return source
