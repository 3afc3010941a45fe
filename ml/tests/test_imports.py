"""`import ml` stays light: no Django, and no TensorFlow until a model is used."""

import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


def test_import_ml_does_not_import_django_or_tensorflow():
    mods = _modules_after("import ml, ml.predictor, ml.locate, ml.config")
    assert not any(m == "django" or m.startswith("django.") for m in mods)
    assert "tensorflow" not in mods
    assert "keras" not in mods
