"""Network-namespace helpers for the tests that need root.

Every namespace gets a unique name (``pv-<pid>-<n>-<tag>``) and is removed, with every
process still running inside it, when the fixture or the ``with`` block ends, even on
failure.  Addresses used by the tests stay inside these namespaces: 198.18.0.0/15 for
underlays, 198.19.x / 100.64.x / fd00::/8 for tunnels.
"""

from __future__ import annotations

import itertools
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

_counter = itertools.count()


def is_root() -> bool:
    return os.geteuid() == 0


def run(cmd: Sequence[str] | str, *, check: bool = True, timeout: float = 30.0,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    if isinstance(cmd, str):
        cmd = shlex.split(cmd)
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


class Netns:
    """One network namespace with loopback up, and the processes started in it."""

    def __init__(self, tag: str = "ns") -> None:
        self.name = f"pv-{os.getpid()}-{next(_counter)}-{tag}"[:15 + 16]
        run(["ip", "netns", "add", self.name])
        self.procs: list[subprocess.Popen[bytes]] = []
        self.run("ip link set lo up")

    # -- commands -------------------------------------------------------------------
    def argv(self, cmd: Sequence[str] | str) -> list[str]:
        if isinstance(cmd, str):
            cmd = shlex.split(cmd)
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, cmd: Sequence[str] | str, **kw: object) -> subprocess.CompletedProcess[str]:
        return run(self.argv(cmd), **kw)  # type: ignore[arg-type]

    def popen(self, cmd: Sequence[str] | str, *, stdout: object = subprocess.PIPE,
              stderr: object = subprocess.STDOUT, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(self.argv(cmd), stdout=stdout, stderr=stderr, env=env,  # type: ignore[arg-type]
                             start_new_session=True)
        self.procs.append(p)
        return p

    # -- teardown -------------------------------------------------------------------
    def pids(self) -> list[int]:
        out = run(["ip", "netns", "pids", self.name], check=False).stdout
        return [int(x) for x in out.split()]

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 3
        for p in self.procs:
            try:
                p.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for _ in range(3):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(5)
            for f in (p.stdout, p.stderr):
                if f is not None:
                    f.close()
        run(["ip", "netns", "del", self.name], check=False)

    def __enter__(self) -> "Netns":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def veth(a: Netns, a_if: str, b: Netns, b_if: str) -> None:
    """Create a veth pair with one end in each namespace, both ends up."""
    # Temporary names must be unique machine-wide (parallel pytest runs): pid + counter, ≤ 15 chars.
    n = next(_counter)
    tmp_a, tmp_b = f"pva{os.getpid() % 100000}x{n}"[:15], f"pvb{os.getpid() % 100000}x{n}"[:15]
    run(["ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b])
    run(["ip", "link", "set", tmp_a, "netns", a.name, "name", a_if])
    run(["ip", "link", "set", tmp_b, "netns", b.name, "name", b_if])
    a.run(f"ip link set {a_if} up")
    b.run(f"ip link set {b_if} up")


@contextmanager
def namespaces(*tags: str) -> Iterator[list[Netns]]:
    made: list[Netns] = []
    try:
        for t in tags:
            made.append(Netns(t))
        yield made
    finally:
        for ns in reversed(made):
            ns.close()


def wait_for(pred, timeout: float = 10.0, interval: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    """Poll ``pred()`` until it is true or ``timeout`` seconds pass (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())
