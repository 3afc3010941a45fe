"""Lab-independent preprocessing: find the white cell, measure the image's own scale, crop canonically.

Labs differ in stain, camera and framing: BCCD's camera fields show a lymphocyte nucleus ~52 px
across, PBC's analyzer crops ~96 px, other cameras anything from 40 to 110 px. The fault of the
first model was to take the scale from the image's pixel size (``ml.locate.image_scale``), which
is right for one camera only. Here the scale comes from the image's content:

* **Red cells are the ruler.** A normal red cell is ~7.5 um across in every lab. Pixels that
  differ from the background colour (not assumed: the brightest 15 % of the image) and are not
  nucleus are red-cell candidates; holes (central pallor) are filled and the largest inscribed
  radius of each candidate region measured. The 90th percentile of those radii gives the red-cell
  diameter in pixels, robust to cut and ring-shaped cells;
  an implausible measure (fragments of very pale cells) falls back to the typical framing.
* **The nucleus without one stain.** Nuclei absorb green light more than blue (purple, blue
  stains) and are the darkest parts of the smear (red-brown stains). The index
  ``(blue - green) + 0.5 x darkness`` is thresholded per image (Otsu over the foreground, never a
  fixed value), closed at a tenth of a red cell so the lobes of one nucleus merge, and every
  component larger than a small platelet is a candidate, largest stained mass first.
* **One canonical crop.** A square of ``FIELD_RBC`` red-cell diameters centred on the nucleus,
  padded by edge replication at image borders, resampled to the network's input. A cell fills
  the same share of the crop whatever the camera.

``analyse`` and ``canonical_crop`` are used identically by training (``ml.multilab``) and
serving (``ml.predictor`` for cards whose crop method is ``"rbc_scale"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ml.fastmorph import binary_closing_disk, dilate_cross, erode_cross, fill_holes
from ml.locate import Box

WORK_SIDE = 400  # images are analysed on a copy at most this many pixels on the longer side
FIELD_RBC = 3.5  # canonical crop side, in red-cell diameters (a large monocyte spans ~2.7)
CLOSE_RBC = 0.1  # nucleus lobes closer than this (red-cell diameters) merge
MIN_NUCLEUS_RBC2 = 0.02  # smallest candidate nucleus area, in red-cell areas (a small platelet)
MIN_REL_SCORE = 0.2  # further cells of a field: stained mass at least this share of the best one
FALLBACK_FIELD_RBC = 5.5  # no red cell measurable: assume the short side spans this many
MIN_FIELD_RBC, MAX_FIELD_RBC = 2.0, 9.0  # a measured red cell is trusted within these (short sides)
# Not a smear: nucleus-coloured pixels over this share of the image, or a "nucleus" wider than this
# many red cells (the largest normal nucleus, a monocyte's, spans about two).
MAX_NUCLEUS_FRACTION = 0.5


@dataclass(frozen=True)
class Frame:
    """What ``analyse`` found: the red-cell diameter (input pixels), how, and the nucleus boxes."""

    rbc_diameter: float
    scale_source: str  # "red_cells" or "fallback"
    boxes: tuple[Box, ...]  # best (largest stained mass) first; input-image coordinates
    smear_reason: str | None  # None, or why this does not look like a stained smear


def _otsu(values: np.ndarray, bins: int = 128) -> float:
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    return float(centres[np.argmax(w0 * w1 * (m0 - m1) ** 2)])


def _planes(rgb: np.ndarray) -> tuple[np.ndarray, int]:
    """The analysis copy (at most ``WORK_SIDE`` px on the longer side) as float32 colour planes (3, h, w):
    each plane contiguous, so that per-pixel colour arithmetic runs on whole arrays."""
    step = max(1, int(np.ceil(max(rgb.shape[:2]) / WORK_SIDE)))
    return np.ascontiguousarray(rgb[::step, ::step, :3].transpose(2, 0, 1), dtype=np.float32), step


def _grey_of_sum() -> np.ndarray:
    """The channel mean of each 8-bit channel sum 0-765, computed as ``analyse`` computes it."""
    lut = np.arange(766, dtype=np.float32)
    np.true_divide(lut, np.intp(3), out=lut, casting="unsafe")
    return lut


_GREY_OF_SUM = _grey_of_sum()


def _percentile_of_counts(counts: np.ndarray, values: np.ndarray, q: float):
    """``np.percentile(x, q)``, bit for bit, of the x holding ``counts[k]`` copies of ``values[k]``
    (``values`` non-decreasing): numpy's virtual index and float32 interpolation between the two
    order statistics around it, which a cumulative count finds without sorting."""
    n = int(counts.sum())
    v = (n - 1) * np.true_divide(q, 100)
    if n < 2 or not 0 <= v < n - 1:
        return np.percentile(np.repeat(values, counts), q)
    prev = np.floor(v)
    i = int(prev)
    cum = np.cumsum(counts)
    lo, hi = values[np.searchsorted(cum, [i, i + 1], side="right")]
    return np.quantile(np.array([lo, hi], values.dtype), float(v - prev))


def _median_of_u8(x: np.ndarray) -> np.float32:
    """``np.median(x)`` of float32 values that are integers 0-255, bit for bit (by counting)."""
    n = len(x)
    if n < 2:
        return np.median(x)
    cum = np.cumsum(np.bincount(x.astype(np.intp), minlength=256))
    mid = np.searchsorted(cum, [(n - 1) // 2, n // 2], side="right").astype(np.float32)
    return np.median(mid)  # the mean of the two middle values, or the middle one twice


def analyse(rgb: np.ndarray, max_cells: int = 1) -> Frame:
    """Red-cell scale and white-cell nuclei of an HxWx3 uint8 image (see the module docstring)."""
    rgb = np.asarray(rgb)
    planes, step = _planes(rgb)
    red, green, blue = planes
    h, w = red.shape
    no_cell = Frame(min(h, w) * step / FALLBACK_FIELD_RBC, "fallback", (), "no_cell_found")
    # Rotated or padded images carry black corners: not part of the smear.
    valid = np.maximum(np.maximum(red, green), blue) > 30
    if np.count_nonzero(valid) < 0.2 * h * w or min(h, w) < 16:
        return no_cell
    valid = erode_cross(valid, 2)
    grey, background = _grey_and_background(planes, valid, eight_bit=rgb.dtype == np.uint8)
    foreground = _foreground(planes, background, valid)
    index = (blue - green) + 0.5 * (background.mean() - grey)
    if np.count_nonzero(foreground) < 0.002 * h * w:
        return no_cell
    thr = _nucleus_threshold(index, valid, foreground)
    nucleus = dilate_cross(erode_cross(index > thr, 1), 1)
    nucleus &= valid
    extent = _Extent.of(nucleus)
    d, source = _red_cell_scale(foreground, nucleus, extent)
    closed = _closed_nuclei(nucleus, valid, extent, d)
    boxes = _nucleus_boxes(closed, extent, index, thr, d, max_cells)
    if not boxes:
        reason: str | None = "no_cell_found"
    elif float(closed[valid].mean()) > MAX_NUCLEUS_FRACTION:
        reason = "not_blood_smear"
    else:
        reason = None
    return Frame(d * step, source, tuple(_scaled(box, step) for box in boxes), reason)


def _grey_and_background(planes: np.ndarray, valid: np.ndarray, *, eight_bit: bool):
    """The channel mean of every pixel and the background colour: the per-channel median of the
    brightest 15 % of the valid pixels (float32 (h, w) and (3,))."""
    red, green, blue = planes
    # The channel mean as ``rgb.mean(2)`` computes it, bit for bit: float32 sum in channel order,
    # divided (in float64, numpy's count being an intp) and stored as float32.
    grey = red + green
    grey += blue
    if eight_bit:
        # 8-bit channels: counting sorts (integer sums and channel values) give the same order
        # statistics as the partitions of np.percentile and np.median, and so the same results.
        sums = np.bincount(grey[valid].astype(np.intp), minlength=766)
        np.true_divide(grey, np.intp(3), out=grey, casting="unsafe")
        bright = valid & (grey >= _percentile_of_counts(sums, _GREY_OF_SUM, 85))
        background = np.array([_median_of_u8(p[bright]) for p in planes], np.float32)
    else:
        np.true_divide(grey, np.intp(3), out=grey, casting="unsafe")
        bright = valid & (grey >= np.percentile(grey[valid], 85))
        background = np.median(planes[:, bright], axis=1)
    return grey, background


def _foreground(planes: np.ndarray, background: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Valid pixels whose colour is far from the background's (Otsu over the colour distances)."""
    red, green, blue = planes
    sq = np.square(red - background[0])
    sq += np.square(green - background[1])
    sq += np.square(blue - background[2])
    dist_bg = np.sqrt(sq, out=sq)
    return valid & (dist_bg > 0.8 * _otsu(dist_bg[valid]))


def _nucleus_threshold(index: np.ndarray, valid: np.ndarray, foreground: np.ndarray) -> float:
    """The nucleus-index threshold of one image.

    Otsu over the foreground splits red cells from nuclei; with no red cells (a bare nucleus on
    plain background) it would split the nuclei themselves: capped two thirds of the way to their core.
    (Two calls with scalar q, as before: an array q makes numpy interpolate in float64, not float32.)
    """
    inside = index[valid]
    median, core = float(np.percentile(inside, 50)), float(np.percentile(inside, 99.5))
    return max(min(_otsu(index[foreground]), (median + 2 * core) / 3), median + 20.0)


@dataclass(frozen=True)
class _Extent:
    """The rows and columns where a mask is set. Morphology of the nucleus mask runs on its bounding
    box widened by the reach of the operation (nothing outside it can be set, and nothing outside it
    reaches in): the same masks, bit for bit."""

    rows: np.ndarray
    cols: np.ndarray
    shape: tuple[int, int]

    @classmethod
    def of(cls, mask: np.ndarray) -> _Extent:
        return cls(np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0)), mask.shape)

    def __bool__(self) -> bool:
        return bool(len(self.rows))

    def around(self, margin: int) -> tuple[slice, slice]:
        h, w = self.shape
        return (
            slice(max(0, self.rows[0] - margin), min(h, self.rows[-1] + margin + 1)),
            slice(max(0, self.cols[0] - margin), min(w, self.cols[-1] + margin + 1)),
        )


def _red_cell_scale(foreground: np.ndarray, nucleus: np.ndarray, extent: _Extent) -> tuple[float, str]:
    """The red-cell diameter (analysis pixels) and its source, ``"red_cells"`` or ``"fallback"``.

    Red cells: foreground away from nuclei, pallor filled, largest inscribed radius per region.
    """
    h, w = foreground.shape
    near_nucleus = np.zeros((h, w), bool)
    if extent:
        k = max(2, int(0.02 * min(h, w)))
        near_nucleus[extent.around(k)] = dilate_cross(nucleus[extent.around(k)], k)
    rbc = foreground & ~near_nucleus
    rbc = fill_holes(dilate_cross(erode_cross(rbc, 2), 2))
    d = _red_cell_diameter(rbc)
    if min(h, w) / MAX_FIELD_RBC <= d <= min(h, w) / MIN_FIELD_RBC:
        return d, "red_cells"
    # None measured, or an implausible size (fragments of pale cells): assume the framing.
    return min(h, w) / FALLBACK_FIELD_RBC, "fallback"


def _closed_nuclei(nucleus: np.ndarray, valid: np.ndarray, extent: _Extent, d: float) -> np.ndarray:
    """The nucleus mask with lobes merged at a tenth of a red cell (closed on the nucleus box widened
    by the closing radius, so that its components keep the same raster order)."""
    closed = np.zeros(nucleus.shape, bool)
    if extent:
        r = max(1, int(round(CLOSE_RBC * d)))
        win = extent.around(r)
        closed[win] = binary_closing_disk(nucleus[win], r) & valid[win]
    return closed


def _nucleus_boxes(
    closed: np.ndarray, extent: _Extent, index: np.ndarray, thr: float, d: float, max_cells: int
) -> list[Box]:
    """Boxes (analysis pixels) of the nucleus candidates, largest stained mass first: components of
    ``closed`` above a small platelet's area, at most ``max_cells``, none under ``MIN_REL_SCORE`` of
    the best. Labelled and summed on the nucleus box widened by the closing radius: the same labels
    (numbered in the same raster order), the same sums."""
    from scipy import ndimage as ndi

    if not extent:
        return []
    win = extent.around(max(1, int(round(CLOSE_RBC * d))))
    y0, x0 = win[0].start, win[1].start
    lab, m = ndi.label(closed[win])
    if not m:
        return []
    ids = np.arange(1, m + 1)
    areas = np.asarray(ndi.sum(closed[win], lab, ids))
    mass = np.asarray(ndi.sum(np.clip(index[win] - thr, 0, None) + thr, lab, ids))
    slices = ndi.find_objects(lab)
    min_area = MIN_NUCLEUS_RBC2 * np.pi / 4 * d * d
    boxes: list[Box] = []
    best = None
    for k in np.argsort(-mass):
        if areas[k] < min_area:
            continue
        if best is not None and mass[k] < MIN_REL_SCORE * best:
            break
        best = best or mass[k]
        sl = slices[k]
        score = float(mass[k] / (d * d))
        boxes.append(Box(sl[1].start + x0, sl[0].start + y0, sl[1].stop + x0, sl[0].stop + y0, score))
        if len(boxes) >= max_cells:
            break
    return boxes


def _scaled(box: Box, step: int) -> Box:
    """A box of the analysis copy in input-image pixels."""
    return Box(int(box.x0 * step), int(box.y0 * step), int(box.x1 * step), int(box.y1 * step), box.score)


def _red_cell_diameter(rbc: np.ndarray) -> float:
    """Twice the 90th percentile, over the regions of ``rbc``, of each region's largest inscribed
    radius (Euclidean distance to the nearest pixel off the mask), regions under 4 px left out; 0 if none.

    The radii are exactly ``ndimage.maximum(ndimage.distance_transform_edt(rbc), labels, ids)``, found
    faster (the transform of a whole image is slow, cache-bound, and ``maximum`` sorted every pixel):

    * A region with a radius of 4 px holds a disk of 7 px across: narrower ones are left out unmeasured.
    * Each other region's transform is taken on its own bounding box widened by one pixel (clamped at
      the image edge), the other regions there counted as off-mask: for a pixel of the region, its
      nearest off-mask pixel in the image is within that box (clamping a point to the box moves it no
      farther), and the first pixel off the region on any straight path out of it is off-mask (regions
      are 4-connected): the same distances, bit for bit.
    * When those boxes would cover more than the image (many overlapping regions), one transform of
      the whole image, its per-region maxima taken over integer squared distances (``maximum.at``).
    """
    from scipy import ndimage as ndi

    labels, n = ndi.label(rbc)
    if not n:
        return 0.0
    h, w = rbc.shape
    boxes, area = [], 0
    for i, (sy, sx) in enumerate(ndi.find_objects(labels), 1):
        if sy.stop - sy.start >= 7 and sx.stop - sx.start >= 7:
            y0, y1, x0, x1 = (
                max(0, sy.start - 1),
                min(h, sy.stop + 1),
                max(0, sx.start - 1),
                min(w, sx.stop + 1),
            )
            boxes.append((i, y0, y1, x0, x1))
            area += (y1 - y0) * (x1 - x0)
    if area <= 1.2 * h * w:
        per_box = [ndi.distance_transform_edt(labels[y0:y1, x0:x1] == i).max() for i, y0, y1, x0, x1 in boxes]
        radii = np.asarray(per_box, dtype=np.float64)
        radii = radii[radii >= 4]
    else:
        ft = ndi.distance_transform_edt(rbc, return_distances=False, return_indices=True)
        dy = ft[0] - np.arange(h, dtype=ft.dtype)[:, None]
        dx = ft[1] - np.arange(w, dtype=ft.dtype)[None, :]
        sq = dy * dy
        sq += dx * dx
        far = sq >= 16  # radius >= 4 exactly: sqrt is monotone and sqrt(16) == 4
        best = np.zeros(n + 1, sq.dtype)
        np.maximum.at(best, labels[far], sq[far])
        radii = np.sqrt(best[1:][best[1:] >= 16].astype(np.float64))
    return float(2 * np.percentile(radii, 90)) if len(radii) else 0.0


def crop_window(
    frame: Frame, box: Box | None, shape, field_rbc: float = FIELD_RBC
) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the square of ``field_rbc`` red-cell diameters centred on ``box``."""
    h, w = shape[:2]
    side = max(8, int(round(field_rbc * frame.rbc_diameter)))
    cx, cy = box.center if box is not None else (w / 2.0, h / 2.0)
    x0, y0 = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    return x0, y0, x0 + side, y0 + side


def _window(rgb: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """The pixels of ``window`` (x0, y0, x1, y1), edge-replicated where it reaches past the image."""
    x0, y0, x1, y1 = window
    h, w = rgb.shape[:2]
    pad = max(0, -x0, -y0, x1 - w, y1 - h)
    src = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="edge") if pad else rgb
    return src[y0 + pad : y1 + pad, x0 + pad : x1 + pad]


def canonical_crop(
    rgb: np.ndarray,
    frame: Frame,
    box: Box | None = None,
    out_size: int = 112,
    field_rbc: float = FIELD_RBC,
) -> np.ndarray:
    """The canonical square crop (uint8, out_size x out_size) around ``box`` (default: the best
    cell; the image centre when none was found), edge-replicated beyond the image."""
    from PIL import Image

    rgb = np.ascontiguousarray(np.asarray(rgb)[..., :3])
    if box is None and frame.boxes:
        box = frame.boxes[0]
    crop = _window(rgb, crop_window(frame, box, rgb.shape, field_rbc))
    if crop.shape[0] != out_size:
        crop = np.asarray(Image.fromarray(crop).resize((out_size, out_size), Image.Resampling.BILINEAR))
    return crop


def cell_windows(rgb: np.ndarray, max_cells: int = 10, field_rbc: float = FALLBACK_FIELD_RBC):
    """Every located white cell of a whole field as ``(box, window)``: a native-resolution square of
    ``field_rbc`` red-cell diameters around it (edge-replicated beyond the field).

    The default side is the framing ``analyse`` assumes when it cannot measure red cells, so a
    window classified on its own is read at the field's scale either way: by its red cells or by
    its framing (the first field path cropped 288 px and let the scale be guessed from that size).
    """
    rgb = np.ascontiguousarray(np.asarray(rgb)[..., :3])
    frame = analyse(rgb, max_cells=max_cells)
    return [
        (box, np.ascontiguousarray(_window(rgb, crop_window(frame, box, rgb.shape, field_rbc))))
        for box in frame.boxes
    ]
