"""fastd (Debian's package, v22) at both ends: tun mode, ``salsa2012+umac``, one static peer each.

1. Keys come from ``fastd --generate-key`` (``Secret:`` and ``Public:`` lines, hex).
2. Each end gets a config (:func:`fastd_config`): ``mode tun``, ``method "salsa2012+umac"`` (fastd's
   recommended fast method), ``bind`` on its veth address, ``mtu 1420`` like the WireGuard paths, and the
   other end as its only peer with a fixed ``remote``.  fastd runs in the foreground (its default) and logs
   warnings to stderr.
3. fastd makes the tun device (``fd0``; the name is per namespace) and leaves addresses to the admin, so
   the benchmark adds them once the device exists; the path is ready when a ping crosses it.

Outer datagrams: 1420 + fastd's 24-byte header + UDP 8 + IPv4 20 = 1472 < the veth's 1500, no fragments.
"""

from __future__ import annotations

from vpn.testlab.files import write_private
from vpn.testlab.netns import sh

from .base import BenchPath, Endpoints, address_link, first_line, wait_links
from .lab import Lab

FASTD_PORT = 10000
FASTD_MTU = 1420
FASTD_METHOD = "salsa2012+umac"
FASTD_IFNAME = "fd0"
START_TIMEOUT = 20.0


def parse_generated_key(text: str) -> tuple[str, str]:
    """``(secret, public)`` hex keys from ``fastd --generate-key`` output.

    :raises ValueError: either line is missing or not 64 hex digits.
    """
    found: dict[str, str] = {}
    for line in text.splitlines():
        label, _, value = line.partition(":")
        if label.strip() in ("Secret", "Public"):
            found[label.strip()] = value.strip()
    for label in ("Secret", "Public"):
        v = found.get(label, "")
        if len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
            raise ValueError(f"fastd --generate-key printed no {label} key of 64 hex digits")
    return found["Secret"], found["Public"]


def fastd_keypair() -> tuple[str, str]:
    """A fresh ``(secret, public)`` pair from ``fastd --generate-key``."""
    r = sh(["fastd", "--generate-key"], timeout=30.0)
    return parse_generated_key(r.stdout)


def fastd_config(*, ifname: str, bind: str, secret: str, peer_key: str, peer_remote: str,
                 mtu: int = FASTD_MTU, method: str = FASTD_METHOD, port: int = FASTD_PORT) -> str:
    """The text of one end's fastd config (tun mode, one peer with a fixed remote).

    :param bind: this end's IPv4 underlay address (the port is ``port``).
    :param peer_remote: the other end's IPv4 underlay address.
    """
    for name, value in (("ifname", ifname), ("method", method), ("secret", secret), ("peer_key", peer_key)):
        if not value or '"' in value or "\n" in value:
            raise ValueError(f"fastd {name} must be a non-empty string without quotes or newlines")
    return "\n".join([
        "log level warn;", "mode tun;", f'interface "{ifname}";', f'method "{method}";',
        f"bind {bind}:{port};", f'secret "{secret}";', f"mtu {mtu};",
        'peer "other" {', f'  key "{peer_key}";', f"  remote {peer_remote}:{port};", "}", "",
    ])


class FastdPath(BenchPath):
    key = "fastd"
    title = "fastd"
    requires = ("fastd",)


    def setup(self, lab: Lab, slot: int, *, veth_gso: bool) -> Endpoints:
        pair, offloads = lab.pair(slot, veth_gso=veth_gso)
        keys = [fastd_keypair(), fastd_keypair()]
        ends = [(pair.client, pair.client_ip, pair.server_ip, 1), (pair.server, pair.server_ip, pair.client_ip, 2)]
        for i, (ns, local, remote, me) in enumerate(ends):
            conf = lab.dir / f"fastd-{slot}-{me}.conf"
            write_private(conf, fastd_config(ifname=FASTD_IFNAME, bind=local, secret=keys[i][0],
                                             peer_key=keys[1 - i][1], peer_remote=remote))
            log = lab.dir / f"fastd-{slot}-{me}.log"
            self.procs.append(lab.popen(ns, ["fastd", "--config", str(conf)], log=log))
            self.logs.append(log)
            wait_links(self, ns, [FASTD_IFNAME], timeout=START_TIMEOUT, what="fastd")
            address_link(ns, FASTD_IFNAME, slot=slot, host=me, mtu=FASTD_MTU)
        server_addr = f"198.19.{slot}.2"
        self.wait_ready(pair.client, server_addr, timeout=START_TIMEOUT, what="fastd")
        return Endpoints(pair.client, pair.server, server_addr, FASTD_MTU, offloads,
                         f"fastd tun mode, method {FASTD_METHOD}, udp {FASTD_PORT}, mtu {FASTD_MTU}")

    def version(self) -> str:
        return first_line(["fastd", "--version"])
