"""The root helper that does the exit-time cleanup for a daemon that dropped its privileges.

Theory of operation
-------------------
``#pyvpn User`` makes the daemon give up root for good once the interface is up (:mod:`vpn.privileges`).
What its exit needs root for is known at that moment: the PreDown and PostDown hooks, wg-quick's policy
rules and nft tables for a ``/0`` route, the DNS entry, and the UAPI and control socket files in root-owned
directories.  So just before the drop, :meth:`CleanupHelper.start` runs this module as a separate process
(``python -m vpn.cleanup``), still root, and hands it that fixed plan as one JSON line.  The helper ignores
SIGINT and SIGTERM (they are for the daemon, which then asks it to clean up) and accepts exactly two
commands on its stdin pipe, each answered with ``ok`` or ``failed`` on its stdout:

1. ``predown``: run the PreDown hooks (the daemon is about to close the interface);
2. ``teardown``: remove the nft tables and policy rules, unset DNS, remove the socket files when no
   process listens on them any more, run the PostDown hooks; then exit.

If the pipe closes first (the daemon died), the helper does the ``teardown`` part and exits.  Nothing the
unprivileged daemon sends can widen the plan: the commands take no arguments, the hooks and rules come from
the configuration read while the daemon was still root.  ``SaveConfig`` is not offered for that reason (the
daemon would choose what root writes into a file whose hooks root runs) and is skipped after a drop.
"""

from __future__ import annotations

import json
import logging
import select
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("pyvpn.cleanup")

#: Seconds the daemon waits for one step of the helper (hooks may take a while).
STEP_TIMEOUT = 60.0


class CleanupHelper:
    """The daemon's handle on the root helper process (see the module docstring).

    :param proc: the helper process, started by :meth:`start`.
    """

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.done: set[str] = set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    def start(cls, plan: dict[str, Any]) -> CleanupHelper:
        """Start the helper (as the current user, root) with ``plan``: ``iface``, ``netns``, ``pre_down`` and
        ``post_down`` (hook commands), ``rules`` (policy rules as given to pyroute2), ``nft_tables``, ``dns``
        (bool), ``sockets`` (paths) and ``log_level``.

        :raises OSError: the process could not be started.
        """
        # The same interpreter imports the installed package: no PYTHONPATH of our own.
        proc = subprocess.Popen([sys.executable, "-m", "vpn.cleanup"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, close_fds=True)
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(plan).encode() + b"\n")
        proc.stdin.flush()
        return cls(proc)

    def step(self, command: str, *, timeout: float = STEP_TIMEOUT) -> bool:
        """Ask for ``predown`` or ``teardown`` and wait for the answer; False (logged) if it failed."""
        if command in self.done or self.proc.poll() is not None:
            return False
        self.done.add(command)
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        try:
            stdin.write(command.encode() + b"\n")
            stdin.flush()
            ready, _, _ = select.select([stdout], [], [], timeout)
            answer = stdout.readline().strip() if ready else b""
        except OSError as e:
            log.warning("cleanup helper: %s: %s", command, e)
            return False
        if answer != b"ok":
            log.warning("cleanup helper: %s %s", command, "failed" if answer else "did not answer")
        return answer == b"ok"

    def close(self, *, timeout: float = STEP_TIMEOUT) -> None:
        """Tear down (if not done yet) and wait for the helper to exit."""
        self.step("teardown", timeout=timeout)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("cleanup helper (pid %d) did not exit; leaving it", self.proc.pid)


def _teardown(plan: dict[str, Any]) -> bool:
    from tunnel.netconf import PolicyRule

    from .interface import Interface, run_hooks, unset_dns
    from .util import socket_is_live

    iface = Interface(str(plan["iface"]), plan.get("netns"))
    iface.rules = [PolicyRule(**r) for r in plan.get("rules", [])]
    iface.nft_tables = [str(t) for t in plan.get("nft_tables", [])]
    iface.teardown()
    if plan.get("dns"):
        unset_dns(iface.name)
    for p in map(Path, plan.get("sockets", [])):
        try:
            if stat.S_ISSOCK(p.lstat().st_mode) and not socket_is_live(p):
                p.unlink()
        except OSError:
            pass
    ok = True
    try:
        run_hooks("PostDown", plan.get("post_down", []), iface.name)
    except Exception as e:  # noqa: BLE001  # one failed hook must not stop the helper from answering
        log.warning("PostDown: %s", e)
        ok = False
    return ok


def _serve(plan: dict[str, Any], commands: IO[bytes], answers: IO[bytes]) -> int:
    name = str(plan["iface"])
    for line in commands:
        cmd = line.strip().decode("ascii", "replace")
        if cmd == "predown":
            try:
                from .interface import run_hooks

                run_hooks("PreDown", plan.get("pre_down", []), name)
                ok = True
            except Exception as e:  # noqa: BLE001
                log.warning("PreDown: %s", e)
                ok = False
        elif cmd == "teardown":
            ok = _teardown(plan)
            answers.write(b"ok\n" if ok else b"failed\n")
            answers.flush()
            return 0
        else:
            log.warning("cleanup helper: unknown command %r ignored", cmd[:40])
            ok = False
        answers.write(b"ok\n" if ok else b"failed\n")
        answers.flush()
    log.warning("%s: the daemon went away without cleaning up; cleaning up now", name)
    _teardown(plan)
    return 0


def main() -> int:
    """``python -m vpn.cleanup``: read the plan line, then serve the commands (see the module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon handles these and then asks us to clean up
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal reaches the whole group; the daemon reloads
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    plan = json.loads(stdin.readline() or b"{}")
    if "iface" not in plan:
        return 2
    logging.basicConfig(level=plan.get("log_level", logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s cleanup helper: %(message)s", datefmt="%H:%M:%S")
    return _serve(plan, stdin, stdout)


__all__ = ["STEP_TIMEOUT", "CleanupHelper", "main"]

if __name__ == "__main__":
    sys.exit(main())
