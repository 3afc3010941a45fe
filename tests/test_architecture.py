"""The layout's import contracts (.importlinter): ml is plain Python, and only the bridge imports it."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout


def _lint_imports(config: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """import-linter run on ``config`` (the repository's contracts, edited by the test)."""
    (tmp_path / "contracts.ini").write_text(config)
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "lint-imports"),
            "--no-cache",
            "--config",
            str(tmp_path / "contracts.ini"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_broken_contract_is_reported(tmp_path):
    """The checker fails when a web module imports ml directly (the contract is not vacuous)."""
    config = (REPO / ".importlinter").read_text().replace("    classifier.inference -> ml.*\n", "")
    result = _lint_imports(config, tmp_path)
    assert result.returncode == 1
    assert "the web app reaches ml only through classifier.inference BROKEN" in result.stdout
    assert "classifier.inference -> ml." in result.stdout


def test_a_cli_below_the_library_breaks_the_ml_layers(tmp_path):
    """The ml layers contract is not vacuous: with ``ml.predict`` (a CLI) put under the library it
    composes, the checker reports it."""
    config = (REPO / ".importlinter").read_text()
    config = config.replace(" | predict | ", " | ")
    config = config.replace(" : _torchpickle\n", " : _torchpickle : predict\n")
    assert ": predict\n" in config
    result = _lint_imports(config, tmp_path)
    assert result.returncode == 1
    assert "no library module imports a CLI) BROKEN" in result.stdout
    assert "ml.predict -> ml.predictor" in result.stdout
