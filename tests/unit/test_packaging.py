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
    # A scratch environment without pip of its own, installed into by this pip (--python): the venv
    # running the tests keeps its own install (pip --prefix would uninstall it first).
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "install", "-q",
                        "--no-deps", "-e", str(ROOT)],
                       check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert _our_lines(r.stdout + r.stderr) == []
    assert list(env.rglob("__editable__*.pth"))
