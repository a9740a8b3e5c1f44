"""Network namespaces for the tests that need root, the benchmarks and the demo.

Theory of operation:

1. ``Netns(tag)`` creates a namespace with a unique name (``pv-<pid>-<n>-<tag>``; callers that sweep their
   own leftovers, like the benchmark, pass ``name=``) and brings its loopback up.  With ``cpu=`` every command
   and process in it runs on that CPU (``taskset -c``).
2. :meth:`Netns.run` runs a bounded command inside it; :meth:`Netns.popen` starts a process in its own session
   and remembers it.
3. :meth:`Netns.close` (idempotent; also run by ``with``) stops the processes it started (SIGTERM, SIGKILL
   after a bounded wait), kills whatever still runs inside, and deletes the namespace, which deletes the veth,
   tun and vxlan devices in it.  :func:`namespaces` and the ``netns_factory`` fixture close theirs even on
   failure.

Every command has a timeout.  Addresses used with these namespaces stay inside them: 198.18.0.0/15 for
underlays, 198.19.x / 100.64.x / fd00::/8 for tunnels.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Self, TypeVar

# -- implementation constants ----------------------------------------------------------------------------
CMD_TIMEOUT = 30.0  # seconds for any command run through sh() / Netns.run()
STOP_TIMEOUT = 3.0  # seconds between SIGTERM and SIGKILL
POLL_INTERVAL = 0.05  # seconds between polls

T = TypeVar("T")

_counter = itertools.count()


class LabError(AssertionError):
    """A lab command failed or timed out; the message says which and why.

    An ``AssertionError`` so that a failed set-up step in a test reads as a test failure.
    """


def is_root() -> bool:
    return os.geteuid() == 0


def have(tool: str) -> bool:
    """True when ``tool`` is on PATH."""
    return shutil.which(tool) is not None


def _argv(cmd: Sequence[str] | str) -> list[str]:
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


def sh(cmd: Sequence[str] | str, *, timeout: float = CMD_TIMEOUT, check: bool = True, input: str | None = None,
       env: dict[str, str] | None = None, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (an argv, or a string split like a shell would) with a timeout and captured text output.

    :param check: raise :class:`LabError` on a non-zero exit status, a timeout or a missing program;
        otherwise those come back as exit status 124 (timeout) or 127 (not found).
    """
    argv = _argv(cmd)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input,
                              env=env, cwd=cwd, check=False)
    except subprocess.TimeoutExpired:
        if check:
            raise LabError(f"{' '.join(argv)} timed out after {timeout:g}s") from None
        return subprocess.CompletedProcess(argv, 124, "", f"timed out after {timeout:g}s")
    except FileNotFoundError as e:
        if check:
            raise LabError(f"{argv[0]}: not installed ({e.strerror})") from None
        return subprocess.CompletedProcess(argv, 127, "", f"{argv[0]}: not found")
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


#: The name the tests use for :func:`sh`.
run = sh


def wait_for(pred: Callable[[], T], timeout: float = 10.0, interval: float = POLL_INTERVAL) -> T:
    """Call ``pred()`` until it returns something true or ``timeout`` seconds pass (bounded); return its last
    value (so a test can wait for a result and use it)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def unique_ifname(prefix: str, in_use: Callable[[str], bool]) -> str:
    """``<prefix><6 hex>``, an interface name that ``in_use`` says is free (its sockets do not exist yet).

    :param prefix: at most 9 characters, so that the name fits in IFNAMSIZ.
    :raises ValueError: the prefix is too long.
    :raises LabError: 100 random names were all in use.
    """
    if len(prefix) > 9:
        raise ValueError(f"prefix {prefix!r} is too long for a 15-character interface name")
    for _ in range(100):
        name = prefix + secrets.token_hex(3)
        if not in_use(name):
            return name
    raise LabError(f"no free interface name {prefix}<6 hex>")


def netns_argv(name: str, cmd: Sequence[str] | str, cpu: int | None = None) -> list[str]:
    """``cmd`` run inside namespace ``name`` (``ip netns exec`` execs, and so does ``taskset``, so the pid
    is the command's), on CPU ``cpu`` only when given."""
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    return [*pin, "ip", "netns", "exec", name, *_argv(cmd)]


def kill_netns_pids(name: str) -> None:
    """SIGKILL every process inside namespace ``name`` (bounded retries)."""
    for _ in range(3):
        pids = [int(x) for x in sh(["ip", "netns", "pids", name], check=False).stdout.split()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def delete_netns(name: str) -> None:
    """Kill every process inside namespace ``name`` and delete it (errors ignored)."""
    kill_netns_pids(name)
    sh(["ip", "netns", "del", name], check=False)


def list_netns() -> list[str]:
    out = sh(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def stop_process(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM ``proc``'s process group, SIGKILL after ``timeout`` seconds; reap it and close its pipes."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            f.close()


class Netns:
    """One network namespace with loopback up, and the processes started in it.

    :param tag: the end of the generated name ``pv-<pid>-<n>-<tag>``.
    :param name: the exact name instead (the caller makes it unique).
    :param cpu: the CPU every command and process in it runs on (pinned mode), or None.
    """

    def __init__(self, tag: str = "ns", *, name: str | None = None, cpu: int | None = None) -> None:
        self.name = name if name is not None else f"pv-{os.getpid()}-{next(_counter)}-{tag}"[:31]
        self.cpu = cpu
        self.procs: list[subprocess.Popen[bytes]] = []
        sh(["ip", "netns", "add", self.name])
        self.created = True
        self.run(["ip", "link", "set", "lo", "up"])

    # -- commands -------------------------------------------------------------------
    def argv(self, cmd: Sequence[str] | str) -> list[str]:
        """``cmd`` prefixed to run inside this namespace (and on its CPU); see :func:`netns_argv`."""
        return netns_argv(self.name, cmd, self.cpu)

    def run(self, cmd: Sequence[str] | str, *, timeout: float = CMD_TIMEOUT, check: bool = True,
            input: str | None = None, env: dict[str, str] | None = None,
            cwd: str | None = None) -> subprocess.CompletedProcess[str]:
        return sh(self.argv(cmd), timeout=timeout, check=check, input=input, env=env, cwd=cwd)

    def popen(self, cmd: Sequence[str] | str, *, stdout: int | IO[bytes] | None = subprocess.PIPE,
              stderr: int | IO[bytes] | None = subprocess.STDOUT,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``cmd`` inside this namespace in its own session; :meth:`close` stops it."""
        p = subprocess.Popen(self.argv(cmd), stdout=stdout, stderr=stderr, env=env, start_new_session=True)
        self.procs.append(p)
        return p

    # -- teardown -------------------------------------------------------------------
    def pids(self) -> list[int]:
        out = sh(["ip", "netns", "pids", self.name], check=False).stdout
        return [int(x) for x in out.split()]

    def close(self) -> None:
        """Stop this namespace's processes, kill what still runs inside and delete it (idempotent)."""
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + STOP_TIMEOUT
        for p in self.procs:
            try:
                p.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        if self.created:
            kill_netns_pids(self.name)
        for p in self.procs:
            stop_process(p, 5.0)
        if self.created:
            sh(["ip", "netns", "del", self.name], check=False)
            self.created = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def veth(a: Netns, a_if: str, b: Netns, b_if: str, *, up: bool = True) -> None:
    """Create a veth pair with one end in each namespace (``a_if`` in ``a``, ``b_if`` in ``b``), both up."""
    # Temporary names must be unique machine-wide (parallel pytest runs): pid + counter, ≤ 15 chars.
    n = next(_counter)
    tmp_a, tmp_b = f"pva{os.getpid() % 100000}x{n}"[:15], f"pvb{os.getpid() % 100000}x{n}"[:15]
    sh(["ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b])
    try:
        sh(["ip", "link", "set", tmp_a, "netns", a.name, "name", a_if])
        sh(["ip", "link", "set", tmp_b, "netns", b.name, "name", b_if])
    except LabError:
        sh(["ip", "link", "del", tmp_a], check=False)
        raise
    if up:
        a.run(["ip", "link", "set", a_if, "up"])
        b.run(["ip", "link", "set", b_if, "up"])


@contextmanager
def namespaces(*tags: str) -> Iterator[list[Netns]]:
    """Fresh namespaces, one per tag, all closed when the block ends (also on failure)."""
    made: list[Netns] = []
    try:
        for t in tags:
            made.append(Netns(t))
        yield made
    finally:
        for ns in reversed(made):
            ns.close()
