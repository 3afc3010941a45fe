"""evaluate and predict command lines on a tiny folder."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ml.taxonomy import CLASSES
from ml.tests.conftest import FIXTURES

pytestmark = pytest.mark.realmodel  # uses the shipped model


REPO = Path(__file__).resolve().parents[2]


def test_evaluate_cli_on_tiny_folder(tmp_path):
    data = tmp_path / "data"
    for f in FIXTURES.glob("*.jpeg"):
        cls = f.stem.split("_")[0]
        (data / cls.lower()).mkdir(parents=True, exist_ok=True)  # lower case: matched case-insensitively
        shutil.copy(f, data / cls.lower() / f.name)
    (data / "SMUDGE").mkdir()  # not a model class: listed as skipped
    out = tmp_path / "m.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ml.evaluate",
            "--data",
            str(data),
            "--json",
            str(out),
            "--plots",
            str(tmp_path / "plots"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr
    assert "SMUDGE" in r.stdout
    m = json.loads(out.read_text())
    assert {
        "accuracy",
        "macro_f1",
        "per_class",
        "confusion_matrix",
        "n_images",
        "model_version",
        "unidentified_rate",
    } <= set(m)
    assert m["n_images"] == 12
    assert m["accuracy"] >= 0.75
    assert sum(map(sum, m["confusion_matrix"])) == 12
    assert (tmp_path / "plots" / "confusion_matrix.png").stat().st_size > 1000


def test_predict_cli():
    f = FIXTURES / "LYMPHOCYTE_1.jpeg"
    r = subprocess.run([sys.executable, "-m", "ml.predict", str(f)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout.strip().splitlines()[-1])
    assert obj["label"] in CLASSES
    assert list(obj["probabilities"]) == list(CLASSES)


def test_evaluate_counts_readable_images_and_lists_the_others(tmp_path):
    data = tmp_path / "data"
    (data / "NEUTROPHIL").mkdir(parents=True)
    for f in sorted(FIXTURES.glob("NEUTROPHIL_*.jpeg")):
        shutil.copy(f, data / "NEUTROPHIL" / f.name)
    (data / "NEUTROPHIL" / "._NEUTROPHIL_1.jpeg").write_bytes(b"\0\5\26\7")  # macOS side file: ignored
    (data / "NEUTROPHIL" / "broken.jpeg").write_bytes(b"\xff\xd8\xff not really")
    out = tmp_path / "m.json"
    r = subprocess.run(
        [sys.executable, "-m", "ml.evaluate", "--data", str(data), "--json", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr
    m = json.loads(out.read_text())
    n = len(list(FIXTURES.glob("NEUTROPHIL_*.jpeg")))
    assert m["n_images"] == n
    assert sum(map(sum, m["confusion_matrix"])) == n
    assert [u["path"] for u in m["unreadable_files"]] == [str(data / "NEUTROPHIL" / "broken.jpeg")]
    assert f"not counted, not one readable image: {data / 'NEUTROPHIL' / 'broken.jpeg'}: " in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(("module", "args"), [("ml.evaluate", ["--data"]), ("ml.export", ["--model"])])
def test_cli_user_errors_are_one_line_not_a_traceback(tmp_path, module, args):
    missing = tmp_path / "nope.keras"
    r = subprocess.run(
        [sys.executable, "-m", module, *args, str(missing)], capture_output=True, text=True, cwd=REPO
    )
    assert r.returncode == 2
    assert r.stderr.startswith("error: ")
    assert "Traceback" not in r.stderr
