"""Running pyvpn daemons in namespaces for the hostile-network tests.

A :class:`Lab` builds a server namespace and a client namespace, either joined by one veth
(``direct``) or through a middle namespace that runs the impairment relay
(:mod:`hostile_relay`).  An optional attacker namespace hangs off the server on its own veth.
It writes wg-quick configs (the production writer: :mod:`vpn.testlab.configs`), starts
``pyvpn server`` / ``pyvpn client`` through the lab's runner (:class:`vpn.testlab.pyvpn.Pyvpn`: this
installation's ``pyvpn``), waits for ``show``, and tears everything down on exit, even after a failure:
the daemons first (SIGTERM, then SIGKILL), then every process left in each namespace, then the namespaces.

Addresses (all inside the lab's namespaces)::

    server ns   eth0 198.18.1.1/24     tun 198.19.0.1/24, fd00:19::1/64
    client ns   eth0 198.18.2.1/24 (relay) or 198.18.1.2/24 (direct)
                tun 198.19.0.2/24, fd00:19::2/64
    mid ns      eths 198.18.1.2/24, ethc 198.18.2.2/24   (relay only)
    atk ns      eth0 198.18.3.2/24   (server's eth1 198.18.3.1/24)

Interface names are unique on the machine (the UAPI and control sockets live in global
directories): ``hs<pid><n><s|c|x>``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from crypto.keys import encode_key, private_from_random, public_from_private
from vpn.config import PeerConfig, SegmentConfig
from vpn.testlab import configs
from vpn.testlab.netns import Netns, veth
from vpn.testlab.pyvpn import Pyvpn, close_all
from vpn.testlab.traffic import TrafficError, parse_ping, ping

HERE = Path(__file__).resolve().parent
TOOLS = HERE / "hostile_tools.py"
RELAY = HERE / "hostile_relay.py"
SERVER_UNDERLAY = "198.18.1.1"
SERVER_TUN = "198.19.0.1"
CLIENT_TUN = "198.19.0.2"
SERVER_TUN6 = "fd00:19::1"
CLIENT_TUN6 = "fd00:19::2"
ATTACKER_UNDERLAY = "198.18.3.2"
SERVER_ATTACKER_SIDE = "198.18.3.1"  # the server as the attacker namespace reaches it
PORT = 51820
RELAY_CLIENT_PORT = 40000  # the relay listens here for the client
RELAY_SERVER_PORT = 40001  # and talks to the server from here
_names = itertools.count()
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def env_int(name: str, default: int) -> int:
    """An integer test parameter from the environment (for longer runs), else ``default``."""
    raw = os.environ.get(name, "").strip()
    return int(float(raw)) if raw else default


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The tools' and the relay's environment (scripts in this directory, run by the venv's Python, which
    imports pyvpn as installed: nothing goes on ``PYTHONPATH``)."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYVPN_TEST_REKEY_AFTER_TIME", None)
    if extra:
        env.update(extra)
    return env


def keypair() -> tuple[bytes, bytes]:
    priv = private_from_random(os.urandom(32))
    return priv, public_from_private(priv)


def ns_read_counters(ns: Netns, iface: str) -> dict[str, int]:
    """``/sys/class/net/IFACE/statistics/*`` as seen inside ``ns`` (sysfs is per netns)."""
    names = ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "rx_dropped", "tx_dropped", "rx_errors")
    cmd = " ".join(f"/sys/class/net/{iface}/statistics/{n}" for n in names)
    out = ns.run(f"cat {cmd}", check=False).stdout.split()
    if len(out) != len(names):
        return {}
    return {n: int(v) for n, v in zip(names, out, strict=True)}


def udp_snmp(ns: Netns) -> dict[str, int]:
    """The ``Udp:`` line of ``/proc/net/snmp`` in ``ns`` (RcvbufErrors = datagrams the kernel dropped)."""
    lines = [ln.split() for ln in ns.run("cat /proc/net/snmp").stdout.splitlines() if ln.startswith("Udp:")]
    if len(lines) < 2:
        return {}
    return {k: int(v) for k, v in zip(lines[0][1:], lines[1][1:], strict=False)}


class Daemon(Pyvpn):
    """One ``pyvpn server|client`` in a namespace: the lab's runner (:class:`vpn.testlab.pyvpn.Pyvpn`) plus
    what the hostile tests read (drops, the first peer, tun counters, /proc figures)."""

    def __init__(self, ns: Netns, role: str, iface: str, conf: Path, log: Path,
                 env: dict[str, str] | None = None, log_level: str = "debug") -> None:
        super().__init__(ns, role, config=conf, ifname=iface, logfile=log, log_level=log_level, start_timeout=20.0,
                         env={"PYTHONUNBUFFERED": "1", "PYVPN_TEST_REKEY_AFTER_TIME": None, **(env or {})})

    @property
    def iface(self) -> str:
        return self.ifname

    def alive(self) -> bool:
        return self.running()

    def kill9(self) -> None:
        self.kill()

    def log_text(self) -> str:
        return self.log()

    def drops(self) -> Counter[str]:
        return Counter(self.show().get("drops") or {})

    def first_peer(self, snap: dict[str, Any] | None = None) -> dict[str, Any]:
        snap = snap or self.show()
        assert snap["peers"], f"{self.iface} has no peers"
        return dict(snap["peers"][0])

    def tun_counters(self) -> dict[str, int]:
        return ns_read_counters(self.ns, self.iface)

    # -- /proc ----------------------------------------------------------------------------
    def _pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self._pid()}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def cpu_seconds(self) -> float:
        stat = Path(f"/proc/{self._pid()}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self._pid()}/fd"))


class Lab:
    """Server + client pyvpn daemons in their own namespaces (see the module docstring).

    :param relay: put the impairment relay between client and server (a middle namespace).
    :param attacker: add an attacker namespace on a second veth of the server.
    :param relay_args: extra command-line arguments for :mod:`hostile_relay`.
    :param server_env: / :param client_env: extra environment for the daemons.
    :param client_keepalive: PersistentKeepalive of the client's peer (0 = off).
    :param server_knows_endpoint: give the server an Endpoint for the client (the relay's
        server-side address, or the client's underlay), so it can initiate too.
    """

    def __init__(self, *, relay: bool = False, attacker: bool = False, relay_args: list[str] | None = None,
                 server_env: dict[str, str] | None = None, client_env: dict[str, str] | None = None,
                 client_keepalive: int = 0, server_knows_endpoint: bool = False,
                 log_level: str = "debug") -> None:
        self.use_relay = relay
        self.use_attacker = attacker
        self.relay_args = relay_args or []
        self.server_env = server_env or {}
        self.client_env = client_env or {}
        self.client_keepalive = client_keepalive
        self.server_knows_endpoint = server_knows_endpoint
        self.log_level = log_level
        self.namespaces: list[Netns] = []
        self.procs: list[subprocess.Popen[Any]] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="pyvpn-hostile-"))
        self.relay: RelayProc | None = None
        n = next(_names)
        tag = f"hs{os.getpid() % 100000}{n}"
        self.server_if = f"{tag}s"[:15]
        self.client_if = f"{tag}c"[:15]
        self.server_key = keypair()
        self.client_key = keypair()
        self.server: Daemon
        self.client: Daemon

    # -- namespaces ---------------------------------------------------------------------------
    def _ns(self, tag: str) -> Netns:
        ns = Netns(tag)
        self.namespaces.append(ns)
        return ns

    def build(self) -> Self:
        self.srv_ns = self._ns("srv")
        self.cli_ns = self._ns("cli")
        if self.use_relay:
            self.mid_ns = self._ns("mid")
            veth(self.srv_ns, "eth0", self.mid_ns, "eths")
            veth(self.cli_ns, "eth0", self.mid_ns, "ethc")
            self.srv_ns.run("ip addr add 198.18.1.1/24 dev eth0")
            self.mid_ns.run("ip addr add 198.18.1.2/24 dev eths")
            self.mid_ns.run("ip addr add 198.18.2.2/24 dev ethc")
            self.cli_ns.run("ip addr add 198.18.2.1/24 dev eth0")
            self.client_underlay = "198.18.2.1"
            self.client_endpoint = f"198.18.2.2:{RELAY_CLIENT_PORT}"
            self.server_side_endpoint = f"198.18.1.2:{RELAY_SERVER_PORT}"
        else:
            veth(self.srv_ns, "eth0", self.cli_ns, "eth0")
            self.srv_ns.run("ip addr add 198.18.1.1/24 dev eth0")
            self.cli_ns.run("ip addr add 198.18.1.2/24 dev eth0")
            self.client_underlay = "198.18.1.2"
            self.client_endpoint = f"{SERVER_UNDERLAY}:{PORT}"
            self.server_side_endpoint = f"198.18.1.2:{PORT + 1}"
        if self.use_attacker:
            self.atk_ns = self._ns("atk")
            veth(self.srv_ns, "eth1", self.atk_ns, "eth0")
            self.srv_ns.run("ip addr add 198.18.3.1/24 dev eth1")
            self.atk_ns.run(f"ip addr add {ATTACKER_UNDERLAY}/24 dev eth0")
        return self

    # -- configs and daemons ------------------------------------------------------------------
    def write(self, name: str, text: str) -> Path:
        p = self.workdir / name
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return p

    def server_conf(self, extra_peers: Sequence[PeerConfig] = (), segments: Sequence[SegmentConfig] = ()) -> str:
        ep = self.server_side_endpoint if self.server_knows_endpoint else None
        iface = configs.interface(encode_key(self.server_key[0]), listen_port=PORT, name=self.server_if,
                                  addresses=[f"{SERVER_TUN}/24", f"{SERVER_TUN6}/64"])
        client = configs.peer(encode_key(self.client_key[1]), name="client", endpoint=ep,
                              allowed_ips=[f"{CLIENT_TUN}/32", f"{CLIENT_TUN6}/128"])
        return configs.config_text(iface, [client, *extra_peers], segments)

    def client_conf(self, segments: Sequence[SegmentConfig] = ()) -> str:
        iface = configs.interface(encode_key(self.client_key[0]), listen_port=PORT + 1, name=self.client_if,
                                  addresses=[f"{CLIENT_TUN}/24", f"{CLIENT_TUN6}/64"])
        server = configs.peer(encode_key(self.server_key[1]), name="server", endpoint=self.client_endpoint,
                              allowed_ips=["198.19.0.0/24", "fd00:19::/64"],
                              persistent_keepalive=self.client_keepalive)
        return configs.config_text(iface, [server], segments)

    def start(self, *, handshake: bool = True, server_extra_peers: Sequence[PeerConfig] = (),
              server_segments: Sequence[SegmentConfig] = (), client_segments: Sequence[SegmentConfig] = (),
              record: bool = False) -> Lab:
        """Start the relay (recording from the first datagram if ``record``), server and client.

        :param server_extra_peers: more ``[Peer]`` sections for the server (:func:`vpn.testlab.configs.peer`).
        :param server_segments: / :param client_segments: ``#pyvpn [Segment]`` sections
            (:func:`vpn.testlab.configs.segment`).
        """
        if self.use_relay:
            self.relay = RelayProc(self.mid_ns, self.workdir, [
                "--listen", f"198.18.2.2:{RELAY_CLIENT_PORT}",
                "--upstream-bind", f"198.18.1.2:{RELAY_SERVER_PORT}",
                "--upstream", f"{SERVER_UNDERLAY}:{PORT}",
                *self.relay_args])
            if record:
                self.relay.call({"cmd": "record", "on": True})
        self.server = Daemon(self.srv_ns, "server", self.server_if,
                             self.write("server.conf", self.server_conf(server_extra_peers, server_segments)),
                             self.workdir / "server.log", env=self.server_env, log_level=self.log_level)
        self.client = Daemon(self.cli_ns, "client", self.client_if,
                             self.write("client.conf", self.client_conf(client_segments)),
                             self.workdir / "client.log", env=self.client_env, log_level=self.log_level)
        self.server.start(wait=False)  # both start-ups (Python imports) overlap
        self.client.start(wait=False)
        self.server.wait_ready()
        self.client.wait_ready()
        if handshake:
            self.handshake()
        return self

    def handshake(self, timeout: float = 20.0) -> None:
        """Ping until the tunnel carries traffic (the first ping starts the handshake)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping(count=1, timeout=1):
                return
            for d in (self.server, self.client):
                if not d.alive():
                    raise AssertionError(f"{d.role} died\n{self.logs()}")
        raise AssertionError(f"no traffic through the tunnel within {timeout:.0f}s\n{self.logs()}")

    def ping(self, *, count: int = 1, timeout: float = 1.0, interval: float = 0.2, src_ns: Netns | None = None,
             dst: str = SERVER_TUN) -> int:
        """Ping ``dst`` from the client namespace; returns how many replies came back."""
        p = ping(src_ns or self.cli_ns, dst, count=count, interval=interval, wait=timeout)
        try:
            return parse_ping(p.stdout)[1]
        except TrafficError:  # no summary: ping did not get to send (no route, say)
            return 0

    # -- helper processes -------------------------------------------------------------------
    def tool(self, ns: Netns, *args: str, stdout: Any = subprocess.PIPE,
             extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``hostile_tools.py ARGS`` in ``ns`` (killed with the namespace at teardown)."""
        proc: subprocess.Popen[bytes] = ns.popen([sys.executable, str(TOOLS), *args], stdout=stdout,
                                                 stderr=subprocess.PIPE, env=child_env(extra_env))
        return proc

    def tool_result(self, proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate(timeout=5)
            raise AssertionError(f"tool timed out after {timeout}s: {err.decode(errors='replace')[-2000:]}") from None
        if proc.returncode != 0:
            raise AssertionError(f"tool exited {proc.returncode}: {err.decode(errors='replace')[-3000:]}")
        lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
        assert lines, f"tool printed no result: {out!r} {err!r}"
        return dict(json.loads(lines[-1]))

    def run_tool(self, ns: Netns, *args: str, timeout: float = 60.0) -> dict[str, Any]:
        return self.tool_result(self.tool(ns, *args), timeout)

    def logs(self) -> str:
        parts = []
        for d in (getattr(self, "server", None), getattr(self, "client", None)):
            if d is not None:
                parts.append(f"--- {d!r}\n{d.log_tail()}")
        if self.relay is not None:
            parts.append(self.relay.stderr_tail())
        return "\n".join(parts)

    # -- teardown -------------------------------------------------------------------------------
    def close(self) -> None:
        if self.relay is not None:
            self.relay.close()
        close_all(d for d in (getattr(self, "client", None), getattr(self, "server", None)) if d is not None)
        for ns in reversed(self.namespaces):
            with contextlib.suppress(Exception):
                ns.close()
        self.namespaces = []
        if os.environ.get("PYVPN_HOSTILE_KEEP_LOGS"):
            print(f"hostile lab logs kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.build()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


def capture_frames(path: Path) -> list[tuple[int, bytes, bytes]]:
    """(pkttype, virtio_net_hdr, ethernet frame) records written by ``hostile_tools capture``."""
    data = path.read_bytes()
    out = []
    i = 0
    while i + 5 <= len(data):
        n, pkttype = struct.unpack_from("<IB", data, i)
        rec = data[i + 5 : i + 5 + n]
        out.append((pkttype, rec[:10], rec[10:]))
        i += 5 + n
    return out


def assert_no_traceback(*daemons: Daemon) -> None:
    for d in daemons:
        text = d.log_text()
        assert "Traceback" not in text, f"{d.role} logged an exception:\n{d.log_tail(100)}"


def report(title: str, **figures: Any) -> None:
    """Print figures for the test report (visible with ``pytest -s``), one JSON line per test."""
    print(f"\nHOSTILE {title}: {json.dumps(figures, sort_keys=True, default=str)}")


class RelayProc:
    """The impairment relay (:mod:`hostile_relay`) running in a namespace, driven over stdin/stdout."""

    def __init__(self, ns: Netns, workdir: Path, args: list[str]) -> None:
        self.workdir = workdir
        with open(workdir / "relay.stderr", "wb") as err:
            self.proc = subprocess.Popen(ns.argv([sys.executable, str(RELAY), *args]), stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err, env=child_env(),
                                         start_new_session=True)
        ns.procs.append(self.proc)
        assert self.call({"cmd": "ping"}).get("ok"), "relay did not start"

    def call(self, req: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"relay exited {self.proc.returncode}: {self.stderr_tail()}")
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        self.proc.stdin.flush()
        import select

        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            raise AssertionError(f"relay did not answer {req} in {timeout}s: {self.stderr_tail()}")
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"relay closed its output: {self.stderr_tail()}")
        return dict(json.loads(line))

    def stats(self) -> dict[str, Any]:
        return self.call({"cmd": "stats"})

    def set(self, **impairments: float) -> None:
        self.call({"cmd": "set", **impairments})

    def stderr_tail(self) -> str:
        p = self.workdir / "relay.stderr"
        return "--- relay.stderr\n" + (p.read_text(errors="replace")[-2000:] if p.exists() else "")

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.call({"cmd": "quit"}, timeout=3)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(3)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                with contextlib.suppress(Exception):
                    f.close()
