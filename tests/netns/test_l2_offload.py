"""L2 segments with the taps' offloads on: sha256-checked TCP across the segment, and GRO writes to the taps.

Topology (every address inside namespaces this test creates)::

    host ha ── br100 ── tap100  [site A: pyvpn server 198.19.0.1]  ul 198.18.0.0/24
    host hb ── br100 ── tap100  [site B: pyvpn client 198.19.0.2]

The taps are opened with ``IFF_VNET_HDR`` (as by default).  Each test runs once with the taps' read offloads
off (the default: the kernel segments before we read) and once on (``PYVPN_TAP_TSO_READS=1``: TSO
super-frames read and cut by ``tunnel.offload.segment(l2=True)``); it moves data both ways, over IPv4 and
IPv6, checked by sha256, and checks ``pyvpn show`` (the offloads in use, no offload or tap-write drops) and
that what each daemon wrote into its tap came as GRO super-frames (the tap's rx statistics: bytes per write
well above one frame).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import pytest

from vpn.testlab.configs import PeerSpec, endpoint, segment
from vpn.testlab.keys import Keys
from vpn.testlab.l2sites import TAP_MTU, add_daemon, add_host, bridge, segment_of
from vpn.testlab.netns import Netns, namespaces, veth
from vpn.testlab.pyvpn import Fleet, Pyvpn
from vpn.testlab.traffic import ping_ok, transfer

pytestmark = pytest.mark.root

PORT = 51820
NBYTES = 6 << 20


@dataclass
class Sites:
    daemons: tuple[Pyvpn, Pyvpn]
    ha: Netns
    hb: Netns
    fleet: Fleet


@contextmanager
def two_sites() -> Iterator[Sites]:
    with ExitStack() as stack:
        sa, sb, ha, hb = stack.enter_context(namespaces("l2oa", "l2ob", "oha", "ohb"))
        fleet = stack.enter_context(Fleet())
        veth(sa, "ul0", sb, "ul0")
        sa.run("ip addr add 198.18.0.1/24 dev ul0")
        sb.run("ip addr add 198.18.0.2/24 dev ul0")
        ks, kc = Keys.new(), Keys.new()
        for site in (sa, sb):
            bridge(site, "br100")
        seg = [segment(100, "tap100", "Bridge = br100")]
        server = add_daemon(fleet, sa, "server", keys=ks, addresses=["198.19.0.1/24"], listen_port=PORT,
                            segments=seg, peers=[PeerSpec(kc.public, ["198.19.0.2/32"], name="site-b")])
        client = add_daemon(fleet, sb, "client", keys=kc, addresses=["198.19.0.2/24"], segments=seg,
                            peers=[PeerSpec(ks.public, ["198.19.0.0/24"], endpoint=endpoint("198.18.0.1", PORT),
                                            persistent_keepalive=25, name="site-a")])
        client.wait_handshake(ks.public)
        add_host(sa, "br100", ha, ["100.64.100.11/24", "fd00:100::11/64"])
        add_host(sb, "br100", hb, ["100.64.100.21/24", "fd00:100::21/64"])
        try:
            yield Sites((server, client), ha, hb, fleet)
        except BaseException:
            print(fleet.logs())
            raise


def tap_bytes_per_write(d: Pyvpn) -> float:
    """What the daemon wrote into its tap, per write (a tap counts each write as one received packet)."""
    out = [int(d.ns.run(["cat", f"/sys/class/net/tap100/statistics/{c}"]).stdout) for c in ("rx_bytes", "rx_packets")]
    return out[0] / max(1, out[1])


@pytest.mark.parametrize("tso_reads", [False, True], ids=["kernel-segments", "tso-reads"])
def test_tcp_across_the_segment_with_tap_offloads(tso_reads: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYVPN_TAP_TSO_READS", "1" if tso_reads else "0")
    with two_sites() as s:
        assert ping_ok(s.ha, "100.64.100.21") and ping_ok(s.hb, "fd00:100::11")
        for src, dst, addr, port in ((s.ha, s.hb, "100.64.100.21", 5001), (s.hb, s.ha, "100.64.100.11", 5002),
                                     (s.ha, s.hb, "fd00:100::21", 5003), (s.hb, s.ha, "fd00:100::11", 5004)):
            r = transfer(src, dst, addr, NBYTES, port=port)
            assert r.ok and r.received_bytes == NBYTES, (addr, r, s.fleet.logs())
        for d in s.daemons:
            snap = d.show_json()
            seg = segment_of(snap, 100)
            assert {"tun:vnet_hdr", "tun:gro"} <= set(seg["offloads"]), seg
            assert ("tun:tso" in seg["offloads"]) == tso_reads, seg
            drops = {k: v for k, v in snap["drops"].items() if k.startswith(("l2_tap", "tun_bad"))}
            assert not drops, snap["drops"]
            assert "qlen 2000" in d.ns.run(["ip", "link", "show", "tap100"]).stdout
            # GRO: the data direction of each transfer reached the tap as super-frames
            assert tap_bytes_per_write(d) > 2 * (TAP_MTU + 14), tap_bytes_per_write(d)
            assert "Traceback" not in d.log()
