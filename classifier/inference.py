"""The only bridge from Django to the ``ml`` package.

``get_predictor()`` builds the predictor named by ``HEMATOVISION_PREDICTOR`` once
per process (the way ``django.contrib.auth.hashers`` caches hashers) and is
cleared when a test changes the setting. Nothing is loaded at import time or
in ``AppConfig.ready()``; the servers warm it up at start in a background thread
(``warm_up_in_background``: runserver, gunicorn's post_worker_init) and the
portal shows ``readiness()``.
"""

import functools
import threading
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver


class PredictorUnavailable(RuntimeError):
    """The model cannot be loaded; uploads are kept as pending."""


class Prediction(Protocol):
    """One image's answer, as the web stores it (``ml.predictor.Prediction``, the fake's)."""

    label: str  # the top class, kept even when flagged
    confidence: float
    probabilities: dict[str, float]
    status: str  # "classified" or "unidentified"
    flag_reason: str | None
    flag_message: str | None
    model_version: str
    cell_box: tuple | None


@runtime_checkable
class Predictor(Protocol):
    """What the web needs of a model: the served ``ml.predictor.Predictor`` and the tests'
    ``classifier.testing.fake_predictor.FakePredictor`` both implement it."""

    version: str  # the bundle hash every result records
    classes: list[str]  # model output order
    card: dict

    def predict_one(self, image) -> Prediction: ...

    def gradcam_png(self, image, class_name: str | None = None) -> bytes: ...

    def field_cells(self, image, max_cells: int = 10) -> Sequence[tuple[tuple[int, ...], object]]: ...

    # Optional: ``specimen_rule`` (an ``ml.shift.SpecimenRule``, the served predictor's); a predictor
    # without one (the tests' fake) is judged by the default rule (``specimen_rule()``).


class SpecimenVerdict(Protocol):
    """The specimen check's answer (``ml.shift.SpecimenVerdict``): the cells the model read, how many
    it flagged, the smallest alarming count (None: too few cells to judge) and the alarm."""

    @property
    def cells(self) -> int: ...

    @property
    def flagged(self) -> int: ...

    @property
    def critical(self) -> int | None: ...

    @property
    def alarm(self) -> bool: ...

    @property
    def share(self) -> float: ...

    def to_dict(self) -> dict: ...


_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _build(kind: str, model_path: str | None, backend: str):
    if kind in ("fake", "fake8"):  # the first (four-class) model's stand-in, or the eight-class one's
        from classifier.cells.classes import MODEL_CODES
        from classifier.testing.fake_predictor import FakePredictor

        return FakePredictor(classes=MODEL_CODES) if kind == "fake8" else FakePredictor()
    if kind != "ml":
        raise PredictorUnavailable(f"Unknown HEMATOVISION_PREDICTOR {kind!r}; use 'ml', 'fake' or 'fake8'.")
    from ml import predictor as ml_predictor

    try:
        return ml_predictor.load_predictor(model_path, backend=backend)
    except (ml_predictor.ModelLoadError, ValueError) as exc:  # ValueError: unknown backend name
        raise PredictorUnavailable(str(exc)) from exc


# What the portal shows of the model (``readiness()``): "idle" (not asked for yet), "loading",
# "ready" or "unavailable" (with the reason).
_readiness = {"state": "idle", "detail": ""}


def get_predictor() -> Predictor:
    """The process-wide predictor; raises PredictorUnavailable if the model cannot load."""
    if _readiness["state"] != "ready":
        _readiness.update(state="loading", detail="")
    with _lock:
        try:
            predictor = _build(
                settings.HEMATOVISION_PREDICTOR,
                settings.HEMATOVISION_MODEL_PATH,
                settings.HEMATOVISION_INFERENCE_BACKEND,
            )
        except PredictorUnavailable as exc:
            _readiness.update(state="unavailable", detail=str(exc))
            raise
    _readiness.update(state="ready", detail="")
    return predictor


def readiness() -> dict:
    """``{"state": "idle" | "loading" | "ready" | "unavailable", "detail": str}``; loads nothing."""
    return dict(_readiness)


_warmer: threading.Thread | None = None


def warm_up_in_background() -> threading.Thread:
    """Load the model in a background thread, so that the first upload does not wait for it.

    Called by the server start-up hooks (``manage.py runserver``, gunicorn's ``post_worker_init``),
    never at import or in ``AppConfig.ready()`` (management commands and tests load nothing).
    """
    global _warmer
    if _warmer is None or not _warmer.is_alive():
        _readiness.update(state="loading", detail="")
        _warmer = threading.Thread(target=_warm_up, name="model-warm-up", daemon=True)
        _warmer.start()
    return _warmer


def _warm_up() -> None:
    import logging

    try:
        get_predictor()
    except PredictorUnavailable as exc:  # uploads are kept as pending; the page says why
        logging.getLogger(__name__).error("model warm-up failed: %s", exc)


def field_cells(rgb, max_cells: int = 10) -> list[tuple[tuple[int, int, int, int], object]]:
    """Every white cell of a whole field as ``(nucleus box, cell image)``, each cell image framed so
    that the serving model reads it at the field's scale; raises PredictorUnavailable."""
    return get_predictor().field_cells(rgb, max_cells=max_cells)


def locate_cell_windows(rgb, max_cells: int = 10) -> list[tuple[tuple[int, int, int, int], object]]:
    """The lab-independent locator on its own (``ml.normalize.cell_windows``), for stand-in models."""
    from ml import normalize

    return [(box.as_tuple(), window) for box, window in normalize.cell_windows(rgb, max_cells=max_cells)]


def model_summary() -> dict:
    """The serving model's identity, calibration, flag thresholds and figures, from its card
    (``ml.predictor.model_summary``); raises PredictorUnavailable if the model cannot load."""
    from ml.predictor import model_summary as summary

    return summary(get_predictor().card)


def specimen_rule():
    """The serving model's specimen check (``ml.shift.SpecimenRule``), without loading the model.

    The loaded predictor's rule once it is ready (or at once for a stand-in, which loads nothing);
    while the real model is not loaded, the same rule read from its card beside the model file; the
    default rule (``ml.shift.DEFAULT_BASE_RATE``) for a predictor without one or a card that cannot be
    read (the model unavailable).
    """
    from ml import shift

    if settings.HEMATOVISION_PREDICTOR != "ml" or _readiness["state"] == "ready":
        try:
            rule = getattr(get_predictor(), "specimen_rule", None)
        except PredictorUnavailable:
            rule = None
        return rule or shift.SpecimenRule(shift.DEFAULT_BASE_RATE)
    return _card_rule(settings.HEMATOVISION_MODEL_PATH)


@functools.lru_cache(maxsize=4)
def _card_rule(model_path: str | None):
    """``ml.shift.rule_from_card`` of the card beside ``model_path`` (None: the shipped model)."""
    import json
    from pathlib import Path

    from ml import predictor as ml_predictor
    from ml import shift

    path = Path(model_path) if model_path else ml_predictor.DEFAULT_MODEL_PATH
    try:
        card = json.loads((path.parent / "model_card.json").read_text())
        return shift.rule_from_card(card)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return shift.SpecimenRule(shift.DEFAULT_BASE_RATE)


def specimen_check(*, cells: int, flagged: int) -> SpecimenVerdict:
    """The specimen check of ``cells`` read by the model, ``flagged`` of them unidentified."""
    return specimen_rule().check(cells, flagged)


def image_decode_errors() -> tuple[type[Exception], ...]:
    """Exception types a predictor raises for pixels it cannot use."""
    if settings.HEMATOVISION_PREDICTOR == "ml":
        from ml.predictor import ImageDecodeError

        return (ImageDecodeError,)
    return (ValueError,)


@receiver(setting_changed)
def _reset_predictor(*, setting, **kwargs):
    if setting in {"HEMATOVISION_PREDICTOR", "HEMATOVISION_MODEL_PATH", "HEMATOVISION_INFERENCE_BACKEND"}:
        _build.cache_clear()
        _card_rule.cache_clear()
        _readiness.update(state="idle", detail="")
