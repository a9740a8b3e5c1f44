"""Run ``pyvpn server`` / ``pyvpn client`` (and ``pyvpn-wg``) inside test namespaces.

Theory of operation:

1. :func:`vpn.testlab.configs.conf_text` writes a wg-quick file with ``#pyvpn Name = <ifname>`` (the
   production model and writer).  The UAPI socket (``/var/run/wireguard/IFACE.sock``) and the
   control socket (``/var/run/pyvpn/IFACE.sock``) live in the file system, which every namespace shares,
   so each daemon gets a fresh name from :func:`unique_ifname` and parallel tests never collide.
2. :class:`Pyvpn`, the lab's one pyvpn runner (the hostile tests, the benchmark's pyvpn paths and
   ``pyvpn demo`` use it too, with their own command, arguments, environment and log file), writes the
   file (mode 0600) into a private directory (or takes the caller's), starts ``pyvpn ROLE FILE -l debug``
   in a :class:`~netns.Netns` with ``ns.popen`` (pinned to the namespace's CPU if it has one; its output
   goes to a log file), and waits, bounded, until the control socket answers a ``show`` (the same request
   ``pyvpn show IFACE --json`` sends; polling goes through :func:`vpn.control.query` in-process to
   save a Python start-up per poll).  :meth:`Pyvpn.show_json` and :meth:`Pyvpn.show_table` run the
   real CLI.
3. :meth:`Pyvpn.stop` sends a signal and waits (bounded, then SIGKILL); :meth:`Pyvpn.terminate` sends
   SIGTERM and waits (bounded); :meth:`Pyvpn.kill` sends SIGKILL;
   :meth:`Pyvpn.reload` rewrites the config (optionally), sends SIGHUP and waits for the daemon's
   log line about the reload; :meth:`Pyvpn.close` does whatever is still needed and unlinks
   sockets nothing listens on.
   :class:`Fleet` owns the private directory and closes every daemon it started, even on failure.
   :class:`PyvpnFile` is a :class:`Pyvpn` on a file the caller wrote, started at once, as a context manager;
   :class:`PyvpnWg` runs ``pyvpn-wg -f IFACE`` (no file: ``wg`` configures it) the same way.

Traffic through the daemons (pings, checked TCP transfers, iperf3) is :mod:`vpn.testlab.traffic`'s, keys
:mod:`vpn.testlab.keys`', one-shot ``pyvpn`` commands :mod:`vpn.testlab.commands`'.

Every wait is bounded; nothing sends traffic outside the namespaces the caller made.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from vpn.config import SegmentConfig
from vpn.control import socket_path
from vpn.testlab import netns
from vpn.testlab.commands import command_env, pyvpn_argv, run_pyvpn
from vpn.testlab.configs import PeerSpec, conf_text
from vpn.testlab.files import write_private
from vpn.testlab.keys import Keys
from vpn.testlab.netns import LabError, Netns, wait_for
from vpn.testlab.wggo import WgStatus, parse_wg_dump
from vpn.uapi_server import uapi_path
from vpn.util import socket_is_live

# -- implementation constants ------------------------------------------------------------------------------
START_TIMEOUT = 15.0  # seconds for `pyvpn server|client` to answer on its control socket
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
CMD_TIMEOUT = 10.0  # seconds for one wg / pyvpn show command


class HarnessError(LabError):
    """A daemon did not start, answer or stop as asked (the message carries its log tail)."""


# -- names -----------------------------------------------------------------------------------------
def unique_ifname(prefix: str = "pvt") -> str:
    """A fresh interface name whose control and UAPI sockets do not exist yet (see :func:`netns.unique_ifname`)."""
    return netns.unique_ifname(prefix, lambda name: socket_path(name).exists() or uapi_path(name).exists())


# -- one daemon ---------------------------------------------------------------------------------------------
class Pyvpn:
    """``pyvpn ROLE CONFIG -l LEVEL`` running in ``ns``: the lab's one way to start, wait for and stop a pyvpn
    daemon (the netns, interop and hostile tests, the benchmark's pyvpn paths and ``pyvpn demo`` use it).

    :param ns: the namespace (its ``close()`` kills the daemon too); its ``cpu`` pins the daemon.
    :param role: ``server`` or ``client``.
    :param text: the config text (see :func:`vpn.testlab.configs.conf_text`), written (mode 0600) to
        ``workdir/<ifname>.conf``; None to run the existing file ``config`` (neither: no file, see :class:`PyvpnWg`).
    :param ifname: the interface name (the config's ``#pyvpn Name``, else the file's stem); default
        ``config``'s stem.
    :param workdir: where the config and the log go (default: ``config``'s directory).
    :param keys: the key pair, kept for assertions (never printed: see :class:`Keys`).
    :param config: an existing config file (instead of ``text``).
    :param command: the pyvpn command (default :func:`pyvpn_argv`: this installation's).
    :param args: more command-line arguments (``--user nobody``, ``--metrics ...``).
    :param log_level: ``-l LEVEL``; None passes none (the daemon's default, or ``PYVPN_LOG_LEVEL`` in ``env``).
    :param env: changes to the environment the daemon gets (a None value removes the variable).
    :param logfile: where its stdout and stderr go (appended; default ``<workdir>/<ifname>.log``).
    :param start_timeout: the default bound of :meth:`start` and :meth:`wait_ready`, in seconds.
    """

    def __init__(self, ns: Netns, role: str, text: str | None = None, *, ifname: str | None = None,
                 workdir: Path | None = None, keys: Keys | None = None, config: Path | None = None,
                 command: Sequence[str] | None = None, args: Sequence[str] = (), log_level: str | None = "debug",
                 env: Mapping[str, str | None] | None = None, logfile: Path | None = None,
                 start_timeout: float = START_TIMEOUT) -> None:
        if text is not None and config is not None:
            raise ValueError("give the config text or an existing config file, not both")
        if ifname is None:
            if config is None:
                raise ValueError("no config file: give ifname=")
            ifname = config.stem
        self.ns, self.role, self.ifname, self.keys = ns, role, ifname, keys
        workdir = workdir if workdir is not None else (config.parent if config is not None else None)
        if text is not None:
            if workdir is None:
                raise ValueError("a config text needs workdir=")
            config = write_private(workdir / f"{ifname}.conf", text)
        self.config: Path | None = config  # None only for a daemon without a file (PyvpnWg)
        if logfile is None:
            if workdir is None:
                raise ValueError("no config file: give logfile=")
            logfile = workdir / f"{ifname}.log"
        self.logfile = logfile
        self.command = list(command) if command is not None else pyvpn_argv()
        self.args, self.log_level, self.env = tuple(args), log_level, dict(env or {})
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # -- life cycle -------------------------------------------------------------------------------
    def argv(self) -> list[str]:
        if self.config is None:
            raise HarnessError(f"pyvpn {self.role} {self.ifname}: no config file")
        level = ["-l", self.log_level] if self.log_level else []
        return [*self.command, self.role, str(self.config), *level, *self.args]

    def start(self, *, wait: bool = True, timeout: float | None = None) -> Self:
        """Start the daemon (again, after :meth:`kill`/:meth:`stop`); wait until it answers ``show``."""
        if self.running():
            raise HarnessError(f"{self.ifname} is already running")
        self.starts += 1
        env = command_env()
        for k, val in self.env.items():
            if val is None:
                env.pop(k, None)
            else:
                env[k] = val
        with open(self.logfile, "ab") as log:
            log.write(f"--- start {self.starts}: {shlex.join(self.argv())} in {self.ns.name}\n".encode())
            log.flush()
            self.proc = self.ns.popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, env=env)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait (bounded: ``timeout`` or ``start_timeout`` seconds) until the control socket answers (the UAPI
        socket is up before it).

        :raises HarnessError: the daemon exited, or did not answer within ``timeout`` seconds.
        """
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                return True
            return self.query() is not None

        timeout = timeout if timeout is not None else self.start_timeout
        wait_for(ready, timeout)
        if self.proc is not None and self.proc.poll() is not None:
            raise HarnessError(f"pyvpn {self.role} {self.ifname} exited {self.proc.returncode}:\n"
                               f"{self.log_tail()}")
        if self.query() is None:
            raise HarnessError(f"pyvpn {self.role} {self.ifname} did not answer within {timeout}s:\n"
                               f"{self.log_tail()}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int | None:
        """Send ``sig`` and wait up to ``timeout`` s, then SIGKILL; return the exit code (None if never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        return self.proc.returncode

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM and wait up to ``timeout`` s; return the exit code, or None if it is still running."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """SIGKILL (a crash: nothing is cleaned up by the daemon itself)."""
        self.stop(signal.SIGKILL)

    def reload(self, text: str | None = None, *, timeout: float = 10.0) -> str:
        """Write ``text`` as the new config (if given), send SIGHUP, and return the daemon's log line
        that ends the reload (``... reloaded ...`` or ``... reload failed ...``)."""
        if not self.running() or self.proc is None:
            raise HarnessError(f"{self.ifname} is not running")
        if text is not None:
            if self.config is None:
                raise HarnessError(f"{self.ifname} has no config file")
            write_private(self.config, text)

        def outcomes() -> list[str]:
            return [ln for ln in self.log().splitlines() if ": reloaded " in ln or ": reload failed" in ln]

        before = len(outcomes())
        self.proc.send_signal(signal.SIGHUP)
        if not wait_for(lambda: len(outcomes()) > before, timeout):
            raise HarnessError(f"{self.ifname}: no reload within {timeout}s of SIGHUP:\n{self.log_tail()}")
        return outcomes()[before]

    def close(self) -> None:
        """Stop the daemon (SIGTERM, SIGKILL after :data:`STOP_TIMEOUT`) and unlink its sockets if nothing
        listens on them any more; safe to call twice."""
        self.stop()
        for path in (socket_path(self.ifname), uapi_path(self.ifname)):
            if path.exists() and not socket_is_live(path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    # -- status ------------------------------------------------------------------------------------
    @property
    def uapi_sock(self) -> Path:
        return uapi_path(self.ifname)

    @property
    def control_sock(self) -> Path:
        return socket_path(self.ifname)

    def query(self) -> dict[str, Any] | None:
        """The control socket's ``show`` reply (as ``pyvpn show --json`` gets it), or None."""
        from vpn.control import ControlError, query

        try:
            return query(self.ifname)
        except (ControlError, OSError):
            return None

    def show(self) -> dict[str, Any]:
        """What ``pyvpn show IFACE --json`` prints (keys in base64), asked in-process over the control
        socket: one Python start-up less per look.  :meth:`show_json` runs the real command."""
        from vpn.status import to_jsonable

        snap = self.query()
        if snap is None:
            raise HarnessError(f"{self.ifname}: show failed (running={self.running()})\n{self.log_tail()}")
        result: dict[str, Any] = to_jsonable(snap)
        return result

    def show_json(self) -> dict[str, Any]:
        """``pyvpn show IFACE --json``, parsed."""
        p = run_pyvpn("show", self.ifname, "--json")
        if p.returncode != 0:
            raise HarnessError(f"pyvpn show {self.ifname} --json exited {p.returncode}: {p.stderr}")
        data = json.loads(p.stdout)
        assert isinstance(data, dict), data
        return data

    def show_table(self) -> str:
        """``pyvpn show IFACE`` as text (in a pipe: wg show's blocks, one field a line)."""
        p = run_pyvpn("show", self.ifname)
        if p.returncode != 0 or "Traceback" in p.stderr:
            raise HarnessError(f"pyvpn show {self.ifname} exited {p.returncode}: {p.stderr}")
        return p.stdout

    def wg(self, *args: str, check: bool = True) -> str:
        """``wg ARGS`` inside the namespace; its stdout."""
        p = self.ns.run(["wg", *args], check=False, timeout=CMD_TIMEOUT)
        if check and p.returncode != 0:
            raise HarnessError(f"wg {' '.join(args)} exited {p.returncode}: {p.stderr.strip()}\n{self.log_tail()}")
        return p.stdout

    def dump(self) -> WgStatus:
        """``wg show IFACE dump``, parsed."""
        return parse_wg_dump(self.wg("show", self.ifname, "dump"))

    def peer(self, public_key: str, snap: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The ``show`` entry of the peer with this base64 key (from ``snap`` or a fresh query)."""
        snap = snap if snap is not None else self.query()
        if not snap:
            return None
        import base64

        raw = base64.b64decode(public_key)
        for p in snap.get("peers", []):
            pk = p.get("public_key")
            if pk == raw or pk == public_key:
                return dict(p)
        return None

    def handshake_time(self, public_key: str) -> float:
        p = self.peer(public_key)
        return float(p.get("latest_handshake") or 0) if p else 0.0

    def wait_handshake(self, public_key: str, *, after: float = 0.0, timeout: float = 10.0) -> dict[str, Any]:
        """Wait until the peer's latest handshake is later than ``after`` (wall clock); return the peer."""
        def done() -> dict[str, Any] | None:
            if not self.running():
                raise HarnessError(f"{self.ifname} died:\n{self.log_tail()}")
            p = self.peer(public_key)
            return p if p and (p.get("latest_handshake") or 0) > after else None

        p = wait_for(done, timeout, 0.1)
        if not p:
            raise HarnessError(f"{self.ifname}: no handshake with {public_key[:8]}… within {timeout}s:\n"
                               f"{self.log_tail()}")
        return p

    def sysfs_stat(self, counter: str) -> int:
        """``/sys/class/net/IFACE/statistics/COUNTER`` read inside the namespace."""
        out = self.ns.run(["cat", f"/sys/class/net/{self.ifname}/statistics/{counter}"]).stdout
        return int(out.strip())

    # -- logs ----------------------------------------------------------------------------------------
    def log(self, tail: int = 0) -> str:
        """The daemon's output so far (the last ``tail`` characters; 0 for all of it)."""
        try:
            return self.logfile.read_text(errors="replace")[-tail:]
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def __repr__(self) -> str:
        return f"<Pyvpn {self.role} {self.ifname} in {self.ns.name} pid={self.pid}>"


class PyvpnWg(Pyvpn):
    """``pyvpn-wg -f IFACE`` in ``ns``: pyvpn as a userspace WireGuard implementation (like wireguard-go), with no
    config file (``wg`` configures it over the UAPI socket); started, waited for (its control socket answers:
    ``pyvpn-wg`` serves one too) and stopped like any :class:`Pyvpn`.

    :param env: e.g. ``LOG_LEVEL`` (``verbose``) and ``PYVPN_OFFLOAD``, as for wireguard-go.
    """

    def __init__(self, ns: Netns, ifname: str, *, logfile: Path, env: Mapping[str, str | None] | None = None,
                 start_timeout: float = START_TIMEOUT) -> None:
        super().__init__(ns, "wg", ifname=ifname, logfile=logfile, command=pyvpn_argv("pyvpn-wg"), log_level=None,
                         env=env, start_timeout=start_timeout)

    def argv(self) -> list[str]:
        return [*self.command, "-f", self.ifname, *self.args]


def close_all(daemons: Iterable[Pyvpn]) -> None:
    """:meth:`Pyvpn.close` every daemon, SIGTERM to all of them first so that they shut down in parallel."""
    daemons = list(daemons)
    for d in daemons:
        if d.proc is not None and d.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                d.proc.send_signal(signal.SIGTERM)
    for d in daemons:
        with contextlib.suppress(Exception):
            d.close()


class Fleet:
    """A private directory and the daemons started from it; :meth:`close` stops them all."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="pyvpn-test-"))
        os.chmod(self.workdir, 0o700)
        self.daemons: list[Pyvpn] = []

    def add(self, ns: Netns, role: str, *, keys: Keys | None = None, addresses: Sequence[str] = (),
            listen_port: int | None = None, peers: Sequence[PeerSpec] = (), extra: Sequence[str] = (),
            segments: Sequence[SegmentConfig] = (), start: bool = True, ifname: str | None = None) -> Pyvpn:
        """Generate a config for a new daemon in ``ns`` and (by default) start it."""
        keys = keys or Keys.new()
        ifname = ifname or unique_ifname("pvs" if role == "server" else "pvc")
        text = conf_text(ifname=ifname, private_key=keys.private, addresses=addresses,
                         listen_port=listen_port, peers=peers, extra=extra, segments=segments)
        d = Pyvpn(ns, role, text, ifname=ifname, workdir=self.workdir, keys=keys)
        self.daemons.append(d)
        if start:
            d.start()
        return d

    def add_text(self, ns: Netns, role: str, text: str, *, start: bool = True) -> Pyvpn:
        """A daemon from an existing config text; a ``#pyvpn Name`` line with a fresh name is put in
        (the text must not have one)."""
        ifname = unique_ifname("pvs" if role == "server" else "pvc")
        head, sep, rest = text.partition("[Interface]\n")
        if not sep:
            raise ValueError("no '[Interface]' line")
        d = Pyvpn(ns, role, f"{head}[Interface]\n#pyvpn Name = {ifname}\n{rest}", ifname=ifname,
                  workdir=self.workdir)
        self.daemons.append(d)
        if start:
            d.start()
        return d

    def logs(self) -> str:
        return "\n".join(f"===== {d!r}\n{d.log_tail(60)}" for d in self.daemons)

    def close(self) -> None:
        close_all(self.daemons)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# The interop tests' tunnel addresses (server .1, client .2).
SRV4, CLI4, SRV6, CLI6 = "198.19.0.1", "198.19.0.2", "fd00:19::1", "fd00:19::2"


# -- a pyvpn daemon started from a file the caller wrote ---------------------------------------------------
class PyvpnFile(Pyvpn):
    """:class:`Pyvpn` on a wg-quick file the caller wrote, started at once, ``-l info``, as a context manager.

    The interface name is the file's stem, so give each file a unique name (see :func:`unique_ifname`):
    UAPI and control sockets are global, not per namespace.  Leaving the ``with`` block fails the test if the
    daemon logged a traceback (an exception it caught and logged, in a hook or a callback, is a bug too).
    """

    def __init__(self, ns: Netns, role: str, config: Path, *, log_level: str = "info") -> None:
        super().__init__(ns, role, config=config, log_level=log_level, logfile=config.with_suffix(".log"))
        try:
            self.start()
        except BaseException:
            self.close()
            raise

    def show_cli(self) -> dict[str, Any]:
        """``pyvpn show IFACE --json``, parsed."""
        return self.show_json()

    def peer(self, public_key: str, snap: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The ``pyvpn show --json`` entry of one peer (base64 keys), or None."""
        snap = snap if snap is not None else self.show()
        return next((p for p in snap["peers"] if p["public_key"] == public_key), None)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.close()
        log = self.log()
        if exc_type is not None:
            print(f"--- pyvpn {self.role} {self.ifname} log ---\n{log[-4000:]}")
        elif "Traceback" in log:
            raise HarnessError(f"pyvpn {self.role} {self.ifname} logged a traceback:\n{log[-4000:]}")


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    """A private temporary directory for config files and logs, removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="pyvpn-interop-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
