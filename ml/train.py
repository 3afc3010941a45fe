"""Train the white-cell classifier.

    python -m ml.train --data ../shared/datasets/bccd-wbc/TRAIN --out DIR [--backbone efficientnet_lite0]

EfficientNet-Lite0 path (2 CPUs friendly):
 1. locate + crop every cell (plain view, plus ``aug_views`` augmented views);
 2. run the frozen lower blocks once and cache their activations (var/ml_cache);
 3. group near-duplicates by ImageNet-feature similarity, split train/val by group;
 4. phase 1: head on the frozen base (pooled features, base in inference mode);
 5. phase 2: fine-tune blocks >= ``split_block`` + head on the cached
    activations at a low rate with BatchNorm frozen (random dihedral flips of
    the activation maps as cheap extra augmentation);
 6. temperature scaling + "unidentified" thresholds on validation;
 7. copy weights into the whole serving model (resize + rescale inside), save
    ``DIR/<name>.keras``, ``DIR/model_card.json``, ``DIR/training_curves.png``.
TEST is never read here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

from ml.config import TrainConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_ROOT = REPO_ROOT / "var" / "ml_cache"


def seed_everything(seed: int) -> None:
    import keras

    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)


def _crop_job(args):
    from ml.data import cell_crop, read_rgb

    path, crop_side, size, seed = args
    rng = np.random.default_rng(seed) if seed is not None else None
    return cell_crop(read_rgb(path), crop_side, size, rng)


def crop_all(files, cfg: TrainConfig, view: int, workers: int = 2) -> tuple[np.ndarray, np.ndarray]:
    from multiprocessing import Pool

    from tqdm import tqdm

    jobs = [(str(f), cfg.crop_side, cfg.input_size, None if view == 0 else cfg.seed * 1000003 + view * 100003 + i)
            for i, f in enumerate(files)]
    out = np.zeros((len(files), cfg.input_size, cfg.input_size, 3), np.uint8)
    found = np.zeros(len(files), bool)
    with Pool(workers) as pool:
        for i, (c, ok) in enumerate(tqdm(pool.imap(_crop_job, jobs, chunksize=32), total=len(jobs),
                                         desc=f"crop view {view}", mininterval=10)):
            out[i], found[i] = c, ok
    return out, found


def run_batched(fn, x: np.ndarray, batch: int = 64, desc: str = "forward", dtype=np.float16) -> np.ndarray:
    from tqdm import tqdm

    outs = []
    for i in tqdm(range(0, len(x), batch), desc=desc, mininterval=10):
        outs.append(np.asarray(fn(x[i:i + batch].astype(np.float32))).astype(dtype))
    return np.concatenate(outs)


def build_cache(files, labels, cfg: TrainConfig) -> Path:
    """Crops, lower-block activations and ImageNet pooled features, cached on disk."""
    import tensorflow as tf

    from ml.model import build_lite0_lower, build_lite0_upper

    key = f"{cfg.backbone}_c{cfg.crop_side}_s{cfg.input_size}_b{cfg.split_block}_seed{cfg.seed}_n{len(files)}"
    d = CACHE_ROOT / key
    d.mkdir(parents=True, exist_ok=True)
    (d / "files.json").write_text(json.dumps({"files": [str(f) for f in files], "labels": labels.tolist()}))
    lower = None
    for view in range(1 + cfg.aug_views):
        if (d / f"act_v{view}.npy").exists():
            continue
        crops, found = crop_all(files, cfg, view)
        np.save(d / f"found_v{view}.npy", found)
        if view == 0:
            np.save(d / "crops_v0.npy", crops)
        if lower is None:
            lower = build_lite0_lower(cfg.input_size, cfg.split_block)
            lower_fn = tf.function(lambda x: lower(x, training=False))
        act = run_batched(lower_fn, crops, desc=f"lower blocks view {view}")
        if view == 0:
            feat_model = build_lite0_upper(act.shape[1:], cfg.split_block, len(cfg.classes), 0.0, features_only=True)
            feat_fn = tf.function(lambda x: feat_model(x, training=False))
            np.save(d / "imagenet_feat_v0.npy", run_batched(feat_fn, act, desc="imagenet features", dtype=np.float32))
        np.save(d / f"act_v{view}.npy", act)
        del crops, act
    return d
