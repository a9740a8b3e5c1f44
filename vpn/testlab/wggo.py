"""Drive Debian's ``wireguard-go`` (configured with ``wg``) as a reference peer inside test namespaces.

Theory of operation:

1. ``WireguardGo(ns, ...)`` picks an interface name.  The UAPI socket ``/var/run/wireguard/<if>.sock`` lives
   in the file system, which every namespace shares, so two instances in two namespaces need two names:
   by default a fresh ``wgt<6 hex>`` is drawn and retried if it turns out to be taken.
2. It starts ``wireguard-go -f <if>`` inside the namespace (``-f`` keeps it in the foreground, so the
   ``Popen`` is the daemon itself) with ``LOG_LEVEL=debug`` and its output in a private log file, and waits,
   bounded, for the socket.  wireguard-go creates the TUN first and the socket second, so once the socket is
   there the link exists too.
3. It writes ``[Interface]``/``[Peer]`` sections to a 0600 file, applies them with ``wg setconf``, then adds
   addresses, sets the MTU, brings the link up and adds one route per allowed IP with ``ip``, all inside the
   namespace.
4. ``close()``, also called when any step above fails, sends SIGTERM (wireguard-go then removes its own
   socket), SIGKILL after a bounded wait, deletes the link if it survived, and unlinks the socket only when
   nothing listens on it any more: a live socket may belong to another instance that won a name race.

Everything is bounded in time; nothing sends traffic outside the namespaces the caller made.  The module
also holds a ``wg show dump`` parser and ``reference_topology()``: two wireguard-go peers in two namespaces
over a veth.  Keys are :mod:`vpn.testlab.keys`', config files :mod:`vpn.testlab.configs`' (the production
writer), pings and iperf3 :mod:`vpn.testlab.traffic`'s.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from vpn.config import check_ifname
from vpn.testlab import netns
from vpn.testlab.configs import WgPeer, cidr, wg_conf_text
from vpn.testlab.files import write_private
from vpn.testlab.keys import Keys, genpsk, pubkey
from vpn.testlab.netns import Netns, veth, wait_for
from vpn.util import socket_is_live

# -- implementation constants ------------------------------------------------------------------------------
WG_RUN_DIR = Path("/var/run/wireguard")  # where wireguard-go puts <if>.sock (global, not per namespace)
START_TIMEOUT = 5.0  # seconds for the UAPI socket to appear
STOP_TIMEOUT = 3.0  # seconds between SIGTERM and SIGKILL
CMD_TIMEOUT = 10.0  # seconds for any single wg / ip / ss command
POLL_INTERVAL = 0.02  # seconds between polls
NAME_ATTEMPTS = 3  # fresh random names tried when an automatic name is taken


class WireguardGoError(RuntimeError):
    """wireguard-go, wg or ip did not do what the harness asked."""


# -- small helpers -----------------------------------------------------------------------------------------
def _check(proc: subprocess.CompletedProcess[str], what: str) -> str:
    if proc.returncode != 0:
        raise WireguardGoError(f"{what} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def sock_path(ifname: str) -> Path:
    """The UAPI socket path wireguard-go uses for ``ifname``."""
    return WG_RUN_DIR / f"{ifname}.sock"


def unique_ifname(prefix: str = "wgt") -> str:
    """A fresh interface name whose UAPI socket does not exist yet (see :func:`netns.unique_ifname`)."""
    return netns.unique_ifname(prefix, lambda name: sock_path(name).exists())


# -- `wg show <if> dump` ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, repr=False)
class WgPeerStatus:
    """One peer line of ``wg show <if> dump`` (8 tab-separated columns).

    :param latest_handshake: UNIX seconds of the last completed handshake, 0 when there was none.
    :param rx_bytes: bytes received from this peer (wire bytes of data messages, as wireguard-go counts).
    :param tx_bytes: bytes sent to this peer.
    """

    public_key: str
    preshared_key: str | None = field(repr=False)
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    latest_handshake: int
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int | None

    def __repr__(self) -> str:  # never the preshared key
        return (f"WgPeerStatus(public_key={self.public_key!r}, endpoint={self.endpoint!r}, "
                f"allowed_ips={self.allowed_ips!r}, latest_handshake={self.latest_handshake}, "
                f"rx_bytes={self.rx_bytes}, tx_bytes={self.tx_bytes})")


@dataclass(frozen=True, slots=True, repr=False)
class WgStatus:
    """The interface line (4 columns) plus the peers of ``wg show <if> dump``."""

    private_key: str | None = field(repr=False)
    public_key: str | None
    listen_port: int
    fwmark: int | None
    peers: tuple[WgPeerStatus, ...]

    def __repr__(self) -> str:  # never the private key
        return (f"WgStatus(public_key={self.public_key!r}, listen_port={self.listen_port!r}, "
                f"fwmark={self.fwmark!r}, peers={self.peers!r})")

    def peer(self, public_key: str) -> WgPeerStatus:
        """Return the peer with ``public_key``; raise KeyError when there is none."""
        for p in self.peers:
            if p.public_key == public_key:
                return p
        raise KeyError(public_key)


def _none(value: str) -> str | None:
    return None if value == "(none)" else value


def _off(value: str) -> int | None:
    return None if value == "off" else int(value, 0)


def parse_wg_dump(text: str) -> WgStatus:
    """Parse the output of ``wg show <if> dump`` (not ``all``, which prefixes the interface name).

    :raises ValueError: when a line does not have the expected columns.
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise ValueError("empty wg dump")
    head = lines[0].split("\t")
    if len(head) != 4:
        raise ValueError(f"wg dump interface line has {len(head)} columns, expected 4: {lines[0]!r}")
    peers = []
    for ln in lines[1:]:
        c = ln.split("\t")
        if len(c) != 8:
            raise ValueError(f"wg dump peer line has {len(c)} columns, expected 8: {ln!r}")
        allowed = () if c[3] == "(none)" else tuple(a for a in c[3].split(",") if a)
        peers.append(WgPeerStatus(public_key=c[0], preshared_key=_none(c[1]), endpoint=_none(c[2]),
                                  allowed_ips=allowed, latest_handshake=int(c[4]), rx_bytes=int(c[5]),
                                  tx_bytes=int(c[6]), persistent_keepalive=_off(c[7]) or None))
    return WgStatus(private_key=_none(head[0]), public_key=_none(head[1]), listen_port=int(head[2]),
                    fwmark=_off(head[3]), peers=tuple(peers))


# -- the daemon ---------------------------------------------------------------------------------------------
class WireguardGo:
    """A ``wireguard-go`` process with its TUN in ``ns``, configured with ``wg`` and ``ip``.

    Usable as a context manager; ``close()`` is idempotent and also runs when construction fails half-way.

    :param ns: the namespace that gets the TUN and the UDP socket.
    :param ifname: interface name, or None (default) for a fresh unique ``wgt<6 hex>``.  A fixed name such
        as ``wg0`` works only while no other wireguard-go on the machine uses it (the socket is global).
    :param private_key: base64 private key.
    :param listen_port: UDP port, or None to let wireguard-go pick one (read it back from :meth:`show`).
    :param address: interface addresses with prefix length, e.g. ``["198.19.0.2/24", "fd00:19::2/64"]``.
    :param mtu: link MTU.
    :param peers: initial peers.
    :param fwmark: optional fwmark for the UDP socket.
    :param routes: add ``ip route replace <allowed-ip> dev <if>`` for every allowed IP (a /0 replaces the
        namespace's default route, which is fine while the underlay is on-link).
    :param start_timeout: seconds to wait for the UAPI socket.
    :param binary: the wireguard-go executable (e.g. the benchmark's unpacked trixie build).
    :param log_level: wireguard-go's ``LOG_LEVEL`` (``debug``, ``verbose``, ``error``, ``silent``).
    :param log_path: where its output goes (kept after :meth:`close`), or None for a private file removed then.
    :param name_prefix: the prefix of automatic names (at most 9 characters).
    """

    def __init__(self, ns: Netns, ifname: str | None = None, *, private_key: str, listen_port: int | None = None,
                 address: Sequence[str] = (), mtu: int = 1420, peers: Sequence[WgPeer] = (),
                 fwmark: int | None = None, routes: bool = True, start_timeout: float = START_TIMEOUT,
                 binary: str = "wireguard-go", log_level: str = "debug", log_path: Path | None = None,
                 name_prefix: str = "wgt") -> None:
        if ifname is not None:
            check_ifname(ifname)
        self.ns = ns
        self.private_key = private_key
        self.public_key = pubkey(private_key)
        self.address = tuple(str(ipaddress.ip_interface(a)) for a in address)
        self.mtu = mtu
        self.routes = routes
        self._auto_name = ifname is None
        self._prefix = name_prefix
        self.ifname = ifname if ifname is not None else unique_ifname(name_prefix)
        self.binary, self.log_level = binary, log_level
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False
        self._log_text: str | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="pyvpn-wggo-"))
        self._log_path = log_path if log_path is not None else self._dir / "wireguard-go.log"
        try:
            self._start(start_timeout)
            self._configure(listen_port, fwmark, peers)
        except BaseException:
            self.close()
            raise

    # -- start-up ---------------------------------------------------------------------------------------
    def _start(self, timeout: float) -> None:
        for attempt in range(NAME_ATTEMPTS if self._auto_name else 1):
            if attempt:
                self.ifname = unique_ifname(self._prefix)
            sock = sock_path(self.ifname)
            if socket_is_live(sock):
                if self._auto_name:
                    continue
                raise WireguardGoError(f"{sock} is in use by another wireguard-go: pick another ifname")
            with open(self._log_path, "ab") as log:
                log.write(f"### lab: {self.binary} -f {self.ifname} in {self.ns.name}\n".encode())
                log.flush()
                env = dict(os.environ, LOG_LEVEL=self.log_level, WG_PROCESS_FOREGROUND="1")
                self._proc = self.ns.popen([self.binary, "-f", self.ifname], stdout=log,
                                           stderr=subprocess.STDOUT, env=env)
            proc = self._proc

            def started_or_dead(p: subprocess.Popen[bytes] = proc, s: Path = sock) -> bool:
                return p.poll() is not None or s.exists()

            wait_for(started_or_dead, timeout, POLL_INTERVAL)
            if proc.poll() is None and sock.exists():
                if self._link_exists():
                    return
                raise WireguardGoError(f"{sock} appeared but {self.ifname} is not in {self.ns.name}")
            if proc.poll() is None:
                raise WireguardGoError(f"wireguard-go made no {sock} within {timeout}s\n{self._log_tail()}")
            proc.wait()
            taken = "in use" in self.log() or "busy" in self.log()
            if not (self._auto_name and taken):
                raise WireguardGoError(f"wireguard-go exited {proc.returncode} at start\n{self._log_tail()}")
        raise WireguardGoError(f"no free interface name after {NAME_ATTEMPTS} attempts\n{self._log_tail()}")

    def _link_exists(self) -> bool:
        return self.ns.run(["ip", "link", "show", "dev", self.ifname], check=False,
                           timeout=CMD_TIMEOUT).returncode == 0

    def _ip(self, *args: str) -> None:
        _check(self.ns.run(["ip", *args], check=False, timeout=CMD_TIMEOUT), "ip " + " ".join(args))

    def _add_routes(self, allowed_ips: Sequence[str]) -> None:
        if not self.routes:
            return
        connected = {ipaddress.ip_interface(a).network for a in self.address}
        for allowed in allowed_ips:
            net = cidr(allowed)
            if net not in connected:
                self._ip("route", "replace", str(net), "dev", self.ifname)

    def _configure(self, listen_port: int | None, fwmark: int | None, peers: Sequence[WgPeer]) -> None:
        conf = self._dir / "wg.conf"
        write_private(conf, wg_conf_text(private_key=self.private_key, listen_port=listen_port,
                                          fwmark=fwmark, peers=peers))
        try:
            self.wg("setconf", self.ifname, str(conf))
        finally:
            conf.unlink()
        for a in self.address:
            extra = ["nodad"] if ipaddress.ip_interface(a).version == 6 else []
            self._ip("addr", "add", a, "dev", self.ifname, *extra)
        self._ip("link", "set", "dev", self.ifname, "mtu", str(self.mtu))
        self._ip("link", "set", "dev", self.ifname, "up")
        for p in peers:
            self._add_routes(p.allowed_ips)

    # -- use --------------------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """Process id of wireguard-go, or None before start."""
        return self._proc.pid if self._proc is not None else None

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        """The wireguard-go process (for CPU accounting), or None before start."""
        return self._proc

    @property
    def log_path(self) -> Path:
        return self._log_path

    @property
    def sock(self) -> Path:
        """The UAPI socket of this instance."""
        return sock_path(self.ifname)

    def running(self) -> bool:
        """True while the wireguard-go process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def wg(self, *args: str, stdin: str | None = None) -> str:
        """Run ``wg <args>`` inside the namespace and return its stdout."""
        proc = self.ns.run(["wg", *args], check=False, timeout=CMD_TIMEOUT, input=stdin)
        return _check(proc, "wg " + " ".join(args))

    def show(self) -> WgStatus:
        """Return the parsed ``wg show <if> dump``."""
        return parse_wg_dump(self.wg("show", self.ifname, "dump"))

    @property
    def listen_port(self) -> int:
        """The UDP port wireguard-go listens on (asked from the daemon)."""
        return self.show().listen_port

    def set_peer(self, public_key: str, *, endpoint: str | None = None, allowed_ips: Sequence[str] | None = None,
                 persistent_keepalive: int | None = None, preshared_key: str | None = None,
                 remove: bool = False) -> None:
        """Add or change a peer with ``wg set`` (None leaves a field alone), or remove it.

        :param allowed_ips: replaces the peer's list; routes are added for the new entries.
        :param persistent_keepalive: seconds, 0 for off.
        :param preshared_key: base64 key; ``""`` clears it.
        """
        args = ["set", self.ifname, "peer", public_key]
        if remove:
            self.wg(*args, "remove")
            return
        psk_file = self._dir / "psk"
        if endpoint is not None:
            args += ["endpoint", endpoint]
        if allowed_ips is not None:
            args += ["allowed-ips", ",".join(str(cidr(a)) for a in allowed_ips)]
        if persistent_keepalive is not None:
            args += ["persistent-keepalive", str(persistent_keepalive) if persistent_keepalive else "off"]
        if preshared_key is not None:
            write_private(psk_file, preshared_key + "\n" if preshared_key else "")
            args += ["preshared-key", str(psk_file)]
        try:
            self.wg(*args)
        finally:
            psk_file.unlink(missing_ok=True)
        if allowed_ips is not None:
            self._add_routes(allowed_ips)

    def add_peer(self, peer: WgPeer) -> None:
        """Add (or update) ``peer`` with every field it sets."""
        self.set_peer(peer.public_key, endpoint=peer.endpoint, allowed_ips=peer.allowed_ips,
                      persistent_keepalive=peer.persistent_keepalive, preshared_key=peer.preshared_key)

    def wait_handshake(self, public_key: str | None = None, timeout: float = 5.0) -> WgPeerStatus:
        """Poll :meth:`show` until the peer (default: the only one) has a handshake; return its status.

        :raises WireguardGoError: after ``timeout`` seconds without one.
        """
        found: list[WgPeerStatus] = []

        def done() -> bool:
            st = self.show()
            peers = [st.peer(public_key)] if public_key is not None else list(st.peers)
            if len(peers) != 1:
                raise WireguardGoError(f"wait_handshake needs a public key when there are {len(peers)} peers")
            found[:] = peers
            return peers[0].latest_handshake > 0

        if not wait_for(done, timeout):
            raise WireguardGoError(f"no handshake on {self.ifname} within {timeout}s\n{self._log_tail()}")
        return found[0]

    def log(self) -> str:
        """The debug log so far (kept after :meth:`close`)."""
        if self._log_text is not None:
            return self._log_text
        try:
            return self._log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    # -- teardown ---------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop wireguard-go and remove its link, socket and files; safe to call twice or after a failure."""
        if self._closed:
            return
        self._closed = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)  # wireguard-go then closes the device and its socket
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(STOP_TIMEOUT)
        if proc is not None:
            # The TUN is not persistent, so it normally went away with the process.
            if os.path.exists(f"/run/netns/{self.ns.name}") and self._link_exists():
                self.ns.run(["ip", "link", "del", "dev", self.ifname], check=False, timeout=CMD_TIMEOUT)
            sock = self.sock
            if sock.exists() and not socket_is_live(sock):
                sock.unlink(missing_ok=True)
        self._log_text = self.log()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self.close()
        if exc_type is not None and not issubclass(exc_type, KeyboardInterrupt):
            sys.stderr.write(f"--- wireguard-go {self.ifname} log tail ---\n{self._log_tail()}\n")

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self.running() else "dead")
        return f"<WireguardGo {self.ifname} in {self.ns.name} pid={self.pid} {state}>"


# -- the reference topology ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class WgNode:
    """One side of :func:`reference_topology`."""

    ns: Netns
    wg: WireguardGo
    underlay: str  # veth address, no prefix
    tunnel4: str  # tunnel IPv4, no prefix
    tunnel6: str  # tunnel IPv6, no prefix
    port: int


@dataclass(frozen=True, slots=True, repr=False)
class WgPair:
    """Two wireguard-go peers; ``a`` knows ``b``'s endpoint, ``b`` learns ``a``'s when ``a`` initiates."""

    a: WgNode
    b: WgNode
    preshared_key: str = field(repr=False)

    def __repr__(self) -> str:  # never the preshared key
        return f"WgPair(a={self.a!r}, b={self.b!r})"


@contextlib.contextmanager
def reference_topology(*, keepalive: int | None = None, b_knows_a: bool = False) -> Iterator[WgPair]:
    """Two namespaces joined by a veth (198.18.0.1/24 - 198.18.0.2/24), each running wireguard-go.

    Tunnel addresses are 198.19.0.1/24 + fd00:19::1/64 (a) and 198.19.0.2/24 + fd00:19::2/64 (b), ports
    51820 and 51821, one shared preshared key.  Everything is removed on exit, also after an exception.

    :param keepalive: persistent keepalive both ways, or None.
    :param b_knows_a: give ``b`` an endpoint for ``a`` too (default: ``b`` learns it by roaming).
    """
    psk = genpsk()
    (ka, pa), (kb, pb) = Keys.new(), Keys.new()
    with contextlib.ExitStack() as stack:
        ns_a = stack.enter_context(Netns("wga"))
        ns_b = stack.enter_context(Netns("wgb"))
        veth(ns_a, "ul0", ns_b, "ul0")
        ns_a.run("ip addr add 198.18.0.1/24 dev ul0")
        ns_b.run("ip addr add 198.18.0.2/24 dev ul0")
        wg_a = stack.enter_context(WireguardGo(
            ns_a, private_key=ka, listen_port=51820, address=["198.19.0.1/24", "fd00:19::1/64"],
            peers=[WgPeer(pb, endpoint="198.18.0.2:51821", allowed_ips=["198.19.0.2/32", "fd00:19::2/128"],
                          persistent_keepalive=keepalive, preshared_key=psk)]))
        wg_b = stack.enter_context(WireguardGo(
            ns_b, private_key=kb, listen_port=51821, address=["198.19.0.2/24", "fd00:19::2/64"],
            peers=[WgPeer(pa, endpoint="198.18.0.1:51820" if b_knows_a else None,
                          allowed_ips=["198.19.0.1/32", "fd00:19::1/128"],
                          persistent_keepalive=keepalive, preshared_key=psk)]))
        yield WgPair(a=WgNode(ns_a, wg_a, "198.18.0.1", "198.19.0.1", "fd00:19::1", 51820),
                     b=WgNode(ns_b, wg_b, "198.18.0.2", "198.19.0.2", "fd00:19::2", 51821),
                     preshared_key=psk)
