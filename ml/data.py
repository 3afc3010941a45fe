"""Data: class folders, cell crops, smear augmentation, a leak-free split, tf.data.

TRAIN holds many augmented copies (rotations, flips, shifts) of a few hundred
original smears. The file names (``_<a>_<b>.jpeg``) do not identify the
original (checked: images sharing either number show different cells), so
near-duplicates are grouped by backbone-feature similarity and each group
stays on one side of the train/validation split.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


def list_class_folders(data_dir: str | Path, classes: list[str]) -> tuple[list[Path], np.ndarray, list[str]]:
    """Files and label indices from ``data_dir/<CLASS>/*`` (folder names matched case-insensitively).

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
            if f.suffix.lower() in IMAGE_EXTS:
                files.append(f)
                labels.append(i)
    return files, np.asarray(labels, dtype=np.int64), skipped


def read_rgb(path: str | Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def dihedral(a: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 dihedral transforms (k in 0..7) of an HxWxC array."""
    a = np.rot90(a, k % 4, axes=(0, 1))
    return a[:, ::-1] if k >= 4 else a


def stain_jitter(rgb: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Small stain/colour jitter: per-channel gain and offset, brightness, contrast, saturation."""
    a = rgb.astype(np.float32)
    gain = 1.0 + rng.normal(0, 0.05 * strength, 3)
    offset = rng.normal(0, 6.0 * strength, 3)
    a = a * gain + offset
    mean = a.mean(axis=(0, 1), keepdims=True)
    a = (a - mean) * (1.0 + rng.normal(0, 0.08 * strength)) + mean  # contrast
    grey = a.mean(axis=2, keepdims=True)
    a = (a - grey) * (1.0 + rng.normal(0, 0.1 * strength)) + grey  # saturation
    return np.clip(a, 0, 255).astype(np.uint8)


def cell_crop(rgb: np.ndarray, crop_side: int, out_size: int, rng: np.random.Generator | None = None):
    """Locate the white cell and crop it; with ``rng``, apply smear augmentation.

    Augmentation: scale jitter (+-10 % crop side), small shift, dihedral
    transform, stain jitter. Same locator as serving (``ml.locate.crop_cell``).
    """
    from ml.locate import Box, crop_cell, locate_cells

    boxes = locate_cells(rgb, max_cells=1)
    box = boxes[0] if boxes else None
    side = crop_side
    if rng is not None:
        side = crop_side * float(rng.uniform(0.9, 1.1))
        if box is not None:
            dx, dy = rng.integers(-6, 7, 2)
            box = Box(box.x0 + dx, box.y0 + dy, box.x1 + dx, box.y1 + dy, box.score)
    crop, _ = crop_cell(rgb, box=box, side=side, out_size=out_size)
    if rng is not None:
        crop = stain_jitter(dihedral(crop, int(rng.integers(8))), rng)
    return np.ascontiguousarray(crop), box is not None


def crop_files(files, crop_side: int, out_size: int, seed: int | None = None, progress: bool = True):
    """Crop every file (plain when ``seed`` is None, else augmented). Returns (N,S,S,3) uint8, found."""
    from tqdm import tqdm

    rng = np.random.default_rng(seed) if seed is not None else None
    out = np.zeros((len(files), out_size, out_size, 3), np.uint8)
    found = np.zeros(len(files), bool)
    for i, f in enumerate(tqdm(files, desc="crop", disable=not progress, mininterval=5)):
        out[i], found[i] = cell_crop(read_rgb(f), crop_side, out_size, rng)
    return out, found


def group_near_duplicates(
    features: np.ndarray, labels: np.ndarray, threshold: float, min_group: int = 5
) -> np.ndarray:
    """Group ids for augmented copies of one original (checked visually: a group shows one field).

    Connected components of same-class pairs with cosine similarity >= ``threshold``;
    then every member of a component smaller than ``min_group`` (copies whose features
    drifted, e.g. strong rotations) is joined to the component of its nearest neighbour,
    so stray copies do not leak across the split.
    """
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


def group_split(groups: np.ndarray, labels: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean validation mask: whole groups, about ``val_fraction`` of each class."""
    rng = np.random.default_rng(seed)
    val = np.zeros(len(groups), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        gs = np.unique(groups[idx])
        rng.shuffle(gs)
        target, n = val_fraction * len(idx), 0
        for g in gs:
            if n >= target:
                break
            members = idx[groups[idx] == g]
            if n + len(members) > 1.5 * target and n > 0:
                continue  # skip a giant group rather than overshoot
            val[members] = True
            n += len(members)
    return val


def make_dataset(
    x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool, seed: int, dihedral_aug: bool = False
):
    """tf.data over in-memory arrays (images or cached activations), optional random dihedral flips."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if dihedral_aug:

        def aug(a, b):
            k = tf.random.uniform((), 0, 4, dtype=tf.int32, seed=seed)
            a = tf.image.rot90(a, k)
            a = tf.cond(
                tf.random.uniform((), seed=seed) < 0.5, lambda: tf.image.flip_left_right(a), lambda: a
            )
            return a, b

        ds = ds.map(aug, num_parallel_calls=os.cpu_count() or 1)
    return ds.prefetch(2)
