"""``ml.normalize`` gives, bit for bit, the outputs recorded with the code the models were trained on.

``ml/tests/data/normalize_golden.json`` was written (``python -m ml.tests.test_normalize_speed_identity
--write``) by ``ml.normalize`` as of commit f424b1d, before it was made faster: for each image, the
``Frame`` of ``analyse`` (max_cells 1 and 10: every float by ``repr``), sha256 prefixes of
``canonical_crop`` at the served and cached sizes, and of every ``cell_windows`` window. The images:
synthetic smears drawn here with integer arithmetic only (no decoder, no random generator), the
fixture cells, and BCCD TEST cells and ORIGINAL fields from ``../shared/datasets/bccd-wbc``
(skipped when absent). A decoded JPEG whose pixels differ from those recorded (another libjpeg) is
skipped, not failed: the check is about ``ml.normalize``, not the decoder.

Regenerate only when a change of preprocessing is intended (the served model must then be retrained).
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from ml import normalize

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "data" / "normalize_golden.json"
FIXTURES = HERE / "fixtures" / "cells"
BCCD = HERE.parents[2] / "shared" / "datasets" / "bccd-wbc"
CLASSES = ("EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL")


def _sha(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return hashlib.sha256(f"{a.dtype}{a.shape}".encode() + a.tobytes()).hexdigest()[:12]


def _frame(f: normalize.Frame) -> list:
    boxes = [[b.x0, b.y0, b.x1, b.y1, repr(float(b.score))] for b in f.boxes]
    return [repr(float(f.rbc_diameter)), f.scale_source, boxes, f.smear_reason]


def record(rgb: np.ndarray) -> dict:
    """Everything of ``ml.normalize`` that training or serving reads, for one image."""
    one = normalize.analyse(rgb)
    many = normalize.analyse(rgb, max_cells=10)
    crops = [
        _sha(normalize.canonical_crop(rgb, one, out_size=112)),
        _sha(normalize.canonical_crop(rgb, one, out_size=160)),
        _sha(normalize.canonical_crop(rgb, one, out_size=200, field_rbc=normalize.FIELD_RBC * 1.25)),
    ]
    windows = [[b.as_tuple(), _sha(w)] for b, w in normalize.cell_windows(rgb)]
    return {
        "input": _sha(rgb),
        "frame": _frame(one),
        "frame10": _frame(many),
        "crops": crops,
        "windows": windows,
    }


# ----------------------------------------------------------------------------- synthetic smears


def _disc(yy, xx, cy, cx, r):
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _smear(h: int, w: int, rbc_r: int, seed: int, nucleus: int = 1, rbc: bool = True, dark: bool = False):
    """A drawn smear: pale background, red cells with pallor, purple multi-lobed nuclei, and
    deterministic integer texture (a linear congruential pattern, the same on every platform)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.int64)
    noise = ((yy * 7919 + xx * 104729 + seed * 15485863) * 2654435761 >> 7) % 17 - 8
    img = np.zeros((h, w, 3), np.int64)
    img[...] = (228, 222, 236) if not dark else (200, 170, 150)
    if rbc:
        step = int(rbc_r * 2.3)
        for i, cy in enumerate(range(rbc_r, h, step)):
            for j, cx in enumerate(range(rbc_r + (i % 2) * step // 2, w, step)):
                if (i * 5 + j * 3 + seed) % 7 == 0:
                    continue
                r = rbc_r + (i + 2 * j + seed) % 3 - 1
                cell = _disc(yy, xx, cy, cx, r)
                img[cell] = (205, 120, 135) if not dark else (170, 90, 80)
                img[cell & _disc(yy, xx, cy, cx, r // 3)] = (220, 175, 185) if not dark else (185, 130, 120)
    for k in range(nucleus):
        cy, cx = (
            h // 2 + (k * 97 + seed * 13) % (h // 3) - h // 6,
            w // 2 + (k * 61 + seed * 29) % (w // 3) - w // 6,
        )
        big = _disc(yy, xx, cy, cx, int(rbc_r * 1.3))
        img[big] = (190, 175, 215) if not dark else (160, 120, 110)
        for lobe in range(3):
            ly, lx = cy + (lobe - 1) * rbc_r // 2, cx + ((lobe * 7 + seed) % 5 - 2) * rbc_r // 5
            img[_disc(yy, xx, ly, lx, max(2, rbc_r // 2))] = (95, 55, 150) if not dark else (60, 35, 30)
    return np.clip(img + noise[..., None], 0, 255).astype(np.uint8)


@functools.cache
def synthetic() -> dict[str, np.ndarray]:
    s = {
        "smear_small": _smear(120, 160, 9, 1),
        "smear_bccd": _smear(240, 320, 18, 2),
        "smear_pbc": _smear(363, 360, 30, 3),
        "smear_field": _smear(480, 640, 18, 4, nucleus=3),
        "smear_big": _smear(900, 1200, 40, 5, nucleus=2),
        "smear_dark_stain": _smear(240, 320, 18, 6, dark=True),
        "bare_nucleus": _smear(240, 320, 18, 7, rbc=False),
        "no_nucleus": _smear(240, 320, 18, 8, nucleus=0),
        "tall": _smear(400, 150, 12, 9),
        "tiny": _smear(20, 24, 3, 10),
        "too_small": _smear(12, 40, 3, 11),
        "blank": np.full((200, 200, 3), 235, np.uint8),
        "black": np.zeros((100, 120, 3), np.uint8),
    }
    base = s["smear_bccd"]
    corner = base.copy()
    yy, xx = np.mgrid[0:240, 0:320]
    corner[(yy + xx < 90) | (yy - xx > 120)] = 0  # rotated-image black corners
    s["black_corners"] = corner
    s["mostly_black"] = np.where((xx < 280)[..., None], 0, base).astype(np.uint8)
    s["rgba"] = np.dstack([base, np.full((240, 320), 255, np.uint8)])
    s["swapped_channels"] = np.ascontiguousarray(base[..., ::-1])
    s["transposed"] = np.ascontiguousarray(base.transpose(1, 0, 2))
    s["dim"] = (base.astype(np.uint16) * 3 // 5).astype(np.uint8)
    s["flat_purple"] = np.full((150, 150, 3), (95, 55, 150), np.uint8)
    s["stripes"] = np.where(((xx // 6) % 2 == 0)[..., None], (95, 55, 150), (228, 222, 236)).astype(np.uint8)
    fine = (
        np.where((xx % 7 < 3)[..., None], (95, 55, 150), (228, 222, 236))
        + ((yy * 7 + xx * 13) % 9 - 4)[..., None]
    )
    s["fine_stripes"] = fine.clip(0, 255).astype(np.uint8)  # closed "nuclei" over half the image: not a smear
    return s


def _bccd_paths() -> list[Path]:
    paths = []
    for c in CLASSES:
        paths += sorted((BCCD / "TEST" / c).glob("*.jpeg"))[::53][:9]
    paths += sorted((BCCD / "ORIGINAL").glob("*.jpg"))[::37][:10]
    return paths


def _read(p: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(p) as im:
        return np.asarray(im.convert("RGB"))


def images() -> dict[str, np.ndarray | Path]:
    out: dict = {f"synthetic/{k}": v for k, v in synthetic().items()}
    out.update({f"fixture/{p.stem}": p for p in sorted(FIXTURES.glob("*.jpeg"))})
    out.update({f"bccd/{p.parent.name}/{p.name}": p for p in _bccd_paths()})
    return out


# ----------------------------------------------------------------------------- tests


def _golden() -> dict:
    return json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}


def test_golden_covers_synthetic_fixtures_and_bccd():
    g = _golden()
    assert sum(k.startswith("synthetic/") for k in g) >= 20
    assert sum(k.startswith("fixture/") for k in g) >= 12
    assert sum(k.startswith("bccd/") for k in g) >= 40


@pytest.mark.parametrize("name", sorted(_golden()))
def test_outputs_bit_identical_to_golden(name):
    want = _golden()[name]
    if name.startswith("synthetic/"):
        rgb = synthetic()[name.split("/", 1)[1]]
    else:
        path = FIXTURES / (name.split("/", 1)[1] + ".jpeg") if name.startswith("fixture/") else None
        if path is None:
            _, cls, fname = name.split("/")
            path = BCCD / ("ORIGINAL" if cls == "ORIGINAL" else f"TEST/{cls}") / fname
        if not path.exists():
            pytest.skip(f"{path} absent")
        rgb = _read(path)
        if _sha(rgb) != want["input"]:
            pytest.skip("this JPEG decoder gives other pixels than the recorded ones")
    got = json.loads(json.dumps(record(rgb)))  # tuples as lists, as in the file
    assert got == want


if __name__ == "__main__" and "--write" in sys.argv:
    recs = {}
    for name, src in images().items():
        recs[name] = record(_read(src) if isinstance(src, Path) else src)
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(recs, separators=(",", ":"), sort_keys=True) + "\n")
    print(f"{len(recs)} images -> {GOLDEN} ({GOLDEN.stat().st_size} bytes)")
