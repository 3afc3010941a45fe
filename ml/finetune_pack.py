"""``ml.finetune pack`` (here, with TensorFlow): the training side of ``ml.train``'s split as JPEG
crops, labels and Lite0's ImageNet weights, for a machine that has neither the dataset nor
TensorFlow (``ml.finetune_fit``); ``load_pack`` reads it back there."""

from __future__ import annotations

import dataclasses
import io
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ml.cache import crop_all
from ml.config import TrainConfig
from ml.data import fields_per_class, group_folds, list_class_folders
from ml.model import build_classifier, weights_by_name
from ml.split import source_split

PACK_JPEG_QUALITY = 90  # 4:2:0, like the dataset's own files; ~4 kB per 144 px crop


def pack(
    data_dir: str,
    out: Path,
    cfg: TrainConfig,
    *,
    folds: int | None = None,
    jpeg_quality: int = PACK_JPEG_QUALITY,
    log=print,
) -> dict:
    """Write the training side of the split as JPEG crops + labels + ImageNet init weights.

    With ``folds`` (K-fold cross-validation) every image travels, each with its fold (whole source
    fields, ``ml.data.group_folds``); a fold model never sees its own fold, and ``ml.crossval``
    validates it on that fold here.
    """
    classes = list(cfg.classes)
    files, labels, skipped = list_class_folders(data_dir, classes)
    side = _packed_side(files, labels, cfg, folds)
    tr, fold, groups = side.rows, side.fold, side.groups
    log(f"{len(files)} images; packed {len(tr)} ({side.train_fields} source fields); skipped {skipped}")
    native = dataclasses.replace(cfg, input_size=cfg.crop_side)  # crops at their native resolution
    crops, found = crop_all([files[i] for i in tr], native, 0)
    out.mkdir(parents=True, exist_ok=True)
    offsets = _write_jpegs(crops, out / "crops.bin", jpeg_quality)
    index: dict[str, Any] = {
        "offsets": np.array(offsets, np.int64),
        "labels": labels[tr].astype(np.int64),
        "groups": groups[tr].astype(np.int64),
        "found": found,
    }
    if fold is not None:
        index["folds"] = fold.astype(np.int64)
    np.savez(out / "index.npz", **index)
    init = build_classifier(cfg.backbone, cfg.input_size, len(classes), cfg.dropout)
    np.savez(out / "init_weights.npz", **weights_by_name(init, np.float16, skip=("predictions",)))
    meta = {
        "classes": classes,
        "backbone": cfg.backbone,
        "crop_side_ref_px": cfg.crop_side,
        "n_images": int(len(tr)),
        "per_class": {c: int((labels[tr] == i).sum()) for i, c in enumerate(classes)},
        "source_fields": side.train_fields,
        "split": side.split_text,
        "split_seed": cfg.seed,
        "val_fraction": None if folds else cfg.val_fraction,
        "train_dir": Path(data_dir).name,
        "jpeg_quality": jpeg_quality,
        "folds": folds or None,
        "per_fold": None if fold is None or not folds else _per_fold(fold, folds, groups, labels, classes),
        "nucleus_found_fraction": float(found.mean()),
        "command": "python -m ml.finetune " + " ".join(sys.argv[1:]),
    }
    (out / "pack.json").write_text(json.dumps(meta, indent=2))
    log(f"wrote {out}: {offsets[-1] / 1e6:.1f} MB of crops")
    return meta


class _Side(NamedTuple):
    rows: np.ndarray  # the packed images (indices into the class folders' files)
    fold: np.ndarray | None  # K-fold: the fold of every image
    groups: np.ndarray  # source field of every image
    train_fields: dict  # source fields per class of the packed side
    split_text: str  # how the side was chosen, for pack.json


def _packed_side(files, labels, cfg: TrainConfig, folds: int | None) -> _Side:
    """What travels: the training side of ``ml.train``'s split, or with ``folds`` every image, each
    with its fold (whole source fields, ``ml.data.group_folds``)."""
    groups, val, split_text, sources, _ = source_split(files, labels, cfg)
    if folds:
        fold = group_folds(groups, labels, folds, cfg.seed)
        text = f"{folds}-fold cross-validation by source field (ml.data.group_folds, seed {cfg.seed})"
        return _Side(
            np.arange(len(files)), fold, groups, fields_per_class(groups, labels, list(cfg.classes)), text
        )
    return _Side(np.flatnonzero(~val), None, groups, sources["train"], split_text)


def _write_jpegs(crops, path: Path, quality: int) -> list[int]:
    """The crops as JPEG files one after another in ``path``; returns the byte offsets (n + 1 of them)."""
    from PIL import Image  # PIL: imported when crops are encoded

    offsets = [0]
    with open(path, "wb") as fh:
        for c in crops:
            b = io.BytesIO()
            Image.fromarray(c).save(b, "JPEG", quality=quality, subsampling=2)
            fh.write(b.getvalue())
            offsets.append(offsets[-1] + len(b.getvalue()))
    return offsets


def _per_fold(fold: np.ndarray, k: int, groups: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """``pack.json``'s ``per_fold``: the size and source fields of each fold."""
    return {
        str(f): {
            "n_images": int((fold == f).sum()),
            "source_fields": fields_per_class(groups[fold == f], labels[fold == f], classes),
        }
        for f in range(k)
    }


def load_pack(pack_dir: Path, workers: int = 8) -> tuple[np.ndarray, dict, dict]:
    """``(crops, index, meta)``: decoded crops, the index arrays (labels, groups, folds...), pack.json."""
    from PIL import Image  # PIL: imported when crops are decoded

    with np.load(pack_dir / "index.npz") as z:
        idx = {k: z[k] for k in z.files}
    raw = (pack_dir / "crops.bin").read_bytes()
    off = idx["offsets"]

    def decode(i):
        with Image.open(io.BytesIO(raw[off[i] : off[i + 1]])) as im:
            return np.asarray(im.convert("RGB"))

    with ThreadPoolExecutor(workers) as ex:
        crops = np.stack(list(ex.map(decode, range(len(off) - 1))))
    return crops, idx, json.loads((pack_dir / "pack.json").read_text())
