"""Serving: load the shipped model once, classify white-cell images, flag what it should not trust.

This is the interface the Django app uses (through ``classifier/inference.py``).
Images of any size and mode are accepted (bytes, PIL images, numpy arrays; ``ml.images``);
the white cell is located and cropped exactly as in training (``ml.locate``, ``ml.normalize``),
dihedral test-time augmentation is averaged, probabilities are calibrated by
temperature scaling with one offset per class (the card's ``class_bias``), and
images are flagged "unidentified" when no nucleus is found, when their features
are far from every training cell (``not_blood_smear``), or when the calibrated
confidence is low.

Constructing a ``Predictor`` reads nothing but its colour model and writes nothing;
``load_predictor`` loads a bundle from disk and, for the LiteRT backend, exports it (``ml.litert``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple, cast

import numpy as np

from ml import colour, litert, normalize, ood, shift
from ml.bundle import ModelLoadError, load_bundle
from ml.card import model_summary  # noqa: F401  re-exported: classifier.inference reads it from here
from ml.gradcam import CropSettings, GradCam, cell_window, overlay_png
from ml.images import ImageDecodeError, downscale, to_rgb
from ml.locate import crop_cell, locate_cells, smear_check
from ml.model import FEATURES_LAYER
from ml.tta import BATCH, dihedral_views, tta_predict  # tta_predict re-exported: its home before ml.tta

__all__ = [
    "BACKENDS",
    "DEFAULT_MODEL_PATH",
    "ImageDecodeError",
    "ModelLoadError",
    "Prediction",
    "Predictor",
    "load_predictor",
    "model_summary",
    "tta_predict",
]

ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"
DEFAULT_MODEL_PATH = ARTIFACTS_DIR / "hematovision_wbc.keras"
BACKENDS = ("auto", "keras", "litert", "naive")  # see load_predictor

FLAG_MESSAGES = {
    "no_cell_found": "No stained white-cell nucleus was found in the image; is this a stained blood smear?",
    "not_blood_smear": "The image does not look like the white-cell images the model was trained on.",
    "low_confidence": "The model is not confident about this cell; a human must classify it.",
}


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


# --------------------------------------------------------------------------- the predictor


class Prepared(NamedTuple):
    """One input image made ready for the network (``Predictor.prepare``)."""

    crop: np.ndarray  # uint8 (S,S,3), S = the model's input size
    cell_box: tuple[int, int, int, int] | None  # located nucleus box in input-image coordinates
    flag_reason: str | None  # the locator's own flag ("no_cell_found", ...), None when it passes
    colour_features: np.ndarray | None  # ml.colour features (models with a colour opinion)


def _input_box(box, f: float) -> tuple[int, int, int, int] | None:
    """A box of the downscaled copy in input-image pixels (``f``: the downscale factor)."""
    if not box:
        return None
    x0, y0, x1, y1 = box
    return int(round(x0 * f)), int(round(y0 * f)), int(round(x1 * f)), int(round(y1 * f))


class LiteRTExport(NamedTuple):
    """A verified LiteRT export of a model (``ml.litert.ensure``) and its runner."""

    runner: litert.LiteRTRunner
    meta: dict  # what ml.litert recorded: sha256, max_abs_diff_vs_keras, ...


def _colour_opinion(card: dict, model_path: Path):
    """The card's colour model (``ml.colour``, read from beside the model) and its weight; (None, 0.0)
    for a model without one."""
    colour_card = card.get("colour")
    if not colour_card:
        return None, 0.0
    try:
        return colour.load(model_path.parent / colour_card["file"]), float(colour_card["weight"])
    except Exception as exc:
        raise ModelLoadError(f"could not read the colour model next to {model_path}: {exc}") from exc


class Predictor:
    """A loaded model plus its card; ``predict`` is safe to call from many threads.

    ``backend``: "keras" (a compiled ``tf.function``, all views in one call), "naive"
    (``model.predict`` per image) or "litert" (``litert``, a ``ml.litert.LiteRTRunner`` of this
    model's export, is then required: ``load_predictor`` makes it).
    """

    def __init__(
        self,
        model,
        card: dict,
        ood_stats: dict | None,
        model_path: Path,
        backend: str = "keras",
        *,
        litert_export: LiteRTExport | None = None,
    ):
        if backend not in ("keras", "litert", "naive"):
            raise ValueError(f"unknown backend {backend!r}; one of {BACKENDS}")
        if (backend == "litert") != (litert_export is not None):
            raise ValueError("the litert backend, and only it, runs a LiteRT export (see load_predictor)")
        self.model = model
        self.card = card
        self.model_path = model_path
        self.ood_stats = ood_stats
        self._read_card(card)
        # Colour second opinion (ml.colour), fused with the CNN's probabilities before calibration.
        self.colour_model, self.colour_weight = _colour_opinion(card, model_path)
        self._build_network(model)
        self._gradcam = GradCam(model, self.input_size)
        self._gradcam_lock = threading.Lock()
        self._run_lock = threading.Lock()  # a LiteRT interpreter is not thread-safe
        self.backend = backend
        self._litert = litert_export.runner if litert_export else None
        self.litert_path: Path | None = litert_export.runner.path if litert_export else None
        self.litert_meta: dict | None = litert_export.meta if litert_export else None

    def _read_card(self, card: dict) -> None:
        """The card's classes, version, crop, test-time augmentation, calibration and thresholds."""
        self.classes: list[str] = list(card["classes"])
        self.version: str = card["version"]
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
        self.specimen_rule = shift.rule_from_card(card)  # the specimen check (ml.shift)
        self.crop_settings = CropSettings(
            method=self.crop_method,
            input_size=self.input_size,
            field_rbc=self.field_rbc,
            crop_side=self.crop_side,
            mask_radius=self.mask_radius,
        )

    def _build_network(self, model) -> None:
        """image -> (pooled features, probabilities): what every backend computes, as a Keras model
        and as one compiled ``tf.function`` (crops are always input_size: one trace)."""
        # Keras and TensorFlow: imported when a model is built (``import ml.predictor`` stays cheap).
        import keras
        import tensorflow as tf

        self.network = keras.Model(model.input, [model.get_layer(FEATURES_LAYER).output, model.output])
        s = self.input_size
        spec = tf.TensorSpec((None, s, s, 3), tf.float32)
        self.network_fn = tf.function(lambda x: self.network(x, training=False), input_signature=[spec])

    def _views(self, crops: np.ndarray) -> np.ndarray:
        """uint8 crops (N,S,S,3) -> float32 (N*V,S,S,3), the V dihedral views of each crop in turn
        (same transforms as ``tta_predict``: k quarter turns counter-clockwise, then a flip for k>=4)."""
        out = []
        for c in crops:
            for k in dihedral_views(self.tta_views):
                v = np.rot90(c, k % 4, axes=(0, 1))
                out.append(v[:, ::-1] if k >= 4 else v)
        return np.asarray(out, dtype=np.float32)

    def infer(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """TTA-averaged (features, probabilities) of uint8 crops through the chosen backend."""
        n, v = len(crops), self.n_views
        feats, probs = [], []
        if self._litert is not None:  # the litert backend (and only it, see __init__)
            with self._run_lock:
                for c in crops:
                    f, p = self._litert.run(self._views(c[None]))
                    feats.append(f.mean(0, keepdims=True))
                    probs.append(p.mean(0, keepdims=True))
        elif self.backend == "naive":  # the naive way: model.predict on each image's views
            for c in crops:
                f, p = self.network.predict(self._views(c[None]), verbose=0)
                feats.append(f.mean(0, keepdims=True))
                probs.append(p.mean(0, keepdims=True))
        else:  # one compiled call per chunk of images, all views at once
            step = max(1, BATCH // v)  # about BATCH views per call (bounded memory)
            for i in range(0, n, step):
                x = self._views(crops[i : i + step])
                f, p = self.network_fn(x)
                m = len(x) // v
                feats.append(f.numpy().reshape(m, v, -1).mean(1))
                probs.append(p.numpy().reshape(m, v, -1).mean(1))
        return np.concatenate(feats), np.concatenate(probs)

    def prepare(self, image) -> Prepared:
        """Decode ``image``, locate its white cell and crop it as the model reads it."""
        rgb = to_rgb(image)
        small, f = downscale(rgb)
        if self.crop_method == "rbc_scale":
            frame = normalize.analyse(small)
            crop = normalize.canonical_crop(small, frame, out_size=self.input_size, field_rbc=self.field_rbc)
            b = frame.boxes[0].as_tuple() if frame.boxes else None
            return Prepared(crop, _input_box(b, f), frame.smear_reason, None)
        boxes = locate_cells(small, max_cells=1)
        box = boxes[0] if boxes else None
        crop, b = crop_cell(
            small, box=box, out_size=self.input_size, side=self.crop_side, mask_radius=self.mask_radius
        )
        cell_box = _input_box(b, f)
        colour_feats = None
        if self.colour_model is not None:
            same = colour.reads_crop(self.crop_side, self.input_size, self.mask_radius)
            colour_feats = colour.colour_features((crop if same else colour.colour_crop(small, box))[None])[0]
        return Prepared(crop, cell_box, smear_check(small, box), colour_feats)

    def _flag_reason(self, located: str | None, distance: float, confidence: float) -> str | None:
        """The locator's flag first, then the feature distance, then the calibrated confidence."""
        if located:
            return located
        if distance > self.thresholds.get("ood_distance", np.inf):
            return "not_blood_smear"
        if confidence < self.thresholds.get("min_confidence", 0.0):
            return "low_confidence"
        return None

    def predict(self, images: Sequence) -> list[Prediction]:
        if not isinstance(images, (list, tuple)):
            images = list(images)
        if not images:
            return []
        prepared = [self.prepare(im) for im in images]
        crops = np.stack([p.crop for p in prepared])
        feats, probs = self.infer(crops)
        if self.colour_model is not None:
            # prepare() computes colour features whenever the model has a colour opinion.
            feats_c = cast("list[np.ndarray]", [p.colour_features for p in prepared])
            colour_lp = colour.log_probs(self.colour_model, np.stack(feats_c))
            probs = colour.fuse(probs, colour_lp, self.colour_weight)
        cal = ood.calibrate(probs, self.temperature, self.class_bias)
        dist = ood.distance(self.ood_stats, feats) if self.ood_stats is not None else np.zeros(len(crops))
        out = []
        for i, prep in enumerate(prepared):
            p = cal[i] / cal[i].sum()
            top = int(np.argmax(p))
            reason = self._flag_reason(prep.flag_reason, dist[i], p[top])
            out.append(
                Prediction(
                    label=self.classes[top],
                    confidence=float(p[top]),
                    probabilities={c: float(p[j]) for j, c in enumerate(self.classes)},
                    status="unidentified" if reason else "classified",
                    flag_reason=reason,
                    flag_message=FLAG_MESSAGES.get(reason) if reason else None,
                    model_version=self.version,
                    cell_box=prep.cell_box,
                )
            )
        return out

    def field_cells(self, image, max_cells: int = 10) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
        """Every white cell of a whole field as ``(nucleus box, cell image)``, each cell image framed
        so that ``predict`` reads it at the field's scale (``ml.normalize.cell_windows``; the first
        model's cards: ``ml.locate``'s reference-field crop)."""
        rgb = to_rgb(image)
        if self.crop_method == "rbc_scale":
            return [(b.as_tuple(), crop) for b, crop in normalize.cell_windows(rgb, max_cells=max_cells)]
        return [(b.as_tuple(), crop_cell(rgb, box=b)[0]) for b in locate_cells(rgb, max_cells=max_cells)]

    def predict_one(self, image) -> Prediction:
        return self.predict([image])[0]

    def ood_scores(self, images: Sequence) -> np.ndarray:
        """Raw out-of-distribution scores (diagnostics and threshold tuning)."""
        if self.ood_stats is None:
            raise ValueError(f"{self.model_path}: no OOD statistics in this bundle")
        crops = np.stack([self.prepare(im).crop for im in images])
        feats, _ = self.infer(crops)
        return ood.distance(self.ood_stats, feats)

    def gradcam_map(self, crop: np.ndarray, class_index: int | None = None) -> tuple[np.ndarray, int]:
        """Grad-CAM of one prepared crop: (HxW map in 0..1, class index used; None: the top class)."""
        with self._gradcam_lock:
            return self._gradcam.map(crop, class_index)

    def gradcam_png(self, image, class_name: str | None = None) -> bytes:
        """Heat-map overlay PNG of ``image`` for ``class_name`` (default: the class the predictor
        answers for it, after its views, colour opinion and calibration, not the raw network's argmax).

        The overlay is drawn on the image as the predictor sees it: inputs over ``ml.images.MAX_SIDE``
        pixels on their longer side are scaled down uniformly to it (a prediction's ``cell_box`` is in
        the input's own pixels: divide by the input's longer side / the overlay's longer side to draw
        it here).
        """
        if class_name is not None and class_name not in self.classes:
            raise ValueError(f"unknown class {class_name!r}; model classes: {self.classes}")
        if class_name is None:
            class_name = self.predict_one(image).label
        rgb, _ = downscale(to_rgb(image))
        box, win, crop = cell_window(rgb, self.crop_settings)
        cam, _ = self.gradcam_map(crop, self.classes.index(class_name))
        return overlay_png(rgb, cam, win, box)


_LOCK = threading.Lock()
_CACHE: dict[str, Predictor] = {}


def load_predictor(model_path: str | Path | None = None, backend: str = "auto") -> Predictor:
    """Load (once per path and backend per process) the model at ``model_path`` (None: the shipped model).

    ``backend``: ``"keras"`` (a compiled ``tf.function``, all views in one call), ``"litert"``
    (the model exported to LiteRT and run with XNNPACK, verified within 1e-3 of Keras, see
    ``ml.litert``), ``"naive"`` (``model.predict`` per image, for comparisons only) or
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
            model, card, stats = load_bundle(path)
        if backend == "auto":
            try:
                pred = _litert_predictor(model, card, stats, path)
            except Exception as exc:  # noqa: BLE001  any export/runtime failure: fall back to Keras
                logging.getLogger(__name__).warning("LiteRT backend unavailable (%s); using Keras", exc)
                pred = Predictor(model, card, stats, path, backend="keras")
        elif backend == "litert":
            pred = _litert_predictor(model, card, stats, path)
        else:
            pred = Predictor(model, card, stats, path, backend=backend)
        _CACHE[key] = pred
        _CACHE.setdefault(f"{path.resolve()}|{pred.backend}", pred)
        return pred


def _litert_predictor(model, card: dict, stats: dict | None, path: Path) -> Predictor:
    """The model exported to LiteRT (or its verified cached export, ``ml.litert.ensure``) and run."""
    graph = Predictor(model, card, stats, path, backend="keras")  # the graph the export is made of
    size, n_classes = graph.input_size, len(graph.classes)
    tfl, meta = litert.ensure(graph.network, graph.network_fn, graph.version, graph.n_views, size, n_classes)
    runner = litert.LiteRTRunner(tfl, n_classes)
    if runner.input_shape != (graph.n_views, size, size, 3):
        raise ModelLoadError(f"LiteRT input {runner.input_shape} does not fit this model")
    return Predictor(model, card, stats, path, backend="litert", litert_export=LiteRTExport(runner, meta))
