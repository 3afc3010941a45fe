"""Data sources: a folder of labelled cell images, how to read its labels, and its fixed test split.

Every image keeps its source, so every figure can be reported per source (per lab). A source that
labels fewer types than ``ml.taxonomy.CLASSES`` (BCCD: four) simply has no images of the others.

* ``bccd``: ``TRAIN/<CLASS>/*`` for training, the official ``TEST/<CLASS>/*`` held out
  (``../shared/datasets/bccd-wbc``; TRAIN holds augmented copies of ~300 fields, so validation
  must be split by source field, see ``ml.cropcache.bccd_groups``).
* ``pbc``: ``<class>/*.jpg`` with ``split.csv`` (``class,file,sha256,split``) fixing train / test /
  exclude (``../shared/datasets/pbc``; images fetched separately, see its README).
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

from ml.taxonomy import CLASSES

PBC_FOLDERS = {
    "neutrophil": "NEUTROPHIL",
    "eosinophil": "EOSINOPHIL",
    "basophil": "BASOPHIL",
    "lymphocyte": "LYMPHOCYTE",
    "monocyte": "MONOCYTE",
    "ig": "IG",
    "erythroblast": "ERYTHROBLAST",
    "platelet": "PLATELET",
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Item:
    path: str
    label: str  # one of ml.taxonomy.CLASSES
    source: str  # "bccd", "pbc", ...
    split: str  # "train" or "test"


def bccd(root: str | Path) -> list[Item]:
    """BCCD's TRAIN (train) and official TEST (test) class folders."""
    root = Path(root)
    items = []
    for folder, split in (("TRAIN", "train"), ("TEST", "test")):
        for cls in CLASSES:
            d = root / folder / cls
            if d.is_dir():
                items += [
                    Item(str(p), cls, "bccd", split)
                    for p in sorted(d.iterdir())
                    if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
                ]
    if not items:
        raise FileNotFoundError(f"{root}: no TRAIN/<CLASS>/ or TEST/<CLASS>/ images")
    return items


def pbc(images: str | Path, split_csv: str | Path) -> list[Item]:
    """PBC's class folders, split by ``split.csv`` (rows marked ``exclude`` are left out)."""
    images = Path(images)
    items = []
    with open(split_csv, newline="") as fh:
        for row in csv.DictReader(fh):
            if row["split"] not in ("train", "test"):
                continue
            p = images / row["class"] / row["file"]
            if not p.is_file():
                raise FileNotFoundError(f"{p}: listed in {split_csv} but missing (see the PBC README)")
            items.append(Item(str(p), PBC_FOLDERS[row["class"]], "pbc", row["split"]))
    return items


def load(spec: dict) -> list[Item]:
    """Items of every source named in ``spec`` (``{"bccd": root, "pbc": [images, split_csv]}``)."""
    items: list[Item] = []
    if spec.get("bccd"):
        items += bccd(spec["bccd"])
    if spec.get("pbc"):
        items += pbc(*spec["pbc"])
    return items


def fingerprint(items: list[Item]) -> str:
    """A short hash of the file list (source, split, label, name, size): names the data a model saw."""
    h = hashlib.sha256()
    for it in items:
        h.update(
            f"{it.source}|{it.split}|{it.label}|{Path(it.path).name}|{Path(it.path).stat().st_size}\n".encode()
        )
    return h.hexdigest()[:16]
