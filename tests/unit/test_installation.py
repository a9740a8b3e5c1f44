"""The tests run the pyvpn of the installation under test, never another one on the machine (tests/conftest.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("exe", ["pyvpn", "pyvpn-wg"])
def test_commands_resolve_to_the_installation_under_test(exe: str) -> None:
    expected = Path(sys.executable).parent / exe
    assert shutil.which(exe) == str(expected)
    # Child processes (the harnesses' `ip netns exec ... pyvpn`, wg-quick's WG_QUICK_USERSPACE_IMPLEMENTATION)
    # inherit the PATH, so a shell started by a test finds the same one.
    found = subprocess.run(["sh", "-c", f"command -v {exe}"], capture_output=True, text=True, check=True).stdout
    assert found.strip() == str(expected)


def test_installed_pyvpn_is_this_checkout() -> None:
    out = subprocess.run([shutil.which("pyvpn") or "pyvpn", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "server" in out.stdout
    import vpn

    assert Path(vpn.__file__).resolve().parents[1] == Path(__file__).resolve().parents[2]
