"""The training cache: cell crops, lower-block activations and pooled features of a data set,
computed once per crop setting and kept on disk (``var/ml_cache``), so that training on 2 CPUs runs
the frozen part of the network once."""

from __future__ import annotations

import hashlib
import json
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from ml import colour
from ml.config import TrainConfig
from ml.data import cell_crop, original_cell_crops, read_rgb
from ml.model import build_lite0_lower, build_lite0_upper

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_ROOT = REPO_ROOT / "var" / "ml_cache"


def _crop_job(args):
    path, crop_side, size, seed, mask_radius = args
    rng = np.random.default_rng(seed) if seed is not None else None
    return cell_crop(read_rgb(path), crop_side, size, rng, mask_radius)


def crop_all(files, cfg: TrainConfig, view: int, workers: int = 2) -> tuple[np.ndarray, np.ndarray]:
    from tqdm import tqdm  # progress bars: imported when a cache is built

    jobs = [
        (
            str(f),
            cfg.crop_side,
            cfg.input_size,
            None if view == 0 else cfg.seed * 1000003 + view * 100003 + i,
            cfg.mask_radius,
        )
        for i, f in enumerate(files)
    ]
    out = np.zeros((len(files), cfg.input_size, cfg.input_size, 3), np.uint8)
    found = np.zeros(len(files), bool)
    with Pool(workers) as pool:
        for i, (c, ok) in enumerate(
            tqdm(
                pool.imap(_crop_job, jobs, chunksize=32),
                total=len(jobs),
                desc=f"crop view {view}",
                mininterval=10,
            )
        ):
            out[i], found[i] = c, ok
    return out, found


def run_batched(fn, x: np.ndarray, batch: int = 64, desc: str = "forward", dtype=np.float16) -> np.ndarray:
    from tqdm import tqdm  # progress bars: imported when a cache is built

    outs = []
    for i in tqdm(range(0, len(x), batch), desc=desc, mininterval=10):
        outs.append(np.asarray(fn(x[i : i + batch].astype(np.float32))).astype(dtype))
    return np.concatenate(outs)


def cache_dir(cfg: TrainConfig, files) -> Path:
    """Where ``build_cache`` (and ``crops_cached``) keep the crops of ``files`` for ``cfg``.

    The key names the crop settings and identifies the images (class folder, name and size of
    each file), so a changed or replaced image never reuses another data set's cache.
    """
    ident = hashlib.sha256()
    for f in files:
        f = Path(f)
        ident.update(f"{f.parent.name}/{f.name}:{f.stat().st_size}\n".encode())
    key = (
        f"{cfg.backbone}_c{cfg.crop_side}_s{cfg.input_size}_b{cfg.split_block}_seed{cfg.seed}"
        f"_n{len(files)}_{ident.hexdigest()[:12]}"
    )
    return CACHE_ROOT / (key + (f"_m{cfg.mask_radius}" if cfg.mask_radius else ""))


def build_cache(files, labels, cfg: TrainConfig) -> Path:
    """Crops, lower-block activations and ImageNet pooled features, cached on disk."""
    import tensorflow as tf  # TensorFlow: imported when a cache is built (``import ml.cache`` stays cheap)

    d = cache_dir(cfg, files)
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
            lower_fn = tf.function(lambda x, m=lower: m(x, training=False))
        act = run_batched(lower_fn, crops, desc=f"lower blocks view {view}")
        if view == 0:
            feat_model = build_lite0_upper(
                act.shape[1:], cfg.split_block, len(cfg.classes), 0.0, features_only=True
            )
            feat_fn = tf.function(lambda x, m=feat_model: m(x, training=False))
            np.save(
                d / "imagenet_feat_v0.npy",
                run_batched(feat_fn, act, desc="imagenet features", dtype=np.float32),
            )
        np.save(d / f"act_v{view}.npy", act)
        del crops, act
    return d


def original_features(cfg: TrainConfig, folder: Path):
    """ImageNet pooled features of the cells in the ORIGINAL source fields (cached)."""
    import tensorflow as tf  # TensorFlow: imported when a cache is built

    f_feat, f_meta = folder / "original_feat.npy", folder / "original_meta.json"
    if not f_feat.exists():
        if not cfg.originals_dir:
            raise ValueError("original_features needs cfg.originals_dir (the ORIGINAL fields)")
        crops, nums, cats = original_cell_crops(cfg.originals_dir, cfg.crop_side, cfg.input_size)
        lower = build_lite0_lower(cfg.input_size, cfg.split_block)
        upper = build_lite0_upper(
            lower.output.shape[1:], cfg.split_block, len(cfg.classes), 0.0, features_only=True
        )
        fn = tf.function(lambda x: upper(lower(x, training=False), training=False))
        np.save(f_feat, run_batched(fn, crops, desc="original fields", dtype=np.float32))
        f_meta.write_text(json.dumps({"numbers": nums.tolist(), "categories": cats}))
    meta = json.loads(f_meta.read_text())
    return np.load(f_feat), np.array(meta["numbers"]), meta["categories"]


def colour_features_cached(gdir: Path) -> np.ndarray:
    """``ml.colour`` features of the unmasked 144 px crops cached in ``gdir`` (computed once)."""
    path = gdir / "colour_v0.npy"
    if not path.exists():
        crops = np.load(gdir / "crops_v0.npy", mmap_mode="r")
        if crops.shape[1] != colour.CROP_SIZE:
            raise ValueError(f"colour features need {colour.CROP_SIZE} px crops, cache has {crops.shape[1]}")
        feats = [colour.colour_features(np.asarray(crops[i : i + 500])) for i in range(0, len(crops), 500)]
        np.save(path, np.concatenate(feats))
    return np.load(path)


def pooled_features(model, crops: np.ndarray, desc: str) -> np.ndarray:
    """The model's pooled features (one plain view) of uint8 crops, float32: what ``ood.fit`` reads."""
    import keras  # Keras and TensorFlow: imported when a model runs
    import tensorflow as tf

    pooled = keras.Model(model.input, model.get_layer("avg_pool").output)
    fn = tf.function(lambda x: pooled(x, training=False), reduce_retracing=True)
    return run_batched(fn, crops, desc=desc, dtype=np.float32)


def crops_cached(files, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Plain served crops (``crop_side`` reference px resized to ``input_size``), cached on disk."""
    d = cache_dir(cfg, files)  # build_cache's folder: its plain crops are these
    if not (d / "crops_v0.npy").exists():
        d.mkdir(parents=True, exist_ok=True)
        crops, found = crop_all(files, cfg, 0)
        np.save(d / "found_v0.npy", found)
        np.save(d / "crops_v0.npy", crops)
    return np.load(d / "crops_v0.npy", mmap_mode="r"), np.load(d / "found_v0.npy")
