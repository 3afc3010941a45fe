"""LiteRT (TFLite) export of the serving graph, run with the XNNPACK CPU delegate.

The exported graph is the shipped Keras model's ``(avg_pool features, probabilities)``
pair with a fixed input of ``(tta views, input_size, input_size, 3)`` float32: one
invoke classifies one image in all its test-time views. The export is cached,
not shipped: ``python -m ml.export`` (or the first ``ml.predictor.load_predictor`` with the
``litert``/``auto`` backend) writes ``<cache>/<model version>-v<views>-s<size>-tf<TF version>.tflite``
plus a ``.json`` sidecar holding the file's SHA-256 and the largest difference
from the Keras model measured when it was written. A cache file is used only
when its sidecar matches (model version, TF version, hash) and that measured
difference is within ``TOLERANCE``; otherwise it is exported again.

Cache directory: ``$HEMATOVISION_ML_CACHE`` or ``<repo>/var/cache/ml``. Threads per
interpreter: ``$HEMATOVISION_INFERENCE_THREADS`` (default: all CPUs; with several
server workers on few cores, 1 per worker avoids oversubscription).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

TOLERANCE = 1e-3  # max abs difference of probabilities (and features, relative) from Keras
CACHE_ENV = "HEMATOVISION_ML_CACHE"
THREADS_ENV = "HEMATOVISION_INFERENCE_THREADS"  # LiteRT threads per process (default: all CPUs)
DEFAULT_CACHE = Path(__file__).resolve().parent.parent / "var" / "cache" / "ml"


class ExportError(RuntimeError):
    """The LiteRT export could not be made or does not match the Keras model."""


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def _tf_version() -> str:
    import tensorflow as tf

    return tf.__version__


def cache_paths(version: str, views: int, size: int) -> tuple[Path, Path]:
    stem = f"{version}-v{views}-s{size}-tf{_tf_version()}"
    d = cache_dir()
    return d / f"{stem}.tflite", d / f"{stem}.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verification_input(views: int, size: int) -> np.ndarray:
    """Deterministic 0..255 float32 input: smooth colour gradients plus noise (all views differ)."""
    rs = np.random.RandomState(1234)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    out = []
    for v in range(views):
        base = np.stack([200 * xx, 180 * yy, 120 + 100 * xx * yy], -1) + 30 * v
        out.append(np.clip(base + rs.normal(0, 25, base.shape), 0, 255))
    return np.asarray(out, np.float32)


def make_interpreter(path: Path, num_threads: int | None = None):
    """A LiteRT interpreter (XNNPACK delegate is on by default) for ``path``."""
    import warnings

    threads = num_threads or int(os.environ.get(THREADS_ENV) or 0) or os.cpu_count() or 1
    try:  # the standalone LiteRT runtime, when installed
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # noqa: N806
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        it = Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    return it


class LiteRTRunner:
    """Runs the exported graph: ``run(x)`` with x (views, S, S, 3) float32 -> (features, probs)."""

    def __init__(self, path: Path, n_classes: int, num_threads: int | None = None):
        self.path = path
        self.it = make_interpreter(path, num_threads)
        inp = self.it.get_input_details()
        if len(inp) != 1:
            raise ExportError(f"{path}: expected one input, found {len(inp)}")
        self.input_index = inp[0]["index"]
        self.input_shape = tuple(int(v) for v in inp[0]["shape"])
        outs = self.it.get_output_details()
        probs = [o for o in outs if int(o["shape"][-1]) == n_classes]
        feats = [o for o in outs if int(o["shape"][-1]) != n_classes]
        if len(outs) != 2 or len(probs) != 1 or len(feats) != 1:
            raise ExportError(f"{path}: unexpected outputs {[tuple(o['shape']) for o in outs]}")
        self.probs_index, self.feats_index = probs[0]["index"], feats[0]["index"]

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.it.set_tensor(self.input_index, np.ascontiguousarray(x, dtype=np.float32))
        self.it.invoke()
        return self.it.get_tensor(self.feats_index).copy(), self.it.get_tensor(self.probs_index).copy()


def max_difference(keras_fn, runner: LiteRTRunner, x: np.ndarray) -> float:
    """Largest of: max |probs diff|, max |features diff| / max(1, max |features|)."""
    import tensorflow as tf

    f_ref, p_ref = (t.numpy() for t in keras_fn(tf.constant(x)))
    f, p = runner.run(x)
    return float(max(np.abs(p - p_ref).max(), np.abs(f - f_ref).max() / max(1.0, float(np.abs(f_ref).max()))))


def export(both_model, keras_fn, version: str, views: int, size: int, n_classes: int) -> tuple[Path, dict]:
    """Export ``both_model`` to the cache (atomically), verify it against ``keras_fn``, write the sidecar."""
    import keras

    tfl, side = cache_paths(version, views, size)
    tfl.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    fd, tmp = tempfile.mkstemp(suffix=".tflite", dir=tfl.parent)
    os.close(fd)
    try:
        both_model.export(
            tmp,
            format="litert",
            input_signature=[keras.InputSpec(shape=(views, size, size, 3), dtype="float32")],
            verbose=False,
        )
        runner = LiteRTRunner(Path(tmp), n_classes, num_threads=1)
        diff = max_difference(keras_fn, runner, verification_input(views, size))
        if not diff <= TOLERANCE:
            raise ExportError(f"LiteRT export differs from Keras by {diff:.2e} (> {TOLERANCE})")
        meta = {
            "model_version": version,
            "tf_version": _tf_version(),
            "views": views,
            "input_size": size,
            "sha256": sha256(Path(tmp)),
            "max_abs_diff_vs_keras": diff,
            "export_s": round(time.perf_counter() - t, 2),
            "command": "python -m ml.export",
        }
        os.replace(tmp, tfl)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fd, tmp_side = tempfile.mkstemp(suffix=".json", dir=tfl.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(meta, fh, indent=2)
    os.replace(tmp_side, side)
    return tfl, meta


def cached(version: str, views: int, size: int) -> tuple[Path, dict] | None:
    """The verified cache file for this model and TF version, or None."""
    tfl, side = cache_paths(version, views, size)
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    ok = (
        tfl.is_file()
        and meta.get("model_version") == version
        and meta.get("tf_version") == _tf_version()
        and float(meta.get("max_abs_diff_vs_keras", np.inf)) <= TOLERANCE
        and meta.get("sha256") == sha256(tfl)
    )
    return (tfl, meta) if ok else None


def ensure(both_model, keras_fn, version: str, views: int, size: int, n_classes: int) -> tuple[Path, dict]:
    """The cached export if valid, else a fresh one (one process at a time exports: file lock)."""
    hit = cached(version, views, size)
    if hit:
        return hit
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".export.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            hit = cached(version, views, size)  # another worker may have written it meanwhile
            return hit or export(both_model, keras_fn, version, views, size, n_classes)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
