"""Find white cells in a stained blood smear and crop them at a fixed scale.

The stained nucleus of a white cell is dark purple/blue among pink red cells,
so ``blue - green`` is high on it and low everywhere else (red cells are
pinkish: blue ~= red > green by little; background is pale). The locator
thresholds that index, closes gaps so that the lobes of one nucleus merge,
and keeps connected components big enough to be a nucleus (platelets are
small purple dots). It works on the 320x240 dataset crops and on the 640x480
whole fields of ``ORIGINAL/`` (several cells possible).

Scale: the model is trained on 320x240 images (half the 640x480 camera
field). ``image_scale`` assumes an image shows a field at that magnification
and returns pixels-per-dataset-pixel; pass ``scale=`` explicitly when it is
known. ``crop_cell`` is used identically in training and serving.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ml.fastmorph import binary_closing_disk, binary_opening_disk

REF_WIDTH, REF_HEIGHT = 320, 240
# Colour index thresholds (blue - green, on 0..255 RGB, after smoothing).
NUCLEUS_THRESHOLD = 50.0
MIN_AREA = 120  # pixels at the reference scale; platelets are smaller
CLOSE_RADIUS = 5  # merge lobes of one nucleus (reference pixels)
CROP_SIDE = 144  # square crop side at the reference scale


@dataclass(frozen=True)
class Box:
    x0: int
    y0: int
    x1: int
    y1: int
    score: float  # nucleus "mass": area x mean index excess, in reference pixels

    @property
    def center(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x1, self.y1)


def image_scale(rgb: np.ndarray) -> float:
    """Pixels per reference (320x240 field) pixel, assuming a whole field of view."""
    h, w = rgb.shape[:2]
    return max(w / REF_WIDTH, h / REF_HEIGHT)


def nucleus_index(rgb: np.ndarray) -> np.ndarray:
    """``blue - green`` in float32: high on stained nuclei."""
    a = np.asarray(rgb, dtype=np.float32)
    return a[..., 2] - a[..., 1]


def _disk(r: int) -> np.ndarray:
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= r * r


def locate_cells(
    rgb: np.ndarray,
    scale: float | None = None,
    threshold: float = NUCLEUS_THRESHOLD,
    min_area: float = MIN_AREA,
    max_cells: int = 10,
    min_rel_score: float = 0.2,
) -> list[Box]:
    """Return white-cell boxes (nucleus bounding boxes), best (largest mass) first.

    ``rgb`` is HxWx3 uint8. An empty list means no nucleus-like region. Regions
    whose score is below ``min_rel_score`` x the best one (fragments, platelet
    clumps) are dropped.
    """
    from scipy import ndimage  # SciPy: imported when cells are located (import ml.locate stays cheap)

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        return []
    s = float(scale) if scale else image_scale(rgb)
    # Work at the reference scale (cheap and scale-independent thresholds).
    step = max(1, int(round(s)))
    small = rgb[::step, ::step, :3]
    f = s / step  # remaining scale factor of `small` w.r.t. the reference
    idx = ndimage.uniform_filter(nucleus_index(small), size=3)
    mask = idx > threshold
    r = max(1, int(round(CLOSE_RADIUS * f)))
    mask = binary_closing_disk(mask, r)  # == ndimage.binary_closing(mask, _disk(r)), faster
    mask = binary_opening_disk(mask, 1)  # == ndimage.binary_opening(mask, _disk(1)), faster
    labels, n = ndimage.label(mask)
    if n == 0:
        return []
    idx_l = np.arange(1, n + 1)
    areas = ndimage.sum(mask, labels, idx_l) / (f * f)
    excess = ndimage.sum(np.clip(idx - threshold, 0, None) + threshold, labels, idx_l) / (f * f)
    slices = ndimage.find_objects(labels)
    boxes: list[Box] = []
    for k in np.argsort(-excess):
        if areas[k] < min_area or (boxes and excess[k] / 1000.0 < min_rel_score * boxes[0].score):
            continue
        sl = slices[k]
        y0, y1 = sl[0].start * step, sl[0].stop * step
        x0, x1 = sl[1].start * step, sl[1].stop * step
        boxes.append(Box(int(x0), int(y0), int(x1), int(y1), float(excess[k] / 1000.0)))
        if len(boxes) >= max_cells:
            break
    return boxes


def crop_box(
    rgb: np.ndarray,
    box: Box | None,
    scale: float | None = None,
    side: float = CROP_SIDE,
    centred: bool = False,
) -> tuple[int, int, int, int]:
    """Square crop window (x0, y0, x1, y1) of ``side`` reference pixels around ``box``.

    Centred on the box (image centre when ``box`` is None); unless ``centred``,
    shifted to stay inside the image when the image is large enough.
    """
    h, w = rgb.shape[:2]
    s = float(scale) if scale else image_scale(rgb)
    px = int(round(side * s))
    cx, cy = box.center if box is not None else (w / 2.0, h / 2.0)
    x0 = int(round(cx - px / 2.0))
    y0 = int(round(cy - px / 2.0))
    if not centred:
        x0 = min(max(x0, 0), max(w - px, 0)) if w >= px else x0
        y0 = min(max(y0, 0), max(h - px, 0)) if h >= px else y0
    return x0, y0, x0 + px, y0 + px


MASK_FADE = 0.25  # soft edge of the background mask, as a fraction of its radius
MASK_FILL = 128.0  # neutral grey outside the mask (0 after the backbone's input scaling)


def centre_distance(n: int) -> np.ndarray:
    """(n, n) distance of every pixel of a square crop from its centre, in crop sides."""
    yy, xx = np.mgrid[0:n, 0:n]
    return np.hypot(xx - (n - 1) / 2.0, yy - (n - 1) / 2.0) / n


def mask_background(crop: np.ndarray, radius_fraction: float) -> np.ndarray:
    """Fade everything farther than ``radius_fraction`` x crop side from the centre to grey.

    The white cell sits at the centre of a ``centred`` crop; its neighbours (red
    cells, other white cells) are unique to each field, so a network that sees
    them can learn the field instead of the cell.
    """
    r = centre_distance(crop.shape[0])
    w = np.clip((radius_fraction * (1 + MASK_FADE) - r) / (radius_fraction * MASK_FADE), 0.0, 1.0)[..., None]
    return (crop.astype(np.float32) * w + MASK_FILL * (1 - w)).round().astype(np.uint8)


def crop_cell(
    rgb: np.ndarray,
    box: Box | None = None,
    scale: float | None = None,
    out_size: int | None = None,
    side: float = CROP_SIDE,
    mask_radius: float | None = None,
) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """Crop the (best) white cell at a fixed physical scale.

    Returns ``(crop, cell_box)`` where ``crop`` is uint8 (out_size x out_size
    if given, else the native crop size) and ``cell_box`` the nucleus box used
    (None when no nucleus was found: the image centre is cropped then).
    Regions outside the image are filled by edge replication. With
    ``mask_radius`` (reference pixels) the crop is centred on the nucleus even
    at image edges and the background beyond that radius is masked
    (``mask_background``).
    """
    from PIL import Image

    rgb = np.ascontiguousarray(np.asarray(rgb)[..., :3])
    if box is None:
        boxes = locate_cells(rgb, scale=scale, max_cells=1)
        box = boxes[0] if boxes else None
    x0, y0, x1, y1 = crop_box(rgb, box, scale=scale, side=side, centred=bool(mask_radius))
    h, w = rgb.shape[:2]
    pad = max(0, -x0, -y0, x1 - w, y1 - h)
    src = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="edge") if pad else rgb
    crop = src[y0 + pad : y1 + pad, x0 + pad : x1 + pad]
    if out_size and crop.shape[0] != out_size:
        crop = np.asarray(Image.fromarray(crop).resize((out_size, out_size), Image.Resampling.BILINEAR))
    if mask_radius:
        crop = mask_background(crop, float(mask_radius) / float(side))
    return crop, (box.as_tuple() if box is not None else None)


# Plausibility of a smear: in TRAIN the best nucleus box spans at most ~120 reference px and
# nucleus-coloured pixels cover 2-10 % of the field. A single centred cell (analyzer-style
# framing) covers more, so the limits are generous; beyond them the "nucleus" is not one.
MAX_NUCLEUS_SIDE = 160
MAX_NUCLEUS_FRACTION = 0.30


def smear_check(rgb: np.ndarray, box: Box | None, scale: float | None = None) -> str | None:
    """None when ``rgb`` plausibly shows a stained white cell, else a short reason code."""
    if box is None:
        return "no_cell_found"
    s = float(scale) if scale else image_scale(rgb)
    if max(box.x1 - box.x0, box.y1 - box.y0) / s > MAX_NUCLEUS_SIDE:
        return "not_blood_smear"
    step = max(1, int(round(s)))
    if float((nucleus_index(rgb[::step, ::step, :3]) > NUCLEUS_THRESHOLD).mean()) > MAX_NUCLEUS_FRACTION:
        return "not_blood_smear"
    return None
