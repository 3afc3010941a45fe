"""Serving: load the shipped model once, classify white-cell images, flag what it should not trust.

This is the interface the Django app uses (through ``classifier/inference.py``).
Images of any size and mode are accepted (bytes, PIL images, numpy arrays);
the white cell is located and cropped exactly as in training (``ml.locate``),
dihedral test-time augmentation is averaged, probabilities are calibrated by
temperature scaling with one offset per class (the card's ``class_bias``), and
images are flagged "unidentified" when no nucleus is found, when their features
are far from every training cell (``not_blood_smear``), or when the calibrated
confidence is low.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"
DEFAULT_MODEL_PATH = ARTIFACTS_DIR / "hematovision_wbc.keras"
MAX_SIDE = 1280  # larger inputs are downscaled first (cells are located at the 320x240 field scale)
# Larger images are refused before they are decoded (a 100 MP JPEG took 2.5 GB to decode). The web
# portal's own limit (HEMATOVISION_MAX_PIXELS, 40 MP by default) is checked before this one.
MAX_PIXELS = 50_000_000
BATCH = 32
BACKENDS = ("auto", "keras", "litert", "naive")  # see load_predictor

FLAG_MESSAGES = {
    "no_cell_found": "No stained white-cell nucleus was found in the image; is this a stained blood smear?",
    "not_blood_smear": "The image does not look like the white-cell images the model was trained on.",
    "low_confidence": "The model is not confident about this cell; a human must classify it.",
}


class ModelLoadError(RuntimeError):
    """The model file or its card is missing, unreadable or inconsistent."""


class ImageDecodeError(ValueError):
    """The input is not a decodable image."""


@dataclass(frozen=True)
class Prediction:
    label: str  # top class (always, even when flagged)
    confidence: float  # calibrated probability of the top class
    probabilities: dict[str, float]  # every class, calibrated, card order, sums to 1
    status: str  # "classified" or "unidentified"
    flag_reason: str | None  # None, "low_confidence", "not_blood_smear", "no_cell_found"
    flag_message: str | None
    model_version: str
    cell_box: tuple[int, int, int, int] | None  # located nucleus box in input-image coordinates

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cell_box"] = list(self.cell_box) if self.cell_box else None
        return d


# --------------------------------------------------------------------------- image decoding


def _pil_to_rgb(im) -> np.ndarray:
    from PIL import Image, ImageOps

    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001, S110  broken EXIF: keep the pixels as stored
        pass
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if mode == "F" and a.size and a.max() <= 1.0:
            a = a * 255.0
        elif a.size and a.max() > 255:
            a = a / (65535.0 if a.max() <= 65535 else a.max()) * 255.0
        a = np.clip(a, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return np.asarray(im.convert("RGB"))


def _check_pil(im) -> None:
    """One frame, at most MAX_PIXELS: checked on the header, before the pixels are decoded."""
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        raise ImageDecodeError(
            f"the file holds {frames} frames (animation or stack); send one image per file"
        )
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise ImageDecodeError(
            f"the image is {w}x{h} pixels ({w * h / 1e6:.0f} MP); the limit is {MAX_PIXELS / 1e6:.0f} MP"
        )


def to_rgb(image) -> np.ndarray:
    """Bytes / PIL image / numpy array -> HxWx3 uint8 RGB (EXIF orientation applied).

    Raises ImageDecodeError for what is not one decodable image: unreadable bytes, several frames,
    more than MAX_PIXELS pixels (refused before decoding).
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, (bytes, bytearray, memoryview)):
        try:
            im = Image.open(io.BytesIO(bytes(image)))
            _check_pil(im)
            im.load()
        except ImageDecodeError:
            raise
        except (
            UnidentifiedImageError,
            OSError,
            ValueError,
            SyntaxError,
            Image.DecompressionBombError,
        ) as exc:
            raise ImageDecodeError(f"not a decodable image ({len(image)} bytes): {exc}") from exc
        rgb = _pil_to_rgb(im)
    elif isinstance(image, Image.Image):
        _check_pil(image)
        rgb = _pil_to_rgb(image)
    elif isinstance(image, np.ndarray):
        a = image
        if a.ndim == 2:
            a = a[..., None]
        if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or min(a.shape[:2]) < 1:
            raise ImageDecodeError(f"array of shape {image.shape} is not an image")
        if a.dtype == np.uint16 or (a.dtype.kind in "iu" and a.size and a.max() > 255):
            a = a.astype(np.float64) / 257.0
        elif a.dtype.kind == "f" and a.size and a.max() <= 1.0:
            a = a * 255.0
        a = np.clip(a, 0, 255).astype(np.uint8)
        if a.shape[2] == 4:
            alpha = a[..., 3:4].astype(np.float32) / 255.0
            a = (a[..., :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8)
        elif a.shape[2] == 1:
            a = np.repeat(a, 3, axis=2)
        rgb = a
    else:
        raise ImageDecodeError(f"unsupported image type {type(image).__name__}")
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ImageDecodeError("empty image")
    return np.ascontiguousarray(rgb)


def _downscale(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    from PIL import Image

    h, w = rgb.shape[:2]
    f = max(h, w) / MAX_SIDE
    if f <= 1:
        return rgb, 1.0
    small = Image.fromarray(rgb).resize((max(1, round(w / f)), max(1, round(h / f))), Image.BILINEAR)
    return np.asarray(small), f


# --------------------------------------------------------------------------- inference helpers


def dihedral_views(n: int) -> list[int]:
    return {1: [0], 2: [0, 4], 4: [0, 1, 2, 3], 8: list(range(8))}[n]


def tta_predict(fn, crops: np.ndarray, views: int, batch: int = BATCH) -> tuple[np.ndarray, np.ndarray]:
    """Average ``fn(x) -> (features, probs)`` over dihedral views of uint8 crops (N,S,S,3)."""
    import tensorflow as tf

    feats, probs = [], []
    ks = dihedral_views(views)
    for i in range(0, len(crops), batch):
        x = tf.convert_to_tensor(np.asarray(crops[i : i + batch], dtype=np.float32))
        fs, ps = 0.0, 0.0
        for k in ks:
            v = tf.image.rot90(x, k % 4)
            if k >= 4:
                v = tf.image.flip_left_right(v)
            f, p = fn(v)
            fs, ps = fs + f.numpy(), ps + p.numpy()
        feats.append(fs / len(ks))
        probs.append(ps / len(ks))
    return np.concatenate(feats), np.concatenate(probs)


# --------------------------------------------------------------------------- the predictor


class Predictor:
    """A loaded model plus its card; ``predict`` is safe to call from many threads."""

    def __init__(self, model, card: dict, ood_stats: dict | None, model_path: Path, backend: str = "keras"):
        import keras
        import tensorflow as tf

        from ml import ood
        from ml.model import FEATURES_LAYER

        if backend not in ("keras", "litert", "naive"):
            raise ValueError(f"unknown backend {backend!r}; one of {BACKENDS}")
        self.model = model
        self.card = card
        self.classes: list[str] = list(card["classes"])
        self.version: str = card["version"]
        self.model_path = model_path
        self.input_size = int(card["input"]["input_size"])
        self.crop_side = float(card["crop"]["crop_side_ref_px"])
        self.mask_radius = card["crop"].get("mask_radius_ref_px")  # None: unmasked crops (older models)
        # "rbc_scale" (ml.normalize: scale measured on the image's red cells) or the first model's
        # "ref_field" (ml.locate: scale assumed from the image's pixel size).
        self.crop_method = card["crop"].get("method", "ref_field")
        self.field_rbc = float(card["crop"].get("field_rbc") or 0.0)
        self.tta_views = int(card.get("tta_views", 1))
        self.n_views = len(dihedral_views(self.tta_views))
        self.temperature = float(card.get("temperature", 1.0))
        self.class_bias = ood.card_class_bias(card)
        self.thresholds = dict(card.get("thresholds") or {})
        self.ood_stats = ood_stats
        # Colour second opinion (ml.colour), fused with the CNN's probabilities before calibration.
        self.colour_model, self.colour_weight = None, 0.0
        colour_card = card.get("colour")
        if colour_card:
            from ml import colour

            try:
                self.colour_model = colour.load(model_path.parent / colour_card["file"])
                self.colour_weight = float(colour_card["weight"])
            except Exception as exc:
                raise ModelLoadError(f"could not read the colour model next to {model_path}: {exc}") from exc
        self._both = keras.Model(model.input, [model.get_layer(FEATURES_LAYER).output, model.output])
        s = self.input_size
        spec = tf.TensorSpec((None, s, s, 3), tf.float32)  # crops are always input_size: one trace
        self._fn = tf.function(lambda x: self._both(x, training=False), input_signature=[spec])
        self._gradcam_lock = threading.Lock()
        self._run_lock = threading.Lock()  # a LiteRT interpreter is not thread-safe
        self.backend = backend
        self.litert_path: Path | None = None
        self.litert_meta: dict | None = None
        self._litert = None
        if backend == "litert":
            from ml import export

            self.litert_path, self.litert_meta = export.ensure(
                self._both, self._fn, self.version, self.n_views, s, len(self.classes)
            )
            self._litert = export.LiteRTRunner(self.litert_path, len(self.classes))
            if self._litert.input_shape != (self.n_views, s, s, 3):
                raise ModelLoadError(f"LiteRT input {self._litert.input_shape} does not fit this model")

    def _views(self, crops: np.ndarray) -> np.ndarray:
        """uint8 crops (N,S,S,3) -> float32 (N*V,S,S,3), the V dihedral views of each crop in turn
        (same transforms as ``tta_predict``: k quarter turns counter-clockwise, then a flip for k>=4)."""
        out = []
        for c in crops:
            for k in dihedral_views(self.tta_views):
                v = np.rot90(c, k % 4, axes=(0, 1))
                out.append(v[:, ::-1] if k >= 4 else v)
        return np.asarray(out, dtype=np.float32)

    def _infer(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """TTA-averaged (features, probabilities) of uint8 crops through the chosen backend."""
        n, v = len(crops), self.n_views
        feats, probs = [], []
        if self.backend == "litert":
            with self._run_lock:
                for c in crops:
                    f, p = self._litert.run(self._views(c[None]))
                    feats.append(f.mean(0, keepdims=True))
                    probs.append(p.mean(0, keepdims=True))
        elif self.backend == "naive":  # the naive way: model.predict on each image's views
            for c in crops:
                f, p = self._both.predict(self._views(c[None]), verbose=0)
                feats.append(f.mean(0, keepdims=True))
                probs.append(p.mean(0, keepdims=True))
        else:  # one compiled call per chunk of images, all views at once
            step = max(1, BATCH // v)  # about BATCH views per call (bounded memory)
            for i in range(0, n, step):
                x = self._views(crops[i : i + step])
                f, p = self._fn(x)
                m = len(x) // v
                feats.append(f.numpy().reshape(m, v, -1).mean(1))
                probs.append(p.numpy().reshape(m, v, -1).mean(1))
        return np.concatenate(feats), np.concatenate(probs)

    def _prepare(self, image):
        from ml.locate import crop_cell, locate_cells, smear_check

        rgb = to_rgb(image)
        small, f = _downscale(rgb)
        if self.crop_method == "rbc_scale":
            from ml import normalize

            frame = normalize.analyse(small)
            crop = normalize.canonical_crop(small, frame, out_size=self.input_size, field_rbc=self.field_rbc)
            b = frame.boxes[0].as_tuple() if frame.boxes else None
            cell_box = tuple(int(round(v * f)) for v in b) if b else None
            return crop, cell_box, frame.smear_reason, None
        boxes = locate_cells(small, max_cells=1)
        box = boxes[0] if boxes else None
        crop, b = crop_cell(
            small, box=box, out_size=self.input_size, side=self.crop_side, mask_radius=self.mask_radius
        )
        cell_box = tuple(int(round(v * f)) for v in b) if b else None
        colour_feats = None
        if self.colour_model is not None:
            from ml import colour

            same = colour.reads_crop(self.crop_side, self.input_size, self.mask_radius)
            colour_feats = colour.colour_features((crop if same else colour.colour_crop(small, box))[None])[0]
        return crop, cell_box, smear_check(small, box), colour_feats

    def predict(self, images: Sequence) -> list[Prediction]:
        from ml import ood

        if not isinstance(images, (list, tuple)):
            images = list(images)
        if not images:
            return []
        prepared = [self._prepare(im) for im in images]
        crops = np.stack([c for c, _, _, _ in prepared])
        feats, probs = self._infer(crops)
        if self.colour_model is not None:
            from ml import colour

            colour_lp = colour.log_probs(self.colour_model, np.stack([cf for _, _, _, cf in prepared]))
            probs = colour.fuse(probs, colour_lp, self.colour_weight)
        cal = ood.calibrate(probs, self.temperature, self.class_bias)
        dist = ood.distance(self.ood_stats, feats) if self.ood_stats is not None else np.zeros(len(crops))
        out = []
        for i, (_, box, reason, _) in enumerate(prepared):
            p = cal[i] / cal[i].sum()
            top = int(np.argmax(p))
            if reason:
                pass
            elif dist[i] > self.thresholds.get("ood_distance", np.inf):
                reason = "not_blood_smear"
            elif p[top] < self.thresholds.get("min_confidence", 0.0):
                reason = "low_confidence"
            out.append(
                Prediction(
                    label=self.classes[top],
                    confidence=float(p[top]),
                    probabilities={c: float(p[j]) for j, c in enumerate(self.classes)},
                    status="unidentified" if reason else "classified",
                    flag_reason=reason,
                    flag_message=FLAG_MESSAGES.get(reason) if reason else None,
                    model_version=self.version,
                    cell_box=box,
                )
            )
        return out

    def field_cells(self, image, max_cells: int = 10) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
        """Every white cell of a whole field as ``(nucleus box, cell image)``, each cell image framed
        so that ``predict`` reads it at the field's scale (``ml.normalize.cell_windows``; the first
        model's cards: ``ml.locate``'s reference-field crop)."""
        rgb = to_rgb(image)
        if self.crop_method == "rbc_scale":
            from ml import normalize

            return [(b.as_tuple(), crop) for b, crop in normalize.cell_windows(rgb, max_cells=max_cells)]
        from ml.locate import crop_cell, locate_cells

        return [(b.as_tuple(), crop_cell(rgb, box=b)[0]) for b in locate_cells(rgb, max_cells=max_cells)]

    def predict_one(self, image) -> Prediction:
        return self.predict([image])[0]

    def ood_scores(self, images: Sequence) -> np.ndarray:
        """Raw out-of-distribution scores (diagnostics and threshold tuning)."""
        from ml import ood

        crops = np.stack([self._prepare(im)[0] for im in images])
        feats, _ = self._infer(crops)
        return ood.distance(self.ood_stats, feats)

    def gradcam_png(self, image, class_name: str | None = None) -> bytes:
        from ml.gradcam import gradcam_png

        with self._gradcam_lock:
            return gradcam_png(self, image, class_name)


_LOCK = threading.Lock()
_CACHE: dict[str, Predictor] = {}


def load_predictor(model_path: str | Path | None = None, backend: str = "auto") -> Predictor:
    """Load (once per path and backend per process) the model at ``model_path`` (None: the shipped model).

    ``backend``: ``"keras"`` (a compiled ``tf.function``, all views in one call), ``"litert"``
    (the model exported to LiteRT and run with XNNPACK, verified within 1e-3 of Keras, see
    ``ml.export``), ``"naive"`` (``model.predict`` per image, for comparisons only) or
    ``"auto"``: LiteRT when its export works and verifies, else Keras. All give the same
    pipeline (locator, TTA, calibration, flags).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown inference backend {backend!r}; one of {', '.join(BACKENDS)}")
    path = Path(model_path) if model_path else DEFAULT_MODEL_PATH
    key = f"{path.resolve()}|{backend}"
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        if backend == "auto" and f"{path.resolve()}|litert" in _CACHE:
            _CACHE[key] = _CACHE[f"{path.resolve()}|litert"]
            return _CACHE[key]
        loaded = [p for k, p in _CACHE.items() if k.startswith(f"{path.resolve()}|")]
        if loaded:  # same process, another backend: reuse the loaded model
            model, card, stats = loaded[0].model, loaded[0].card, loaded[0].ood_stats
        else:
            model, card, stats = _load_parts(path)
        if backend == "auto":
            try:
                pred = Predictor(model, card, stats, path, backend="litert")
            except Exception as exc:  # noqa: BLE001  any export/runtime failure: fall back to Keras
                import logging

                logging.getLogger(__name__).warning("LiteRT backend unavailable (%s); using Keras", exc)
                pred = Predictor(model, card, stats, path, backend="keras")
        else:
            pred = Predictor(model, card, stats, path, backend=backend)
        _CACHE[key] = pred
        _CACHE.setdefault(f"{path.resolve()}|{pred.backend}", pred)
        return pred


def _load_parts(path: Path):
    from ml import ood
    from ml.bundle import bundle_version, check_serving_settings

    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    card_path = path.parent / "model_card.json"
    try:
        card = json.loads(card_path.read_text())
        _ = card["version"]
        check_serving_settings(card)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"model card {card_path} is missing or invalid: {exc}") from exc
    try:
        import keras

        model = keras.saving.load_model(path, compile=False)
    except Exception as exc:  # keras raises many types for corrupt archives
        raise ModelLoadError(f"could not load model {path}: {exc}") from exc
    if model.output_shape[-1] != len(card["classes"]):
        raise ModelLoadError(
            f"model {path} has {model.output_shape[-1]} outputs but the card lists "
            f"{len(card['classes'])} classes"
        )
    stats = None
    if card.get("ood_stats_file"):
        try:
            stats = ood.load(path.parent / card["ood_stats_file"])
        except Exception as exc:
            raise ModelLoadError(f"could not read OOD statistics next to {path}: {exc}") from exc
    try:
        version = bundle_version(card, path)
    except FileNotFoundError as exc:
        raise ModelLoadError(str(exc)) from exc
    if version != card["version"]:
        raise ModelLoadError(
            f"model card {card_path} states version {card['version']}, but the bundle hashes to {version}: "
            f"a file or a serving setting changed after it was versioned (`python -m ml.bundle "
            f"{path.parent} --write` gives the changed bundle its own version)"
        )
    return model, card, stats


# Validation figures, best estimate first: out of fold with the calibration fitted on the other folds
# (ml.crossval), the calibrated decision, then the uncalibrated argmax (older cards).
_VALIDATION_KEYS = ("calibrated_nested", "calibrated", "tta{v}_with_colour", "tta{v}")


def _figures(metrics: dict | None) -> dict | None:
    if not metrics:
        return None
    return {
        "n_images": metrics.get("n_images"),
        "accuracy": metrics.get("accuracy"),
        "macro_f1": metrics.get("macro_f1"),
        # classes the evaluated set has no cell of have no recall (BCCD has 4 of the 8)
        "recall": {
            c: m.get("recall") for c, m in (metrics.get("per_class") or {}).items() if m.get("support", 1)
        },
    }


def model_summary(card: dict) -> dict:
    """What a lab or a laboratory information system needs to know about a model, from its card:
    identity, classes, how probabilities are calibrated and flags set, and its validation and TEST
    figures. Keys a card does not have are None (older or stand-in models)."""
    views = card.get("tta_views", 1)
    vm = card.get("validation_metrics") or {}
    key = next((k.format(v=views) for k in _VALIDATION_KEYS if k.format(v=views) in vm), None)
    test = card.get("test_metrics") or {}
    if test.get("model_version") not in (None, card.get("version")):
        test = {}  # figures of another model: not this one's
    per_class = (card.get("data") or {}).get("per_class") or {}
    total = sum(per_class.values())
    validation = _figures(vm.get(key)) if key else None
    if validation is not None:
        validation |= {"estimate": key, "flagged_rate": card.get("validation_flagged_rate")}
    return {
        "name": card.get("name"),
        "version": card.get("version"),
        "classes": list(card.get("classes") or []),
        "backbone": card.get("backbone"),
        "input_size": (card.get("input") or {}).get("input_size"),
        "tta_views": card.get("tta_views"),
        "trained_at": card.get("trained_at"),
        # The labs (data sources) it learned from; None for the first model's card (BCCD only).
        "training_sources": sorted((card.get("data") or {}).get("sources") or {}) or None,
        "calibration": {
            "method": "softmax(log p / temperature + class_bias)",
            "temperature": card.get("temperature"),
            "class_bias": card.get("class_bias"),
            # The class balance the probabilities are calibrated for (the training images').
            "training_class_fractions": {c: n / total for c, n in per_class.items()} if total else None,
        },
        "thresholds": card.get("thresholds"),
        "validation": validation,
        "test": _test_figures(test),
    }


def _test_figures(test: dict) -> dict | None:
    """Held-out test figures: one lab's (the first model), or per source with the silent error rate."""
    if not test:
        return None
    if "per_source" not in test:
        return _figures(test) | {"unidentified_rate": test.get("unidentified_rate")}
    return {
        "per_source": {
            s: _figures(m) | {"flagged_rate": m.get("flagged"), "silent_error_rate": m.get("silent_error")}
            for s, m in test["per_source"].items()
        }
    }
