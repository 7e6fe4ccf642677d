"""The import contracts hold."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_hold() -> None:
    """The layers (cli > deploy > stages > kernel) and the independent stages hold; only
    nicheloop.bus imports kafka and only nicheloop.registry imports mlflow."""
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
