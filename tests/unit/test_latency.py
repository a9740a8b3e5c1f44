"""vpn/latency.py: the scheduler slice the daemon's loop thread asks for (no root)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vpn.latency import SLICE_DEFAULT, request_slice, slice_from_env


@pytest.mark.parametrize(("text", "expected"), [
    (None, SLICE_DEFAULT), ("", SLICE_DEFAULT), ("0", 0.0), ("250", 250e-6), ("nonsense", SLICE_DEFAULT),
    ("-5", 0.0), ("1e9", 0.1),
])
def test_slice_from_env(monkeypatch: pytest.MonkeyPatch, text: str | None, expected: float) -> None:
    if text is None:
        monkeypatch.delenv("PYVPN_SLICE_US", raising=False)
    else:
        monkeypatch.setenv("PYVPN_SLICE_US", text)
    assert slice_from_env() == pytest.approx(expected)


def test_request_slice_zero_does_nothing() -> None:
    assert request_slice(0) is False


def _sched_slice_after(seconds: float) -> tuple[bool, int | None]:
    """(request_slice's answer, se.slice from /proc/thread-self/sched) in a fresh interpreter."""
    code = ("from vpn.latency import request_slice\n"
            f"ok = request_slice({seconds!r})\n"
            "lines = [l for l in open('/proc/thread-self/sched') if l.startswith('se.slice')]\n"
            "print(ok, lines[0].split(':')[1].strip() if lines else None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                         check=True).stdout.split()
    return out[0] == "True", None if out[1] == "None" else int(out[1])


def test_request_slice_sets_the_threads_slice() -> None:
    """On kernels that show ``se.slice`` (EEVDF with custom slices, 6.12+) the thread gets the slice asked for."""
    ok, ns = _sched_slice_after(200e-6)
    if ns is None:
        pytest.skip("this kernel does not show se.slice in /proc/PID/sched")
    assert ok is True
    assert ns == 200_000
