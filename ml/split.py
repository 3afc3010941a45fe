"""The train/validation split of a class-folder data set by source field (whole fields on one side)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ml import colour
from ml.cache import build_cache, original_features
from ml.config import TrainConfig
from ml.data import fields_per_class, group_by_original, group_near_duplicates, group_split


class Split(NamedTuple):
    """Which images validate, and how that was decided (``source_split``)."""

    groups: np.ndarray  # source field (or near-duplicate group) of every image
    val: np.ndarray  # boolean: the image is on the validation side
    split_text: str  # how the split was made, for the card
    sources: dict  # {"train": {class: fields}, "val": {class: fields}}
    gdir: Path  # the cache of unmasked 144 px crops that the grouping and the colour opinion read


def source_split(files, labels, cfg: TrainConfig) -> Split:
    """The train/validation split: whole source fields (or near-duplicate groups) on one side.

    Returns a ``Split`` (a named tuple: ``groups, val, split_text, sources, gdir``). Shared by every
    trainer (``ml.train_lite0``, ``ml.train_full``, ``ml.finish.adopt_model``), ``ml.finetune pack``
    and ``ml.crossval``, so that a model fine-tuned elsewhere is validated on the same fields.
    """
    classes = list(cfg.classes)
    # Grouping always looks at the whole unmasked neighbourhood (the red-cell layout identifies a field);
    # the same unmasked crops feed the colour opinion (colour_features_cached).
    gcfg = dataclasses.replace(
        cfg,
        mask_radius=None,
        crop_side=colour.CROP_SIDE_REF,
        input_size=colour.CROP_SIZE,
        split_block=11,
        aug_views=0,
    )
    gdir = build_cache(files, labels, gcfg)
    gfeat = np.load(gdir / "imagenet_feat_v0.npy")
    if cfg.originals_dir:
        groups = group_by_original(
            gfeat, labels, classes, original_features(gcfg, gdir), cfg.group_similarity
        )
        split_text = (
            "by source field: every image matched to its ORIGINAL field (ImageNet features of the "
            "located cells, 8 dihedral views, same class), majority per near-duplicate component "
            f"(cosine >= {cfg.group_similarity}); whole fields, {cfg.val_fraction:.0%} of each class, to val"
        )
    else:
        groups = group_near_duplicates(gfeat, labels, cfg.group_similarity)
        split_text = (
            "near-duplicate groups (cosine similarity of ImageNet features >= "
            f"{cfg.group_similarity}) kept on one side; {cfg.val_fraction:.0%} of each class to val"
        )
    val = group_split(groups, labels, cfg.val_fraction, cfg.seed, classes)
    sources = {
        side: fields_per_class(groups[mask], labels[mask], classes)
        for side, mask in (("train", ~val), ("val", val))
    }
    return Split(groups, val, split_text, sources, gdir)
