"""Grad-CAM heat map of the located white cell, overlaid on the input image (PNG bytes)."""

from __future__ import annotations

import io

import numpy as np


def gradcam_map(predictor, crop: np.ndarray, class_index: int | None) -> tuple[np.ndarray, int]:
    """Grad-CAM on one uint8 crop of the model's input size: (HxW map in 0..1, class index used)."""
    import keras
    import tensorflow as tf

    from ml.model import CONV_LAYER

    if not hasattr(predictor, "_gradcam_fn"):
        m = predictor.model
        gm = keras.Model(m.input, [m.get_layer(CONV_LAYER).output, m.output])
        size = predictor.input_size

        # Compiled once per predictor (fixed crop size): eager tape calls cost ~15x more on 2 CPUs.
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

        predictor._gradcam_fn = conv_and_grads
    x = tf.convert_to_tensor(crop[None].astype(np.float32))
    k = tf.constant(-1 if class_index is None else class_index, tf.int32)  # -1: the top class
    conv, grads, k = predictor._gradcam_fn(x, k)
    conv, grads, k = conv.numpy(), grads.numpy(), int(k)
    weights = grads.mean(axis=(0, 1))
    cam = np.maximum((conv * weights).sum(-1), 0)
    cam = cam / (cam.max() + 1e-9)
    from PIL import Image

    cam = (
        np.asarray(Image.fromarray((cam * 255).astype(np.uint8)).resize(crop.shape[1::-1], Image.BICUBIC))
        / 255.0
    )
    return cam, k


def gradcam_png(predictor, image, class_name: str | None = None) -> bytes:
    """Heat-map overlay PNG of ``image`` for ``class_name`` (default: the class the predictor
    answers for it, after its views, colour opinion and calibration, not the raw network's argmax).

    The overlay is drawn on the image as the predictor sees it: inputs over ``MAX_SIDE`` pixels on
    their longer side are scaled down uniformly to it (a prediction's ``cell_box`` is in the input's
    own pixels: divide by the input's longer side / the overlay's longer side to draw it here).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    from ml import normalize
    from ml.locate import crop_box, crop_cell, locate_cells
    from ml.predictor import _downscale, to_rgb

    if class_name is not None and class_name not in predictor.classes:
        raise ValueError(f"unknown class {class_name!r}; model classes: {predictor.classes}")
    if class_name is None:
        class_name = predictor.predict_one(image).label
    rgb, _ = _downscale(to_rgb(image))
    if predictor.crop_method == "rbc_scale":  # the cell framed on the image's own red-cell scale
        frame = normalize.analyse(rgb)
        box = frame.boxes[0] if frame.boxes else None
        win = normalize.crop_window(frame, box, rgb.shape, predictor.field_rbc)
        crop = normalize.canonical_crop(
            rgb, frame, box, out_size=predictor.input_size, field_rbc=predictor.field_rbc
        )
    else:  # the first model's reference-field crop
        boxes = locate_cells(rgb, max_cells=1)
        box = boxes[0] if boxes else None
        masked = predictor.mask_radius
        win = crop_box(rgb, box, side=predictor.crop_side, centred=bool(masked))
        native, _ = crop_cell(rgb, box=box, side=predictor.crop_side, mask_radius=masked)
        crop = np.asarray(Image.fromarray(native).resize((predictor.input_size,) * 2, Image.BILINEAR))
    k = predictor.classes.index(class_name) if class_name else None
    cam, _ = gradcam_map(predictor, crop, k)
    side = win[2] - win[0]
    cam = (
        np.asarray(Image.fromarray((cam * 255).astype(np.uint8)).resize((side, side), Image.BILINEAR)) / 255.0
    )
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
