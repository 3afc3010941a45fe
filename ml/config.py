"""Training configuration: one dataclass, every knob commented."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class TrainConfig:
    seed: int = 1337  # numpy / tf / python seeds; split and augmentation draws
    train_seed: int | None = None  # initialisation + batch order only (None: ``seed``); same split and cache
    backbone: str = "efficientnet_lite0"  # or "mobilenet_v2" (needs ImageNet weights file or Keras cache)
    backbone_weights: str | None = None  # weights file for mobilenet_v2 (Lite0 reads the pip package)
    classes: tuple[str, ...] = ("EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL")
    # Cell crop: square of `crop_side` reference pixels (320x240 field scale) around the located nucleus,
    # resized inside the model to `input_size` (the 320x240 images hold ~100 px cells).
    crop_side: int = 144
    input_size: int = 192
    # Background mask: with a radius (reference px) the crop is centred on the nucleus and everything
    # beyond the radius fades to grey, so the network sees the cell, not its field's red-cell layout.
    mask_radius: float | None = None
    # Cached training: activations entering block `split_block` are computed once by the frozen lower
    # blocks (two views per image: plain + augmented), and blocks split_block..15 + head are fine-tuned.
    split_block: int = 11
    aug_views: int = 1  # augmented views cached per training image (in addition to the plain one)
    # Phase 1: head only on frozen pooled features (base called with training=False).
    head_epochs: int = 12
    head_lr: float = 1e-3
    # Phase 2: fine-tune the top blocks + head at a low rate, BatchNorm frozen.
    finetune_epochs: int = 6
    finetune_lr: float = 2e-4
    batch_size: int = 32
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    dropout: float = 0.3
    # Validation: near-duplicate groups (augmented copies of one original) are kept together.
    val_fraction: float = 0.2
    # Source fields (ORIGINAL/): when given, the split keeps all copies of one source field together.
    originals_dir: str | None = None
    group_similarity: float = 0.92  # cosine similarity linking two images into one group
    # Colour second opinion (ml.colour): logistic regression on colour statistics, fused with the CNN.
    colour: bool = True
    # A whole model trained elsewhere (ml.finetune on a GPU): ml.train only validates, calibrates, cards it.
    init_model: str | None = None
    # Serving: test-time augmentation (dihedral views averaged) and "unidentified" flags.
    tta_views: int = 4  # 1, 2, 4 or 8 dihedral views
    max_unidentified_val: float = 0.03  # target fraction of validation flagged (confidence + OOD)
    # Calibration: one offset per class with the temperature (BCTS), fitted by NLL on held-out cells.
    class_bias: bool = True
    name: str = "hematovision_wbc"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["classes"] = list(self.classes)
        return d


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and Keras's (with its backend's) random generators, from one seed."""
    import keras  # Keras: imported when training starts (``import ml.config`` stays cheap)

    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
