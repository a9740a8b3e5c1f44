"""The first install is quiet: nothing from our metadata but progress (issue 15)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _our_lines(output: str) -> list[str]:
    # This machine's pip config names local indexes that may not exist; pip says so itself.
    return [ln for ln in output.splitlines() if ln.strip() and "is ignored: it is neither a file" not in ln]


@pytest.mark.slow
def test_editable_install_prints_no_warnings(tmp_path: Path) -> None:
    """What run.sh does (``pip install -q -e .``), into a scratch prefix: setuptools' deprecation of
    ``project.license`` as a table and its "folders ... with the same name as your package" notice
    would both show here."""
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", str(ROOT),
                        "--prefix", str(tmp_path / "prefix")],
                       check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert _our_lines(r.stdout + r.stderr) == []
    assert list((tmp_path / "prefix").rglob("__editable__*.pth"))
