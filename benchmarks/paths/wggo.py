"""wireguard-go at both ends, configured with ``wg`` and ``ip``: two paths, one per Debian release.

:class:`WireguardGoPath` (``wireguard-go``) runs the installed package, bookworm's 0.0.20220316.
:class:`WireguardGoTrixiePath` (``wireguard-go-trixie``) runs trixie's 0.0.20231211 (TUN TSO/GRO, UDP
GSO/GRO), unpacked by :mod:`.trixie` into ``benchmarks/.cache/trixie`` and never installed.  Both are set up
the same way:

1. Each end runs ``wireguard-go -f <if>`` in its namespace through the lab's runner
   (:class:`vpn.testlab.wggo.WireguardGo`, ``LOG_LEVEL=error``).  The UAPI socket
   ``/var/run/wireguard/<if>.sock`` is global, so interface names are random (``nbw<6 hex>``).
2. Once the socket exists, ``wg setconf`` gives the private key, listen port and the peer (endpoint on the
   veth, allowed IPs = the other end's tunnel addresses), and ``ip`` adds addresses and MTU 1420.
3. The client keeps the tunnel alive with a 25 s persistent keepalive; the path is ready when a ping
   crosses it.
"""

from __future__ import annotations

import re
import shutil
from typing import ClassVar

from vpn.testlab.configs import WgPeer
from vpn.testlab.keys import Keys
from vpn.testlab.netns import LabError, Netns
from vpn.testlab.wggo import WG_RUN_DIR, WireguardGo, WireguardGoError
from vpn.util import socket_is_live

from . import trixie
from .base import BenchPath, Endpoints, first_line
from .lab import Lab

WG_PORT = 51820
WG_MTU = 1420
START_TIMEOUT = 10.0


def sweep_stale_sockets() -> list[str]:
    """Unlink UAPI sockets of netbench interfaces (``nbw``/``nbp`` + 6 hex) that nothing listens on."""
    removed = []
    for sock in WG_RUN_DIR.glob("nb[wp]*.sock"):
        if re.fullmatch(r"nb[wp][0-9a-f]{6}\.sock", sock.name) and not socket_is_live(sock):
            sock.unlink(missing_ok=True)
            removed.append(str(sock))
    return removed


def tun_tso(ns: Netns, ifname: str) -> str:
    """``on``/``off`` from ``ethtool -k``'s ``tcp-segmentation-offload`` line (whether the daemon enabled TUN
    offloads: trixie's wireguard-go does, bookworm's does not), ``?`` when ethtool cannot say."""
    r = ns.run(["ethtool", "-k", ifname], check=False, timeout=5.0)
    for line in r.stdout.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "tcp-segmentation-offload":
            return value.split()[0] if value.split() else "?"
    return "?"


class WireguardGoPath(BenchPath):
    key = "wireguard-go"
    title = "wireguard-go (bookworm)"
    requires: ClassVar[tuple[str, ...]] = ("wireguard-go", "wg")

    def binary(self) -> str | None:
        """The wireguard-go executable this path runs, or None when there is none."""
        return shutil.which("wireguard-go")

    def setup(self, lab: Lab, slot: int, *, veth_gso: bool) -> Endpoints:
        binary = self.binary()
        if binary is None:
            raise LabError(f"{self.title}: no binary")
        pair, offloads = lab.pair(slot, veth_gso=veth_gso)
        keys = [Keys.new(), Keys.new()]
        ends = [(pair.client, pair.server_ip, 1, 2), (pair.server, pair.client_ip, 2, 1)]
        tso: list[str] = []
        for i, (ns, peer_ip, me, other) in enumerate(ends):
            log = lab.dir / f"{self.key}-{slot}-{me}.log"
            peer = WgPeer(keys[1 - i][1], endpoint=f"{peer_ip}:{WG_PORT}",
                          allowed_ips=[f"198.19.{slot}.{other}/32", f"fd00:{slot:x}::{other}/128"],
                          persistent_keepalive=25 if me == 1 else None)
            try:
                wg = WireguardGo(ns, private_key=keys[i][0], listen_port=WG_PORT, mtu=WG_MTU, peers=[peer],
                                 address=[f"198.19.{slot}.{me}/24", f"fd00:{slot:x}::{me}/64"], routes=False,
                                 binary=binary, log_level="error", log_path=log, name_prefix="nbw",
                                 start_timeout=START_TIMEOUT)
            except WireguardGoError as e:
                raise LabError(f"{self.title}: {e}") from None
            lab.on_close(wg.close)
            assert wg.proc is not None
            self.procs.append(wg.proc)
            self.logs.append(log)
            tso.append(tun_tso(ns, wg.ifname))
        server_addr = f"198.19.{slot}.2"
        self.wait_ready(pair.client, server_addr, timeout=15.0, what=self.title)
        return Endpoints(pair.client, pair.server, server_addr, WG_MTU, offloads,
                         f"{binary} -f, udp {WG_PORT}, mtu {WG_MTU}, tun TSO {'/'.join(tso)} (client/server)")

    def version(self) -> str:
        binary = self.binary()
        said = first_line([binary, "--version"]) if binary else ""
        pkg = first_line(["dpkg-query", "-W", "-f", "${Version}", "wireguard-go"])
        return "; ".join(x for x in (said, f"Debian package {pkg}" if pkg else "", _wg_version()) if x)


class WireguardGoTrixiePath(WireguardGoPath):
    """Debian trixie's wireguard-go 0.0.20231211, from ``benchmarks/.cache/trixie`` (see :mod:`.trixie`)."""

    key = "wireguard-go-trixie"
    title = "wireguard-go (trixie)"
    requires = ("wg",)  # the binary is checked above

    def binary(self) -> str | None:
        found = trixie.find_binary()
        return str(found) if found is not None else None

    def unavailable(self) -> str | None:
        found = trixie.find_binary()
        if found is None:
            return f"not fetched: no wireguard-go under {trixie.ROOT_DIR} (run benchmarks/setup.sh)"
        if trixie.binary_version(found) is None:
            return f"{found} --version does not run here"
        return super().unavailable()

    def version(self) -> str:
        found = trixie.find_binary()
        said = trixie.binary_version(found) if found is not None else None
        pkg = trixie.package_version()
        return "; ".join(x for x in (f"Debian trixie package {pkg or '?'}", f"binary says {said or '?'}",
                                     _wg_version()) if x)


def _wg_version() -> str:
    """``wireguard-tools v1.0.20210914`` (the ``wg`` that configures both wireguard-go paths)."""
    return first_line(["wg", "--version"]).split(" - ")[0]
