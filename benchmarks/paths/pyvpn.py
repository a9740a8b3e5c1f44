"""pyvpn at both ends: ``pyvpn server CONFIG`` in one namespace and ``pyvpn client CONFIG`` in the other.

L3 (:class:`PyvpnL3Path`):

1. Keys come from ``wg genkey`` / ``wg pubkey``; the configs are standard wg-quick files
   (``[Interface] PrivateKey/ListenPort/Address``, ``[Peer] PublicKey/AllowedIPs/Endpoint/
   PersistentKeepalive``).  pyvpn names the interface after the file's stem, and the UAPI socket is
   global, so the files get random names (``nbp<6 hex>.conf``).
2. Each daemon runs inside its namespace (``ip netns exec``), so its tun and its UDP socket are both
   there; pyvpn adds the addresses and routes itself.
3. The path is ready when a ping crosses the tunnel.

L2 (:class:`PyvpnL2Path`): the same two daemons and L3 tunnel, plus one L2 segment, so that the
measured traffic is Ethernet frames: tap → VXLAN → WireGuard → UDP.

1. Each config gets a ``#pyvpn [Segment]`` section (``VNI = 100``, ``Tap = nbl<6 hex>t``) and the
   peer's ``#pyvpn Vtep`` (its tunnel address: the client's server peer has ``AllowedIPs =
   198.19.<slot>.0/24``, whose default VTEP would be ``.1``, the client itself).  The files are
   ``nbl<6 hex>.conf``.
2. pyvpn creates each tap inside its namespace, sets it up and gives it its recommended MTU: tunnel MTU
   − 50 (outer IPv4 + UDP + VXLAN + inner Ethernet, Linux's ``VXLAN_HEADROOM``), 1370 over the default
   1420; the config leaves ``MTU`` unset so that this default is what is measured.  The benchmark reads
   the tap's MTU back and reports it.
3. The taps get ``198.19.<slot + 100>.1/24`` (client) and ``.2`` (server), and ``fd00:<slot + 100>::1/2``
   (hex), and iperf3/ping use the server's tap address, so nothing reaches the tun device: every packet
   is an Ethernet frame on the tap, VXLAN-encapsulated to the peer's VTEP inside the WireGuard session.
4. The path is ready when a ping crosses the taps (ARP crosses the segment first).

The daemons run through the lab's runner (:class:`vpn.testlab.pyvpn.Pyvpn`, which also stops them and removes
their sockets when the lab closes).  The command is ``<python> -m vpn.cli`` by default (the Python that runs
the benchmark, which imports this checkout: ``benchmarks`` is a package of the same editable install), or
whatever ``--pyvpn-cmd`` says (e.g. ``pyvpn`` from a venv).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from vpn.config import SegmentConfig
from vpn.testlab import configs
from vpn.testlab.files import write_private
from vpn.testlab.keys import Keys
from vpn.testlab.netns import LabError, Netns, sh
from vpn.testlab.pyvpn import Pyvpn, unique_ifname

from .base import BenchPath, Endpoints, wait_links
from .lab import Lab

REPO_ROOT = Path(__file__).resolve().parents[2]
PYVPN_PORT = 51820
PYVPN_MTU = 1420  # pyvpn's default (like wg-quick's)
START_TIMEOUT = 20.0  # Python start-up + handshake on a loaded 2-core machine
L2_VNI = 100  # as in `pyvpn demo`
L2_NET_OFFSET = 100  # the taps' subnet is 198.19.<slot + 100>.0/24
VXLAN_HEADROOM_IPV4 = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14 (tunnel.encap.vxlan.mtu_for_tap)
L2_TAP_MTU = PYVPN_MTU - VXLAN_HEADROOM_IPV4  # 1370: pyvpn's default tap MTU with IPv4 VTEPs


def default_command() -> list[str]:
    """``<this python> -m vpn.cli``: runs the checkout the benchmark belongs to."""
    return [sys.executable, "-m", "vpn.cli"]


def server_config(*, private_key: str, address: Sequence[str], client_public: str, client_ips: Sequence[str],
                  listen_port: int = PYVPN_PORT, client_vtep: str | None = None,
                  segments: Sequence[SegmentConfig] = ()) -> str:
    """wg-quick text for the server end (the production model and writer: :mod:`vpn.testlab.configs`).

    :param client_vtep: ``#pyvpn Vtep`` of the client peer (L2 segments), or None.
    :param segments: ``#pyvpn [Segment]`` sections (:func:`vpn.testlab.configs.segment`).
    """
    return configs.config_text(configs.interface(private_key, listen_port=listen_port, addresses=address),
                               [configs.peer(client_public, allowed_ips=client_ips, vtep=client_vtep)], segments)


def client_config(*, private_key: str, address: Sequence[str], server_public: str, server_nets: Sequence[str],
                  endpoint: str, keepalive: int = 25, server_vtep: str | None = None,
                  segments: Sequence[SegmentConfig] = ()) -> str:
    """wg-quick text for the client end.

    :param server_vtep: ``#pyvpn Vtep`` of the server peer (L2 segments), or None.
    :param segments: ``#pyvpn [Segment]`` sections (:func:`vpn.testlab.configs.segment`).
    """
    return configs.config_text(configs.interface(private_key, addresses=address),
                               [configs.peer(server_public, allowed_ips=server_nets, endpoint=endpoint,
                                             persistent_keepalive=keepalive, vtep=server_vtep)], segments)


class _PyvpnPath(BenchPath):
    """What both pyvpn paths share: the command, its environment, starting a daemon, the version."""

    def __init__(self, command: Sequence[str] | None = None) -> None:
        super().__init__()
        self.command = list(command) if command else default_command()

    def unavailable(self) -> str | None:
        r = sh([*self.command, "--help"], check=False, timeout=30.0, cwd=str(REPO_ROOT))
        if r.returncode != 0:
            why = (r.stderr.strip() or r.stdout.strip()).splitlines()[-1:] or [f"exit {r.returncode}"]
            return f"{shlex.join(self.command)} --help failed: {why[0]}"
        if " server " not in r.stdout or " client " not in r.stdout:
            return f"{shlex.join(self.command)} has no server/client commands"
        return None

    def daemon_env(self) -> dict[str, str | None]:
        """Changes to the daemons' environment: ``PYVPN_LOG_LEVEL`` (default ``warning``)."""
        return {"PYVPN_LOG_LEVEL": os.environ.get("PYVPN_LOG_LEVEL", "warning")}

    def _keys_and_names(self, prefix: str) -> tuple[tuple[str, str], tuple[str, str], str, str]:
        """Two key pairs and two free interface names."""
        (spriv, spub), (cpriv, cpub) = Keys.new(), Keys.new()
        return (spriv, spub), (cpriv, cpub), unique_ifname(prefix), unique_ifname(prefix)

    def _start(self, lab: Lab, slot: int, ns: Netns, role: str, conf: Path, links: Sequence[str]) -> None:
        """Run ``<command> role conf`` in ``ns`` (the lab's runner, :class:`vpn.testlab.pyvpn.Pyvpn`) and wait
        until every one of ``links`` exists there (environment: :meth:`daemon_env`).

        :raises LabError: the daemon exited, or a link did not appear within :data:`START_TIMEOUT`.
        """
        log = lab.dir / f"pyvpn-{slot}-{role}.log"
        daemon = Pyvpn(ns, role, config=conf, command=self.command, log_level=None, logfile=log,
                       env=self.daemon_env())
        lab.on_close(daemon.close)
        daemon.start(wait=False)
        assert daemon.proc is not None
        self.procs.append(daemon.proc)
        self.logs.append(log)
        wait_links(self, ns, links, timeout=START_TIMEOUT, what=f"pyvpn {role}")

    def version(self) -> str:
        rev = sh(["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"], check=False, timeout=5.0)
        from importlib.metadata import PackageNotFoundError, version

        try:
            dist = f"pyvpn-userspace {version('pyvpn-userspace')}"
        except PackageNotFoundError:
            dist = "pyvpn (source tree)"
        return f"{dist}, git {rev.stdout.strip() or '?'}"


class PyvpnL3Path(_PyvpnPath):
    key = "pyvpn"
    title = "pyvpn L3"

    def setup(self, lab: Lab, slot: int, *, veth_gso: bool) -> Endpoints:
        pair, offloads = lab.pair(slot, veth_gso=veth_gso)
        (spriv, spub), (cpriv, cpub), sname, cname = self._keys_and_names("nbp")
        v4, v6 = f"198.19.{slot}", f"fd00:{slot:x}:"
        sconf, cconf = lab.dir / f"{sname}.conf", lab.dir / f"{cname}.conf"
        write_private(sconf, server_config(private_key=spriv, address=[f"{v4}.2/24", f"{v6}:2/64"],
                                           client_public=cpub, client_ips=[f"{v4}.1/32", f"{v6}:1/128"]))
        write_private(cconf, client_config(private_key=cpriv, address=[f"{v4}.1/24", f"{v6}:1/64"],
                                           server_public=spub, server_nets=[f"{v4}.0/24", f"{v6}:/64"],
                                           endpoint=f"{pair.server_ip}:{PYVPN_PORT}"))
        self._start(lab, slot, pair.server, "server", sconf, [sname])
        self._start(lab, slot, pair.client, "client", cconf, [cname])
        server_addr = f"{v4}.2"
        self.wait_ready(pair.client, server_addr, timeout=START_TIMEOUT, what="pyvpn")
        return Endpoints(pair.client, pair.server, server_addr, PYVPN_MTU, offloads,
                         f"{shlex.join(self.command)} server/client, udp {PYVPN_PORT}, wg-quick configs")


def link_mtu(ns: Netns, ifname: str) -> int | None:
    """The MTU of ``ifname`` in ``ns`` (``ip -j link``), or None when it cannot be read."""
    r = ns.run(["ip", "-j", "link", "show", "dev", ifname], check=False, timeout=5.0)
    try:
        mtu = json.loads(r.stdout)[0]["mtu"]
    except (ValueError, LookupError, TypeError):
        return None
    return mtu if isinstance(mtu, int) else None


class PyvpnL2Path(_PyvpnPath):
    """pyvpn's L2 mode: traffic between two taps of one segment (VXLAN inside the WireGuard tunnel)."""

    key = "pyvpn-l2"
    title = "pyvpn L2"

    def unavailable(self) -> str | None:
        if (why := super().unavailable()) is not None:
            return why
        if not os.path.exists("/dev/net/tun"):
            return "/dev/net/tun is missing: no tap devices"
        if self.command == default_command():
            # the source tree the default command runs must have the L2 runtime; another --pyvpn-cmd
            # that lacks it fails at set-up with its own config error
            r = sh([sys.executable, "-c", "import vpn.l2"], check=False, timeout=30.0, cwd=str(REPO_ROOT))
            if r.returncode != 0:
                why_l2 = (r.stderr.strip() or r.stdout.strip()).splitlines()[-1:] or [f"exit {r.returncode}"]
                return f"this pyvpn has no L2 mode (import vpn.l2: {why_l2[0]})"
        return None

    def setup(self, lab: Lab, slot: int, *, veth_gso: bool) -> Endpoints:
        if not 0 < slot + L2_NET_OFFSET < 255:
            raise LabError(f"slot {slot} leaves no 198.19.x.0/24 for the taps")
        pair, offloads = lab.pair(slot, veth_gso=veth_gso)
        (spriv, spub), (cpriv, cpub), sname, cname = self._keys_and_names("nbl")
        stap, ctap = f"{sname}t", f"{cname}t"
        v4, v6 = f"198.19.{slot}", f"fd00:{slot:x}:"
        l2 = slot + L2_NET_OFFSET
        t4, t6 = f"198.19.{l2}", f"fd00:{l2:x}:"
        sconf, cconf = lab.dir / f"{sname}.conf", lab.dir / f"{cname}.conf"
        write_private(sconf, server_config(private_key=spriv, address=[f"{v4}.2/24", f"{v6}:2/64"],
                                           client_public=cpub, client_ips=[f"{v4}.1/32", f"{v6}:1/128"],
                                           client_vtep=f"{v4}.1",
                                           segments=[configs.segment(L2_VNI, stap)]))
        write_private(cconf, client_config(private_key=cpriv, address=[f"{v4}.1/24", f"{v6}:1/64"],
                                           server_public=spub, server_nets=[f"{v4}.0/24", f"{v6}:/64"],
                                           endpoint=f"{pair.server_ip}:{PYVPN_PORT}", server_vtep=f"{v4}.2",
                                           segments=[configs.segment(L2_VNI, ctap)]))
        self._start(lab, slot, pair.server, "server", sconf, [sname, stap])
        self._start(lab, slot, pair.client, "client", cconf, [cname, ctap])
        mtus = [link_mtu(pair.server, stap), link_mtu(pair.client, ctap)]
        for ns, tap, host in ((pair.server, stap, 2), (pair.client, ctap, 1)):
            ns.run(["ip", "addr", "add", f"{t4}.{host}/24", "dev", tap])
            ns.run(["ip", "-6", "addr", "add", f"{t6}:{host}/64", "dev", tap, "nodad"])
            ns.run(["ip", "link", "set", tap, "up"])  # pyvpn sets it up; harmless if already up
        server_addr = f"{t4}.2"
        self.wait_ready(pair.client, server_addr, timeout=START_TIMEOUT, what="pyvpn L2 taps")
        mtu = min((m for m in mtus if m is not None), default=L2_TAP_MTU)
        if mtus == [L2_TAP_MTU, L2_TAP_MTU]:
            mtu_note = f"tap MTU {mtu} (pyvpn's default: tunnel {PYVPN_MTU} - {VXLAN_HEADROOM_IPV4} VXLAN/IPv4)"
        else:
            shown = "/".join("?" if m is None else str(m) for m in mtus)
            mtu_note = (f"tap MTU {shown} (server/client; expected {L2_TAP_MTU} = "
                        f"tunnel {PYVPN_MTU} - {VXLAN_HEADROOM_IPV4})")
        return Endpoints(pair.client, pair.server, server_addr, mtu, offloads,
                         f"{shlex.join(self.command)} server/client, udp {PYVPN_PORT}, VXLAN VNI {L2_VNI} "
                         f"port 4789 inside the tunnel (VTEPs {v4}.1/.2), taps {t4}.1/.2, {mtu_note}")
