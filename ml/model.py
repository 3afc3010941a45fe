"""Build the classifier: [resize, rescale] -> backbone -> pooled features -> softmax.

For EfficientNet-Lite0 the network can be built whole (serving) or as a
frozen ``lower`` part (stem + blocks < split) and a trainable ``upper`` part
(blocks >= split + head + classifier) sharing layer names, so training can
cache lower activations and copy the trained weights into the whole model.
"""

from __future__ import annotations

import numpy as np

from ml.backbones import (
    LITE0_NUM_BLOCKS,
    build_mobilenet_v2,
    lite0_apply,
    lite0_input_scaling,
    load_lite0_imagenet_weights,
)

FEATURES_LAYER = "avg_pool"  # pooled backbone features (OOD detector, head input)
CONV_LAYER = "top_relu"  # last conv activation (Grad-CAM)
OUTPUT_LAYER = "predictions"


def _head(x, n_classes: int, dropout: float):
    from keras import layers

    x = layers.GlobalAveragePooling2D(name=FEATURES_LAYER)(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    return layers.Dense(n_classes, activation="softmax", name=OUTPUT_LAYER, dtype="float32")(x)


def build_lite0_lower(input_size: int, split: int):
    import keras

    inp = keras.Input((input_size, input_size, 3), name="crop")
    x = lite0_apply(lite0_input_scaling(inp), 0, split, head=False)
    m = keras.Model(inp, x, name="lite0_lower")
    load_lite0_imagenet_weights(m)
    m.trainable = False
    return m


def build_lite0_upper(act_shape, split: int, n_classes: int, dropout: float, features_only: bool = False):
    import keras
    from keras import layers

    inp = keras.Input(tuple(act_shape), name="activations")
    x = lite0_apply(inp, split, LITE0_NUM_BLOCKS, stem=False)
    if features_only:
        m = keras.Model(
            inp, layers.GlobalAveragePooling2D(name=FEATURES_LAYER)(x), name="lite0_upper_features"
        )
    else:
        m = keras.Model(inp, _head(x, n_classes, dropout), name="lite0_upper")
    load_lite0_imagenet_weights(m)
    return m


def freeze_batchnorm(model) -> None:
    """BatchNorm layers keep their ImageNet statistics and affine params (fine-tuning recipe)."""
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            layer.trainable = False


def build_classifier(
    backbone: str,
    input_size: int,
    n_classes: int,
    dropout: float = 0.3,
    *,
    imagenet: bool = True,
    stain: dict | None = None,
):
    """Whole serving model: any-size RGB crop (0..255 floats) -> class probabilities.

    ``imagenet=False`` builds Lite0 without reading its weights package (the caller sets weights).
    ``stain``: reference statistics (``ml.stain.reference``) of a stain-normalising first layer.
    """
    import keras
    from keras import layers

    inp = keras.Input((None, None, 3), name="image")
    x = layers.Resizing(input_size, input_size, interpolation="bilinear", name="resize")(inp)
    if stain is not None:
        from ml.stain import ReinhardStain  # imports Keras: only models that normalise stain need it

        x = ReinhardStain(stain["mean"], stain["std"], name="stain")(x)
    if backbone == "efficientnet_lite0":
        x = lite0_apply(lite0_input_scaling(x))
        model = keras.Model(inp, _head(x, n_classes, dropout), name=f"wbc_{backbone}")
        if imagenet:
            load_lite0_imagenet_weights(model)
        return model
    if backbone == "mobilenet_v2":
        feats, _ = build_mobilenet_v2(input_size, None)  # Keras' cache (ml.train_full passes a weights file)
        x = feats(x)
        return keras.Model(inp, _head(x, n_classes, dropout), name=f"wbc_{backbone}")
    raise ValueError(f"unknown backbone {backbone!r} (choose efficientnet_lite0 or mobilenet_v2)")


def copy_weights_by_name(src, dst) -> int:
    """Copy weights of same-named layers from ``src`` into ``dst``; returns the count."""
    names = {layer.name: layer for layer in dst.layers}
    n = 0
    for layer in src.layers:
        if layer.name in names and layer.weights:
            names[layer.name].set_weights(layer.get_weights())
            n += 1
    return n


def weights_by_name(model, dtype=None, skip=()) -> dict:
    """``{"layer:i": array}`` for every weighted layer (``skip``: layer names left out)."""
    return {
        f"{layer.name}:{i}": w if dtype is None else w.astype(dtype)
        for layer in model.layers
        if layer.name not in skip
        for i, w in enumerate(layer.get_weights())
    }


def set_weights_by_name(model, weights) -> int:
    """Load ``weights_by_name`` arrays (any float dtype) into same-named layers; returns the count."""
    n = 0
    for layer in model.layers:
        ws = layer.get_weights()
        if ws and f"{layer.name}:0" in weights:
            layer.set_weights([np.asarray(weights[f"{layer.name}:{i}"], np.float32) for i in range(len(ws))])
            n += 1
    return n
