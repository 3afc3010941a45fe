"""Grad-CAM heat map of the located white cell, overlaid on the input image (PNG bytes).

``GradCam`` holds the compiled gradient computation of one model; ``cell_window`` frames the cell
as a predictor with the given crop settings reads it; ``overlay_png`` draws the map over the image.
``ml.predictor.Predictor.gradcam_png`` composes the three.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ml import normalize
from ml.locate import Box, crop_box, crop_cell, locate_cells
from ml.model import CONV_LAYER


@dataclass(frozen=True)
class CropSettings:
    """How a model's crops are framed (the card's ``crop`` and ``input`` entries)."""

    method: str  # "rbc_scale" (ml.normalize) or "ref_field" (ml.locate, the first model)
    input_size: int
    field_rbc: float
    crop_side: float
    mask_radius: float | None


class GradCam:
    """Grad-CAM of one model on uint8 crops of its input size, compiled on first use."""

    def __init__(self, model, input_size: int):
        self.model = model
        self.input_size = input_size
        self._fn: Callable | None = None

    def _compile(self):
        # Keras and TensorFlow: imported when a first heat map is asked for (import ml.gradcam stays cheap).
        import keras
        import tensorflow as tf

        m = self.model
        gm = keras.Model(m.input, [m.get_layer(CONV_LAYER).output, m.output])
        size = self.input_size

        # Compiled once per model (fixed crop size): eager tape calls cost ~15x more on 2 CPUs.
        @tf.function(
            input_signature=[
                tf.TensorSpec((1, size, size, 3), tf.float32),
                tf.TensorSpec((), tf.int32),
            ]
        )
        def conv_and_grads(x, k):
            with tf.GradientTape() as tape:
                conv, probs = gm(x, training=False)
                tape.watch(conv)
                k = tf.where(k < 0, tf.argmax(probs[0], output_type=tf.int32), k)
                score = tf.math.log(probs[:, k] + 1e-9)
            return conv[0], tape.gradient(score, conv)[0], k

        return conv_and_grads

    def map(self, crop: np.ndarray, class_index: int | None) -> tuple[np.ndarray, int]:
        """(HxW map in 0..1, class index used) for one crop; ``class_index`` None: the top class."""
        import tensorflow as tf  # imported with the model, see _compile
        from PIL import Image  # PIL: imported when a heat map is drawn

        if self._fn is None:
            self._fn = self._compile()
        fn = self._fn
        x = tf.convert_to_tensor(crop[None].astype(np.float32))
        k = tf.constant(-1 if class_index is None else class_index, tf.int32)  # -1: the top class
        conv, grads, k = fn(x, k)
        conv, grads, k = conv.numpy(), grads.numpy(), int(k)
        weights = grads.mean(axis=(0, 1))
        cam = np.maximum((conv * weights).sum(-1), 0)
        cam = cam / (cam.max() + 1e-9)
        cam_image = Image.fromarray((cam * 255).astype(np.uint8))
        cam = np.asarray(cam_image.resize(crop.shape[1::-1], Image.Resampling.BICUBIC)) / 255.0
        return cam, k


def cell_window(
    rgb: np.ndarray, crop: CropSettings
) -> tuple[Box | None, tuple[int, int, int, int], np.ndarray]:
    """``(nucleus box, window in image pixels, crop the model reads)`` of the image's first cell."""
    from PIL import Image  # PIL: imported when a heat map is drawn

    if crop.method == "rbc_scale":  # the cell framed on the image's own red-cell scale
        frame = normalize.analyse(rgb)
        box = frame.boxes[0] if frame.boxes else None
        win = normalize.crop_window(frame, box, rgb.shape, crop.field_rbc)
        cell = normalize.canonical_crop(rgb, frame, box, out_size=crop.input_size, field_rbc=crop.field_rbc)
        return box, win, cell
    # the first model's reference-field crop
    boxes = locate_cells(rgb, max_cells=1)
    box = boxes[0] if boxes else None
    masked = crop.mask_radius
    win = crop_box(rgb, box, side=crop.crop_side, centred=bool(masked))
    native, _ = crop_cell(rgb, box=box, side=crop.crop_side, mask_radius=masked)
    cell = np.asarray(Image.fromarray(native).resize((crop.input_size,) * 2, Image.Resampling.BILINEAR))
    return box, win, cell


def overlay_png(rgb: np.ndarray, cam: np.ndarray, win, box: Box | None) -> bytes:
    """The crop's heat map ``cam`` placed over ``win`` of ``rgb`` (jet colours), the box outlined."""
    import matplotlib  # matplotlib and PIL: imported when a heat map is drawn

    matplotlib.use("Agg")
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    side = win[2] - win[0]
    cam_image = Image.fromarray((cam * 255).astype(np.uint8))
    cam = np.asarray(cam_image.resize((side, side), Image.Resampling.BILINEAR)) / 255.0
    h, w = rgb.shape[:2]
    full = np.zeros((h, w), np.float32)
    x0, y0 = win[0], win[1]
    sx0, sy0 = max(0, -x0), max(0, -y0)
    dx0, dy0 = max(0, x0), max(0, y0)
    dx1, dy1 = min(w, x0 + side), min(h, y0 + side)
    full[dy0:dy1, dx0:dx1] = cam[sy0 : sy0 + dy1 - dy0, sx0 : sx0 + dx1 - dx0]
    heat = colormaps["jet"](full)[..., :3] * 255.0
    alpha = 0.5 * full[..., None]
    over = (rgb * (1 - alpha) + heat * alpha).astype(np.uint8)
    im = Image.fromarray(over)
    if box is not None:
        ImageDraw.Draw(im).rectangle([box.x0, box.y0, box.x1, box.y1], outline=(255, 255, 255), width=1)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
